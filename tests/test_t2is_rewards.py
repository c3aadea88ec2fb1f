"""T2IS rewards on generated grids: ``t2is_consistency`` through the remote judge transport against a fake
OpenAI-compatible server whose P(Yes) is a known function of the two images (so the mean over the C(n, 2) cell pairs,
their order and PaCo's template v1 are checked exactly), and through the local tiny Qwen2.5-VL; ``t2is_clip_t``
against psrl's ``clip_t`` reward on each cell; ``pickscore`` on the whole grid with the full prompt; the recipe, and
its tiny twin trained from the CLI on grid prompts without subjects."""
import base64
import io
import itertools
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from psrl.data.records import Record
from psrl.rewards import build_reward

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FOX = ("FOUR-PANEL Images with a 2x2 grid layout a red fox in watercolor style.All panels keep the same fox. "
       "[TOP]-[LEFT]:The fox sleeps. [TOP]-[RIGHT]:The fox runs. [BOTTOM]-[LEFT]:The fox drinks. "
       "[BOTTOM]-[RIGHT]:The fox hides.")
# PaCo-Reward's template v1 (X-GenGroup/PaCo-RL@08caac6 PaCo-GRPO/paco_grpo/rewards/consistency_scorer.py), filled
V1_FOX = ('Given two subfigures generated based on the theme: "FOUR-PANEL Images with a 2x2 grid layout a red fox in '
          'watercolor style.All panels keep the same fox.", do the two images maintain consistency in terms of style, '
          'logic and identity? Answer "Yes" and "No" first, and then provide detailed reasons.')


def grid(levels, rows=2, cols=2, side=16):
    """A ``[3, rows*side, cols*side]`` grid whose cell k (row-major) is uniform grey ``levels[k]``."""
    cells = torch.tensor(levels, dtype=torch.float32).reshape(rows, cols)
    return cells.repeat_interleave(side, 0).repeat_interleave(side, 1).expand(3, -1, -1).clone()


def grey(level: float) -> float:
    return round(level * 255) / 255  # what the PNG sent to the judge holds


# ------------------------------------------------------------------ fake judge server
class GreyJudge:
    """An OpenAI-compatible judge: P(Yes) = 1 - |grey(image 1) - grey(image 2)| (clamped to [0.01, 0.99]);
    ``mode = "noanswer"`` lists neither Yes nor No. Keeps every request's (grey 1, grey 2, text)."""

    def __init__(self):
        self.mode, self.asked = "ok", []

    @staticmethod
    def _grey(url: str) -> float:
        img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("L")
        return float(np.asarray(img, dtype=np.float64).mean()) / 255

    def answer(self, body: dict) -> dict:
        content = body["messages"][0]["content"]
        g1, g2 = (self._grey(c["image_url"]["url"]) for c in content[:2])
        self.asked.append((round(g1, 4), round(g2, 4), content[2]["text"]))
        p = min(max(1.0 - abs(g1 - g2), 0.01), 0.99)
        tops = [("Yes", math.log(p)), ("No", math.log(1 - p))] if self.mode == "ok" else [("The", -0.1)]
        first = {"token": tops[0][0], "logprob": tops[0][1],
                 "top_logprobs": [{"token": t, "logprob": v} for t, v in tops]}
        return {"choices": [{"message": {"content": tops[0][0]}, "logprobs": {"content": [first]}}]}


