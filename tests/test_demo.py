"""The first command: ``psrl train`` without a config runs GRPO on the packaged pocket generator, prints the held-out
reward at step 0 and at the end, draws the curve on a stated absolute axis and writes before_after.png."""
import math
import os
import subprocess
import sys

import pytest
import torch

from psrl.cli.train import DEMO_CONFIG, VIEW_SIDE, curve_summary, eval_line, sparkline


@pytest.mark.unit
def test_sparkline_uses_a_fixed_axis_so_a_flat_run_draws_flat():
    assert sparkline([0.5, 0.5, 0.5], 0.0, 1.0) == "▅▅▅"
    assert sparkline([0.5, 0.5001], 0.0, 1.0) == "▅▅"              # min-max rescaling would draw "▁█"
    assert sparkline([0.0, 1.0, float("nan")], 0.0, 1.0) == "▁█ "
    text = curve_summary([{"reward/total/mean": 0.50, "reward/total/std": 0.02},
                          {"reward/total/mean": 0.60, "reward/total/std": 0.01}], 0)
    assert "axis 0.4800 .. 0.6100" in text
    assert "step 1: 0.5000 +- 0.0200" in text and "step 2: 0.6000 +- 0.0100" in text


@pytest.mark.unit
def test_eval_line_counts_unscorable_samples_instead_of_averaging_them():
    line = eval_line({"scores": {"r": torch.tensor([0.2, float("nan"), 0.4])}}, "at step 0")
    assert line == "at step 0: r 0.3000 +- 0.1414 (n=2 of 3)"
    assert "no sample could be scored (n=0 of 1)" in eval_line({"scores": {"r": torch.tensor([math.nan])}}, "x")


@pytest.mark.unit
def test_the_demo_config_points_at_packaged_files():
    from psrl.rl.run_config import load_run_config
    from psrl.world.models import WEIGHTS_DIR

    cfg = load_run_config(DEMO_CONFIG)
    assert os.path.samefile(cfg.model.path, WEIGHTS_DIR) and cfg.model.name == "flux_kontext"
    assert os.path.isfile(cfg.data.records) and os.path.isfile(cfg.eval.records)
    assert cfg.sampling.height == cfg.sampling.width == 64 and [r.name for r in cfg.rewards] == ["mean_color"]


@pytest.mark.unit
def test_the_packaged_demo_records_are_what_the_generator_writes(tmp_path):
    from psrl.world.pretrain_data import write_demo_records

    write_demo_records(tmp_path)
    shipped = DEMO_CONFIG.parent / "pocket"
    for name in ("train.jsonl", "eval.jsonl"):
        assert (tmp_path / name).read_text() == (shipped / name).read_text(), name
    assert sorted(p.name for p in (tmp_path / "references").iterdir()) == \
        sorted(p.name for p in (shipped / "references").iterdir())


@pytest.mark.e2e
def test_psrl_train_without_config_runs_the_pocket_demo(tmp_path):
    from PIL import Image

    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    small = ["train.max_steps=1", "train.groups_per_step=2", "train.group_size=2", "train.sample_batch_size=4",
             "train.train_batch_size=4", "sampling.num_steps=3", "eval.num_steps=3", f"run.output_dir={tmp_path}"]
    out = subprocess.run([sys.executable, "-m", "psrl", "train", *[x for kv in small for x in ("--set", kv)]],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "held-out eval reward at step 0: mean_color " in out.stdout
    assert "held-out eval reward at step 1: mean_color " in out.stdout and "(n=4)" in out.stdout
    assert "reward curve (axis " in out.stdout
    run = tmp_path / "pocket_world"
    grid = Image.open(run / "samples" / "before_after.png")
    assert grid.size == (4 * (VIEW_SIDE + 4) - 4, 16 + 4 * (VIEW_SIDE + 4) - 4)  # 2 refs + before + after, 4 rows
    assert (run / "checkpoints" / "step-1" / "lora" / "pytorch_lora_weights.safetensors").is_file()
