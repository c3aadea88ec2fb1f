"""Two CPU processes over gloo (``accelerate launch --multi_gpu --num_processes 2 -m psrl train``): both ranks see
the same groups, rewards and advantages, the LoRA stays identical across ranks, and the result equals a single
process that accumulates the same micro-batches."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from launch import accelerate_psrl, psrl_env
from safetensors.torch import load_file

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny_flux.yaml")  # the tiny random FLUX run

pytestmark = pytest.mark.e2e

ARGS = ["--set", "train.max_steps=2", "--set", "train.groups_per_step=3", "--set", "train.group_size=4",
        "--set", "train.sample_batch_size=3", "--set", "train.train_batch_size=3", "--set", "sampling.num_steps=3",
        "--set", "eval.every=0", "--set", "run.dump_rank_data=true",
        # Adam with a large eps is ~SGD (update ~ lr * grad): float-order differences between the one- and the
        # two-process runs then stay ~1e-7 instead of flipping Adam's sign-like first step on tiny gradients
        "--set", "train.adam_eps=1.0", "--set", "train.lr=1.0"]


# alike on purpose: tests/test_reward_model_multiprocess.py makes the same check for the reward-model trainer
def test_two_processes_agree_and_match_one_process(tmp_path):
    out = subprocess.run(accelerate_psrl("train", "--config", TINY) + ARGS
                         + ["--set", f"run.output_dir={tmp_path}", "--set", "run.name=mp",
                            "--set", "train.gradient_accumulation=2"],
                         capture_output=True, text=True, env=psrl_env(), timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "12 images per step (6 per process x 2)" in out.stderr
    assert out.stdout.count("run directory:") == 1  # only the main process prints
    rank_dir = tmp_path / "mp" / "rank_data"
    for step in (0, 1):
        views = [json.loads((rank_dir / f"rank-{r}-step-{step}.json").read_text()) for r in (0, 1)]
        for key in ("record_ids", "group_ids", "rewards", "advantages", "trained"):
            assert views[0][key] == views[1][key], key
        assert views[0]["local"] == [0, 6] and views[1]["local"] == [6, 12]
        assert views[0]["group_ids"][5] == views[1]["group_ids"][6] == 1  # group 1 spans both ranks
        assert any(abs(a[0]) > 0 for a in views[0]["advantages"])
    w0 = load_file(rank_dir / "rank-0-step-1.safetensors")
    w1 = load_file(rank_dir / "rank-1-step-1.safetensors")
    after_step0 = load_file(rank_dir / "rank-0-step-0.safetensors")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # identical across ranks after updates
    assert any(not torch.equal(w0[k], after_step0[k]) for k in w0)  # and training moved them

    # one process accumulating all 4 micro-batches of a step takes the same updates
    single = subprocess.run([sys.executable, "-m", "psrl", "train", "--config", TINY] + ARGS +
                            ["--set", f"run.output_dir={tmp_path}", "--set", "run.name=sp", "--set", "train.max_steps=1",  # noqa: E501
                             "--set", "train.gradient_accumulation=4"],
                            capture_output=True, text=True, env=psrl_env(), timeout=300, cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    s_view = json.loads((tmp_path / "sp" / "rank_data" / "rank-0-step-0.json").read_text())
    v0 = json.loads((rank_dir / "rank-0-step-0.json").read_text())
    assert s_view["record_ids"] == v0["record_ids"]
    assert torch.allclose(torch.tensor(s_view["rewards"]), torch.tensor(v0["rewards"]), atol=1e-6)
    ws = load_file(tmp_path / "sp" / "rank_data" / "rank-0-step-0.safetensors")
    for k in ws:
        assert torch.allclose(ws[k], after_step0[k], atol=1e-6), k