@pytest.fixture
def judge():
    state = GreyJudge()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            data = json.dumps(state.answer(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield state
    server.shutdown()
    server.server_close()


def _consistency(judge, **kw):
    return build_reward("t2is_consistency", {"endpoint": judge.url, "retries": 1, "backoff": 0.01, "timeout": 5.0,
                                             "max_concurrency": 1, **kw})


@pytest.mark.component
def test_consistency_is_the_mean_p_yes_over_every_cell_pair_in_order_with_template_v1(judge):
    levels = [0.1, 0.3, 0.6, 0.8]
    out = _consistency(judge)(torch.stack([grid(levels)]), [Record(id="fox", prompt=FOX)])
    pairs = list(itertools.combinations([grey(v) for v in levels], 2))  # (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)
    assert [(a, b) for a, b, _ in judge.asked] == [(round(a, 4), round(b, 4)) for a, b in pairs]
    assert all(text == V1_FOX for _, _, text in judge.asked)
    expected = [1 - abs(a - b) for a, b in pairs]
    assert out.details["p_yes_pairs"][0] == pytest.approx(expected, abs=1e-6)
    assert out.scores.item() == pytest.approx(sum(expected) / 6, abs=1e-6) and out.failures == [None]
    assert out.details["grid"] == ["2x2"]


@pytest.mark.component
def test_identical_pairs_are_asked_once_and_answers_are_kept_across_calls(judge):
    reward = _consistency(judge)
    same = grid([0.5, 0.5, 0.5, 0.5])   # six pairs, one question
    other = grid([0.2, 0.2, 0.7, 0.7])  # (a,a) (a,b) (a,b) (a,b) (a,b) (b,b): three questions
    out = reward(torch.stack([same, other, other]), [Record(id=str(i), prompt=FOX) for i in range(3)])
    assert len(judge.asked) == 1 + 3
    assert out.scores[0].item() == pytest.approx(0.99)  # identical cells: the fake's P(Yes) is capped at 0.99
    assert out.scores[1].item() == out.scores[2].item()
    reward(torch.stack([other]), [Record(id="again", prompt=FOX)])
    assert len(judge.asked) == 4 and (reward.judge.hits, reward.judge.misses) == (18 - 4 + 6, 4)


@pytest.mark.component
def test_unscorable_grids_are_nan_with_a_reason_for_that_sample_only(judge):
    reward = _consistency(judge)
    records = [Record(id="fox", prompt=FOX), Record(id="plain", prompt="a fox in the snow"),
               Record(id="single", prompt="a 1x1 grid layout of a fox"),
               Record(id="tiny", prompt="a 5x5 grid layout of foxes")]
    out = reward(torch.stack([grid([0.1, 0.2, 0.3, 0.4])] * 4), records)
    assert not math.isnan(out.scores[0].item()) and out.failures[0] is None
    assert math.isnan(out.scores[1].item()) and "record 'plain': the prompt names no grid size" in out.failures[1]
    assert math.isnan(out.scores[2].item()) and "record 'single': a 1x1 grid has no pair of cells" in out.failures[2]
    assert math.isnan(out.scores[3].item()) and "grid gives 6x6 cells, smaller than the minimum" in out.failures[3]
    judge.mode = "noanswer"
    bad = reward(torch.stack([grid([0.9, 0.1, 0.9, 0.1])]), [Record(id="x", prompt=FOX)])
    assert math.isnan(bad.scores.item()) and bad.failures[0].startswith("6 of 6 cell pair(s) unscored: neither 'Yes'")
    judge.mode = "ok"  # a failure is not cached: the same grid is asked again and scored
    again = reward(torch.stack([grid([0.9, 0.1, 0.9, 0.1])]), [Record(id="x", prompt=FOX)])
    assert not math.isnan(again.scores.item()) and again.failures == [None]


@pytest.mark.component
def test_local_tiny_judge_scores_the_cut_cells_as_the_judge_itself_does():
    """The local transport (tiny Qwen2.5-VL): the reward's per-pair P(Yes) are the judge's own answers for the
    cells cut by hand, with the theme in template v1."""
    from psrl.data.grid_prompt import cut_grid
    from psrl.images import tensor_to_pil
    from psrl.rewards.vlm.transports import JudgeRequest

    reward = build_reward("t2is_consistency", {"path": "tiny"})
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    out = reward(image[None], [Record(id="fox", prompt=FOX)])
    cells = cut_grid(tensor_to_pil(image), 2, 2)
    direct = reward.judge.judge.p_yes([JudgeRequest([a, b], V1_FOX) for a, b in itertools.combinations(cells, 2)])
    assert out.details["p_yes_pairs"][0] == pytest.approx([p for p, _, _ in direct], abs=1e-6)
    assert 0.0 <= out.scores.item() <= 1.0 and out.scores.item() == pytest.approx(sum(p for p, _, _ in direct) / 6)


# ------------------------------------------------------------------ sub-figure CLIP-T and PickScore
@pytest.mark.component
def test_subfigure_clip_t_is_the_mean_clip_t_of_each_cell_with_its_sub_prompt():
    """Oracle: psrl's clip_t reward (same tiny CLIP, scale 1) on each cell with its sub-prompt as the prompt."""
    from psrl.data.grid_prompt import cut_grid, parse_grid_prompt
    from psrl.images import tensor_to_pil

    reward = build_reward("t2is_clip_t", {"path": "tiny"})
    clip_t = build_reward("clip_t", {"path": "tiny"})
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = reward(images, [Record(id="a", prompt=FOX), Record(id="b", prompt=FOX)])
    subs = parse_grid_prompt(FOX).cell_prompts()
    for b in range(2):
        cells = cut_grid(tensor_to_pil(images[b]), 2, 2)
        want = clip_t(cells, [Record(id=str(k), prompt=t) for k, t in enumerate(subs)]).scores
        assert out.details["cell_cosine"][b] == pytest.approx(want.tolist(), abs=1e-5)
        assert out.scores[b].item() == pytest.approx(want.mean().item(), abs=1e-5)
    assert out.failures == [None, None]


@pytest.mark.component
def test_subfigure_clip_t_without_one_sub_prompt_per_cell_is_nan_for_that_sample():
    reward = build_reward("t2is_clip_t", {"path": "tiny"})
    records = [Record(id="three", prompt="A 2x2 grid. [A]:a cat. [B]:a dog. [C]:a hat."), Record(id="fox", prompt=FOX),
               Record(id="plain", prompt="a fox")]
    out = reward(torch.rand(3, 3, 16, 16), records)
    assert math.isnan(out.scores[0].item())
    assert "record 'three': the prompt has 3 cell sub-prompt(s)" in out.failures[0]
    assert out.failures[1] is None and not math.isnan(out.scores[1].item())
    assert math.isnan(out.scores[2].item()) and "record 'plain'" in out.failures[2]


@pytest.mark.component
def test_pickscore_scores_the_whole_grid_against_the_full_grid_prompt():
    """PaCo's third T2IS reward is the existing pickscore: the grid image with the full prompt, CLIP-truncated to 77
    tokens as PaCo's processor does. Oracle: the CLIP model's own forward, ``logits_per_image`` = scale x cos."""
    from psrl.images import tensor_to_pil

    reward = build_reward("pickscore", {"path": "tiny"})
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2))
    out = reward(image[None], [Record(id="fox", prompt=FOX)])
    px = reward.processor(images=[tensor_to_pil(image)], return_tensors="pt")["pixel_values"]
    tok = reward.processor.tokenizer([FOX], padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        expected = reward.model(**tok, pixel_values=px).logits_per_image.item()
    assert out.scores.item() == pytest.approx(expected, abs=1e-4)


# ------------------------------------------------------------------ the recipe and its tiny twin
@pytest.mark.unit
def test_recipe_is_pacos_t2is_config():
    from psrl.rl.run_config import load_run_config

    full = load_run_config(CONFIGS / "paco_t2is.yaml")
    m, s, t, a = full.model, full.sampling, full.train, full.advantage
    assert (m.name, m.path, m.lora.rank, m.lora.alpha, m.lora.targets) == ("flux", "black-forest-labs/FLUX.1-dev", 64,
                                                                           128.0, "attn_ff")
    assert (s.height, s.width, full.eval.resolution, s.num_steps, full.eval.num_steps) == (512, 512, 1024, 10, 20)
    assert (s.train_steps, list(s.noise_steps), s.noise_level, s.guidance_scale) == ("list", [1], 0.7, 3.5)
    assert (t.groups_per_step, t.group_size, t.lr, t.clip_range, t.beta) == (42, 16, 3e-4, 1e-4, 0.0)
    assert (a.mode, a.std_mode) == ("weighted", "global")
    assert [(r.name, r.weight) for r in full.rewards] == [("t2is_consistency", 0.2), ("t2is_clip_t", 1.0),
                                                          ("pickscore", pytest.approx(1 / 26, rel=1e-5))]
    assert full.rewards[0].args["template"] == "v1" and full.rewards[0].args["adapter_path"].startswith("X-GenGroup/")


@pytest.mark.e2e
def test_tiny_twin_trains_on_grid_prompts_without_subjects(tmp_path):
    from psrl.cli.main import main
    from psrl.data.records import read_records
    from psrl.rl.tracking import read_metrics

    records = read_records(CONFIGS / "tiny" / "data" / "t2is" / "train.jsonl")
    assert records and all(not r.subjects for r in records)
    assert main(["train", "--config", str(CONFIGS / "tiny" / "paco_t2is.yaml"),
                 "--set", f"run.output_dir={tmp_path}"]) == 0
    metrics = read_metrics(tmp_path / "tiny_paco_t2is" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        for name in ("t2is_consistency", "t2is_clip_t", "pickscore"):
            assert m[f"reward/{name}/failure_rate"] == 0.0 and math.isfinite(m[f"reward/{name}/mean"]), (name, m)
        assert 0.0 <= m["reward/t2is_consistency/mean"] <= 1.0 and math.isfinite(m["reward/total/mean"])
    assert all(math.isfinite(metrics[-1][f"eval/{n}/mean"]) for n in ("t2is_consistency", "t2is_clip_t", "pickscore"))
