"""One bad sample never takes down a batch (issue #10 §6a): through every registered reward, on tiny components, a
sample that cannot be scored is NaN with a reason for that sample alone and the other samples keep the scores they
get without it; the trainer carries on through such a sample."""
import math
import socket
import threading
import time

import pytest
import torch
from PIL import Image

from psrl.data.records import Record, SubjectRef, resolve_records
from psrl.rewards import REWARDS, build_reward
from psrl.rewards.embedding import build_embedder
from psrl.rewards.isolation import Failed, per_item

PROMPT = "a cat to the left of a dog"
QWEN_PLACEHOLDER = "<|image_pad|>"  # text a Qwen-VL processor counts as an image slot: it rejects the whole batch


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    d = tmp_path_factory.mktemp("refs")
    g = torch.Generator().manual_seed(0)
    for name in ("a.png", "b.png"):
        Image.fromarray((torch.rand(40, 40, 3, generator=g) * 255).byte().numpy()).save(d / name)
    Image.new("RGB", (1800, 8), (90, 90, 90)).save(d / "strip.png")  # aspect 225: the Qwen-VL processor refuses it
    return d


def _recs(root, n=4, *, strip_ref_at=None, prompt_at=None, extra=""):
    """Records as a loader hands them over: reference paths resolved under ``root``."""
    out = []
    for i in range(n):
        first = "strip.png" if i == strip_ref_at else "a.png"
        prompt = PROMPT + (f" {extra}" if i == prompt_at else "")
        out.append(Record(id=f"r{i}", prompt=prompt, tags={"subset": "Action"},
                          subjects=(SubjectRef(first, "cat"), SubjectRef("b.png", "dog"))))
    return resolve_records(out, root)


def _images(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).byte().numpy()) for _ in range(n)]


DETECTOR = {"kind": "grounding_dino", "box_threshold": 0.0}  # random weights: every box passes, crops exist
ARGS = {
    "mean_color": {},
    "null_control": {},
    "subject_consistency": {"path": "tiny", "detector": DETECTOR},
    "position": {"path": "tiny", "detector": DETECTOR},
    "vlm_consistency": {"path": "tiny"},
    "semantic_alignment": {"path": "tiny", "max_new_tokens": 4},
    "edit_consistency": {"path": "tiny"},
    "hpsv3": {"path": "tiny"},
    "pickscore": {"path": "tiny"},
    "clip_t": {"path": "tiny"},
    "aesthetic": {"path": "tiny"},
    "clip_i": {"path": "tiny"},
    "dino": {"path": "tiny"},
}
# grid rewards read a grid prompt, not a subject prompt (configs/tiny/data/t2is holds such records)
GRID_ARGS = {"t2is_consistency": {"path": "tiny"}, "t2is_clip_t": {"path": "tiny"}}
GRID_PROMPT = ("FOUR-PANEL Images with a 2x2 grid layout a red fox. [TOP]-[LEFT]:The fox sleeps. [TOP]-[RIGHT]:The "
               "fox runs. [BOTTOM]-[LEFT]:The fox drinks. [BOTTOM]-[RIGHT]:The fox hides.")
QWEN_REWARDS = ["vlm_consistency", "semantic_alignment", "edit_consistency", "hpsv3"]
READS_REFERENCES = ["subject_consistency", "vlm_consistency", "edit_consistency", "clip_i", "dino"]


def _build(name):
    return build_reward(name, dict(ARGS[name]))


def _assert_only(out, bad: int, why: str, name: str):
    """Sample ``bad`` is NaN with ``why`` in its reason; every other sample was scored (semantic_alignment: judged
    -- a random-weight VLM never writes a parsable score, so "scored" means it got its own reply back)."""
    assert math.isnan(out.scores[bad].item()) and why in out.failures[bad], (name, out.failures)
    others = [b for b in range(len(out.scores)) if b != bad]
    if name == "semantic_alignment":
        assert all(isinstance(out.details["raw_text"][b], str) for b in others), out.failures
        assert all("parsable" in out.failures[b] for b in others)
    else:
        assert torch.isfinite(out.scores[others]).all() and all(out.failures[b] is None for b in others), \
            (name, out.scores, out.failures)


class _ServerThread:
    def __init__(self, app):
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


# ------------------------------------------------------------------ the isolation rule (pure)
@pytest.mark.unit
def test_per_item_batches_first_then_isolates_only_what_fails():
    calls = []

    def square(xs):
        calls.append(list(xs))
        if 3 in xs:
            raise ValueError("three is refused")
        return [x * x for x in xs]

    assert per_item(square, [1, 2, 4], "sq") == [1, 4, 16] and calls == [[1, 2, 4]]  # one batched call
    calls.clear()
    out = per_item(square, [1, 3, 2], "sq")
    assert out[0] == 1 and out[2] == 4 and isinstance(out[1], Failed)
    assert out[1].reason == "sq failed on this sample (ValueError: three is refused)"
    assert calls == [[1, 3, 2], [1], [3], [2]]
    assert per_item(square, [], "sq") == []
    with pytest.raises(ValueError, match="returned 1 results for 2 items"):   # a caller bug is never a NaN
        per_item(lambda xs: [0], [1, 2], "bug")


