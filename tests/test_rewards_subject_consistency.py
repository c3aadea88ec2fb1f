"""Subject consistency (PSR): crop/assignment logic with stubbed detections (random-weight detectors give no
meaningful boxes), one real tiny end-to-end run, bad inputs and the reference cache."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from psrl.data.records import Record, SubjectRef, resolve_records
from psrl.errors import ModelLoadError
from psrl.rewards import build_reward
from psrl.rewards.detection import Detections
from psrl.images import pil_to_tensor
from psrl.rewards.subject_consistency import SubjectConsistencyReward

pytestmark = pytest.mark.component

LEFT, RIGHT = [0, 0, 32, 64], [32, 0, 64, 64]


class StubDetector:
    """Test fixture: boxes keyed by (image width, phrase); the first box has the highest score unless ``scores``."""

    def __init__(self, table):
        self.table = table
        self.calls = 0

    def detect(self, images, phrases):
        self.calls += 1
        out = []
        for im, p in zip(images, phrases):
            entry = self.table.get((im.width, p), [])
            boxes, scores = (entry if isinstance(entry, tuple) else (entry, None))
            n = len(boxes)
            s = torch.tensor(scores) if scores is not None else torch.linspace(0.9, 0.5, n) if n else torch.zeros(0)
            out.append(Detections(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), s.float()))
        return out


@pytest.fixture
def scene(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # _rec resolves reference paths under the working directory
    rng = np.random.default_rng(0)
    left = (rng.random((64, 32, 3)) * 255).astype(np.uint8)
    right = (np.stack([np.linspace(0, 255, 32)] * 64)[:, :, None].repeat(3, 2) * [1, 0.2, 0.5]).astype(np.uint8)
    gen = Image.fromarray(np.concatenate([left, right], axis=1))
    Image.fromarray(left).save(tmp_path / "left.png")
    Image.fromarray(right).save(tmp_path / "right.png")
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    return tmp_path, pil_to_tensor(gen)[None]


def _reward(root, table, **kw):
    return SubjectConsistencyReward(detector=StubDetector(table), embedder={"kind": "dinov2", "path": "tiny"}, **kw)


def _rec(subjects, rid="r1", prompt="a cat and a dog"):
    """A record as a loader hands it over: reference paths resolved (here under the working directory)."""
    return resolve_records([Record(id=rid, prompt=prompt, subjects=tuple(SubjectRef(i, p) for i, p in subjects))],
                           ".")[0]


def test_two_subjects_identical_crops_score_one(scene):
    root, gen = scene
    table = {(64, "cat"): [LEFT], (64, "dog"): [RIGHT], (32, "cat"): [[0, 0, 32, 64]], (32, "dog"): [[0, 0, 32, 64]]}
    out = _reward(root, table)(gen, [_rec([("left.png", "cat"), ("right.png", "dog")])])
    assert out.scores.item() == pytest.approx(1.0, abs=1e-4)
    assert out.details["per_subject"][0] == pytest.approx([1.0, 1.0], abs=1e-4)
    assert out.details["missing_subjects"] == [[]]
    assert out.details["reference_whole_image"] == [[False, False]]


def test_swapped_subjects_lower_and_weakest_reported(scene):
    root, gen = scene
    table = {(64, "cat"): [RIGHT], (64, "dog"): [RIGHT]}
    out = _reward(root, table)(gen, [_rec([("left.png", "cat"), ("right.png", "dog")])])
    per = out.details["per_subject"][0]
    assert per[1] == pytest.approx(1.0, abs=1e-4) and per[0] < 0.99
    assert out.details["weakest_subject"] == ["cat"]
    assert out.details["weakest_score"][0].item() == pytest.approx(per[0])
    assert out.scores.item() == pytest.approx(sum(per) / 2)
    assert out.details["reference_whole_image"] == [[True, True]]  # stub finds nothing in the references


def test_same_category_hungarian_vs_compat(scene):
    root, gen = scene
    # both subjects are "dog"; the most confident box is the RIGHT one, which matches subject 2's reference
    table = {(64, "dog"): [RIGHT, LEFT]}
    recs = [_rec([("left.png", "dog"), ("right.png", "dog")])]
    honest = _reward(root, table)(gen, recs)
    assert honest.details["per_subject"][0] == pytest.approx([1.0, 1.0], abs=1e-4)
    compat = _reward(root, table, mode="psrbench_compat")(gen, recs)
    assert compat.scores.item() < honest.scores.item() - 1e-3  # box 0 -> subject 1, box 1 -> subject 2


def test_missing_subject_zero_nan_and_compat_fallback(scene):
    root, gen = scene
    table = {(64, "cat"): [LEFT]}
    recs = [_rec([("left.png", "cat"), ("right.png", "dog")])]
    zero = _reward(root, table)(gen, recs)
    assert zero.details["per_subject"][0] == pytest.approx([1.0, 0.0], abs=1e-4)
    assert zero.scores.item() == pytest.approx(0.5, abs=1e-4)
    assert zero.failures == [None] and zero.details["missing_subjects"] == [["dog"]]
    nan = _reward(root, table, missing="nan")(gen, recs)
    assert math.isnan(nan.scores.item()) and "not detected" in nan.failures[0] and "dog" in nan.failures[0]
    compat = _reward(root, table, mode="psrbench_compat")(gen, recs)
    assert 0.0 != compat.details["per_subject"][0][1]  # whole-image fallback, not zero
    assert compat.scores.item() != pytest.approx(0.5, abs=1e-4)


def test_extra_candidates_pick_the_most_similar(scene):
    root, gen = scene
    table = {(64, "cat"): ([RIGHT, LEFT], [0.9, 0.8])}
    recs = [_rec([("left.png", "cat")])]
    assert _reward(root, table)(gen, recs).scores.item() < 0.99          # best-score box is the wrong one
    assert _reward(root, table, extra_candidates=1)(gen, recs).scores.item() == pytest.approx(1.0, abs=1e-4)


def test_bad_inputs_are_nan_with_reason(scene):
    root, gen = scene
    reward = _reward(root, {(64, "cat"): [LEFT]})
    nan_img = gen.clone()
    nan_img[0, 0, 0, 0] = float("nan")
    images = torch.cat([gen, gen, gen, nan_img, gen])
    unresolved = Record(id="u", prompt="a cat", subjects=(SubjectRef("left.png", "cat"),))
    recs = [_rec([("missing.png", "cat")]), _rec([("corrupt.png", "cat")]), _rec([("left.png", " ")]),
            _rec([("left.png", "cat")]), unresolved]
    out = reward(images, recs)
    assert torch.isnan(out.scores).all()
    assert "not found" in out.failures[0]
    assert "unreadable" in out.failures[1]
    assert "empty phrase" in out.failures[2]
    assert "NaN" in out.failures[3]
    assert "'left.png' is not resolved against a data root" in out.failures[4]  # never read from the cwd
    assert out.failure_rate == 1.0
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        reward(torch.rand(1, 4, 64, 64), recs[:1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reward(gen * 255, recs[3:4])
    tiny_img = reward(torch.rand(1, 3, 4, 4), [_rec([("left.png", "cat")])])
    assert math.isnan(tiny_img.scores.item()) and "too small" in tiny_img.failures[0]
    rgba = Image.new("RGBA", (64, 64), (10, 20, 30, 128))
    ok = reward([rgba], [_rec([("left.png", "cat")])])  # other PIL modes are converted to RGB
    assert torch.isfinite(ok.scores).all()


def test_reference_cache_one_pass_per_group(scene):
    root, gen = scene
    reward = _reward(root, {(64, "cat"): [LEFT], (64, "dog"): [RIGHT]})
    rec = _rec([("left.png", "cat"), ("right.png", "dog")])
    first = reward(gen.repeat(8, 1, 1, 1), [rec] * 8)
    assert reward.stats["reference_passes"] == 1
    assert reward.detector.calls == 2  # one reference pass + one generated pass for the whole group
    second = reward(gen.repeat(8, 1, 1, 1), [rec] * 8)
    assert reward.stats["reference_passes"] == 1 and reward.stats["reference_cache_hits"] == 2
    assert torch.equal(first.scores, second.scores)


def test_real_tiny_models_end_to_end(scene):
    root, gen = scene
    reward = build_reward("subject_consistency", {"path": "tiny",
                                                  "detector": {"kind": "grounding_dino", "box_threshold": 0.0}})
    recs = [_rec([("left.png", "cat"), ("right.png", "dog")])] * 2
    out = reward(gen.repeat(2, 1, 1, 1), recs)
    assert torch.isfinite(out.scores).all() and out.scores.abs().max() <= 1.0 + 1e-5
    assert torch.allclose(out.scores[0], out.scores[1])
    assert len(out.details["per_subject"][0]) == 2
    owl = build_reward("subject_consistency", {"path": "tiny", "mode": "psrbench_compat",
                                               "detector": {"kind": "owlv2", "box_threshold": 0.0}})
    assert torch.isfinite(owl(gen, recs[:1]).scores).all()


def test_nonexistent_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        build_reward("subject_consistency", {"detector": {"kind": "grounding_dino", "path": str(tmp_path / "nope")},
                                             "embedder": {"kind": "dinov2", "path": "tiny"}})
    with pytest.raises(ModelLoadError, match="could not load"):
        build_reward("subject_consistency", {"detector": {"kind": "grounding_dino", "path": str(tmp_path)},
                                             "embedder": {"kind": "dinov2", "path": "tiny"}})
    with pytest.raises(ValueError, match="missing"):
        build_reward("subject_consistency", {"path": "tiny", "missing": "skip"})


def test_grounding_postprocessing_matches_transformers():
    import numpy as np

    from psrl.rewards.detection import build_detector, grounding_boxes

    det = build_detector({"kind": "grounding_dino", "path": "tiny", "box_threshold": 0.3})
    rng = np.random.default_rng(1)
    imgs = [Image.fromarray((rng.random((64, 80, 3)) * 255).astype(np.uint8)),
            Image.fromarray((rng.random((50, 50, 3)) * 255).astype(np.uint8))]
    inputs = det.processor(images=imgs, text=["cat.", "a red dog."], return_tensors="pt", padding=True)
    with torch.no_grad():
        outputs = det.model(**inputs)
    sizes = [(64, 80), (50, 50)]
    ref = det.processor.post_process_grounded_object_detection(outputs, inputs["input_ids"], threshold=0.3,
                                                               text_threshold=0.25, target_sizes=sizes)
    mine = grounding_boxes(outputs.logits, outputs.pred_boxes, sizes, 0.3)
    for r, m in zip(ref, mine):
        assert len(m) > 0
        assert torch.allclose(r["boxes"], m.boxes, atol=1e-4) and torch.allclose(r["scores"], m.scores)
    # detect() on a batch equals detect() one pair at a time (text padding does not leak)
    batched = det.detect(imgs, ["cat", "a red dog"])
    for i in range(2):
        single = det.detect(imgs[i:i + 1], [["cat", "a red dog"][i]])[0]
        assert torch.allclose(batched[i].scores, single.scores, atol=1e-5)