@pytest.mark.unit
def test_null_control_is_a_deterministic_uniform_number_per_image():
    """``null_control`` (psrl.rewards.simple): the same image always scores the same, different images score
    uniformly over [0, 1) (Kolmogorov-Smirnov against scipy's uniform), and no property of the image moves it."""
    from scipy import stats

    reward = build_reward("null_control", {})
    images = torch.rand(400, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    recs = [Record(id=str(i), prompt=PROMPT) for i in range(400)]
    a, b = reward(images, recs).scores, reward(images.clone(), recs).scores
    assert torch.equal(a, b) and float(a.min()) >= 0.0 and float(a.max()) < 1.0
    assert stats.kstest(a.numpy(), "uniform").pvalue > 0.01
    bright = reward((images * 0.5 + 0.5), recs).scores
    assert abs(stats.pearsonr(a.numpy(), bright.numpy()).statistic) < 0.2  # brighter images score no higher


@pytest.mark.unit
def test_every_registered_reward_is_covered():
    # pocket_subjects scores pocket-world phrases only ("cat" is NaN by design): tests/test_world_reward.py covers it
    assert set(REWARDS.names()) == set(ARGS) | set(GRID_ARGS) | {"remote", "pocket_subjects"}


@pytest.mark.component
@pytest.mark.parametrize("name", sorted(GRID_ARGS))
def test_a_grid_image_the_qwen_processor_refuses_fails_alone(name):
    reward = build_reward(name, dict(GRID_ARGS[name]))
    images = _images()
    images[1] = Image.new("RGB", (1800, 8), (10, 200, 10))
    records = [Record(id=f"g{i}", prompt=GRID_PROMPT) for i in range(4)]
    out = reward(images, records)
    _assert_only(out, 1, "too elongated", name)
    alone = reward([images[b] for b in (0, 2, 3)], [records[b] for b in (0, 2, 3)])
    assert torch.allclose(out.scores[[0, 2, 3]], alone.scores, atol=1e-5)


# ------------------------------------------------------------------ 1 bad sample in a batch of 4, every reward
@pytest.mark.component
@pytest.mark.parametrize("name", sorted(ARGS))
def test_a_generated_image_the_qwen_processor_refuses_fails_alone(name, root):
    reward = _build(name)
    images = _images()
    images[1] = Image.new("RGB", (1800, 8), (10, 200, 10))
    out = reward(images, _recs(root))
    _assert_only(out, 1, "too elongated", name)
    if name != "semantic_alignment":  # the others score exactly as they do without the bad sample
        alone = reward([images[0], images[2], images[3]], [_recs(root)[b] for b in (0, 2, 3)])
        assert torch.allclose(out.scores[[0, 2, 3]], alone.scores, atol=1e-5)


@pytest.mark.component
@pytest.mark.parametrize("name", READS_REFERENCES)
def test_a_reference_the_qwen_processor_refuses_fails_alone(name, root):
    out = _build(name)(_images(), _recs(root, strip_ref_at=2))
    _assert_only(out, 2, "too elongated", name)
    assert "strip.png" in out.failures[2]


@pytest.mark.component
@pytest.mark.parametrize("name", QWEN_REWARDS)
def test_a_sample_the_model_batch_rejects_is_retried_alone(name, root):
    """Nothing in the inputs is out of range, but the prompt carries a Qwen image placeholder: the processor
    rejects the whole batch; retried one by one, only that sample fails, the others match a clean batch."""
    reward = _build(name)
    images = _images()
    out = reward(images, _recs(root, prompt_at=3, extra=QWEN_PLACEHOLDER))
    _assert_only(out, 3, "failed on this sample (ValueError", name)
    assert "image_pad" in out.failures[3]
    if name != "semantic_alignment":
        clean = reward(images[:3], _recs(root, 3))
        assert torch.allclose(out.scores[:3], clean.scores, atol=1e-5)


class _Fussy:
    """Test double of a model component: wraps a real tiny embedder/detector and raises, for the whole batch, when
    any image in it is pure green (as a processor does for an input it cannot take)."""

    def __init__(self, inner, method):
        self.inner, self.method = inner, method

    @staticmethod
    def _green(im):
        return im.getextrema() == ((0, 0), (255, 255), (0, 0))

    def _call(self, images, *rest):
        if any(self._green(im) for im in images):
            raise RuntimeError("cannot process a pure green image")
        return getattr(self.inner, self.method)(images, *rest)

    def embed(self, images):
        return self._call(images)

    def detect(self, images, phrases):
        return self._call(images, phrases)


def _component_cases(root, fussy_embedder, fussy_detector):
    real_detector = dict(DETECTOR, path="tiny")
    return {
        "subject_consistency/embedder": ("subject_consistency",
                                         {"detector": real_detector, "embedder": fussy_embedder}),
        "subject_consistency/detector": ("subject_consistency",
                                         {"detector": fussy_detector, "embedder": "dino_vit", "path": "tiny"}),
        "position/detector": ("position", {"detector": fussy_detector}),
        "dino/embedder": ("dino", {"embedder": fussy_embedder}),
    }


@pytest.mark.component
@pytest.mark.parametrize("case", ["subject_consistency/embedder", "subject_consistency/detector",
                                  "position/detector", "dino/embedder"])
def test_a_component_that_raises_for_one_image_fails_that_sample_only(case, root):
    from psrl.rewards.detection import build_detector

    fussy_embedder = _Fussy(build_embedder({"kind": "dinov2", "path": "tiny"}), "embed")
    fussy_detector = _Fussy(build_detector(dict(DETECTOR, path="tiny")), "detect")
    name, args = _component_cases(root, fussy_embedder, fussy_detector)[case]
    reward = build_reward(name, args)
    images = _images()
    images[0] = Image.new("RGB", (32, 32), (0, 255, 0))
    out = reward(images, _recs(root))
    _assert_only(out, 0, "RuntimeError: cannot process a pure green image", name)


@pytest.mark.component
def test_remote_reward_keeps_per_sample_failures(root):
    pytest.importorskip("uvicorn")
    from psrl.config import from_dict
    from psrl.serve.server import ServerConfig, create_app

    cfg = from_dict(ServerConfig, {"rewards": [{"name": "hpsv3"}], "api_key_env": None, "batch_window_ms": 10})
    with _ServerThread(create_app(cfg, rewards={"hpsv3": build_reward("hpsv3", {"path": "tiny"})})) as srv:
        client = build_reward("remote", {"url": f"http://127.0.0.1:{srv.port}", "reward": "hpsv3", "retries": 0})
        images = _images()
        images[1] = Image.new("RGB", (1800, 8))
        _assert_only(client(images, _recs(root)), 1, "too elongated", "remote")         # refused before sending
        out = client(_images(), _recs(root, prompt_at=2, extra=QWEN_PLACEHOLDER))
        _assert_only(out, 2, "failed on this sample", "remote")                     # isolated by the server's reward


# ------------------------------------------------------------------ the trainer carries on
@pytest.mark.component
def test_trainer_step_survives_a_sample_the_reward_cannot_score(tmp_path):
    """tiny FLUX + tiny HPSv3; one of the two records carries a Qwen image placeholder in its prompt, so every
    rollout batch holding its group is rejected by the HPSv3 processor. The step completes: that group is NaN
    with a reason and skipped, the other group trains."""
    from psrl.rl.run_config import load_run_config
    from psrl.rl.grpo_trainer import GRPOTrainer

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = load_run_config(None, [
            f"run.output_dir={tmp_path}", "run.name=robust", "train.max_steps=1", "train.groups_per_step=2",
            "train.group_size=2", "train.sample_batch_size=4", "train.train_batch_size=4", "sampling.num_steps=2",
            "eval.every=0", "train.save_every=0",
            f"data.records=['a blue sky', 'a blue car {QWEN_PLACEHOLDER}']",
            "rewards=[{name: hpsv3, weight: 1.0, args: {path: tiny}}]"])
        history = GRPOTrainer(cfg).train()
    finally:
        torch.set_num_threads(n)
    m = history[-1]
    assert len(history) == 1 and m["updates"] >= 1
    assert m["reward/hpsv3/failure_rate"] == 0.5 and m["adv/nan_samples"] == 2      # the bad record's group
    assert m["adv/skipped_groups"] == 1 and m["adv/num_trained_samples"] == 2      # the other group trained
    assert math.isfinite(m["reward/hpsv3/mean"])


@pytest.mark.component
def test_an_overlong_subject_phrase_fails_its_sample_with_a_plain_reason(root):
    """A 5,000-word phrase (issue #10 §7) used to fail every sample batched with it, with a tensor shape error."""
    reward = _build("subject_consistency")
    recs = _recs(root)
    long_phrase = " ".join(["cat"] * 5000)
    recs[1] = resolve_records([Record(id="long", prompt=PROMPT, subjects=(SubjectRef("a.png", long_phrase),
                                                                           SubjectRef("b.png", "dog")))], root)[0]
    out = reward(_images(), recs)
    _assert_only(out, 1, "tokens; grounding_dino reads at most", "subject_consistency")
