"""The reward-model trainer over two CPU processes (``accelerate launch --multi_gpu --num_processes 2``): each rank
trains its slice of every step's pairs, the LoRA gradients are averaged, and the adapter equals a single process
that accumulates the same four pairs per step."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from launch import accelerate_psrl, psrl_env
from safetensors.torch import load_file

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny" / "paco_reward.yaml"
# Adam with a large eps is ~SGD: float-order differences between the runs stay ~1e-7 (see test_multiprocess.py)
ARGS = ["--set", "train.max_steps=2", "--set", "train.batch_size=1", "--set", "train.save_merged=false",
        "--set", "train.adam_eps=1.0", "--set", "train.lr=1.0", "--set", "train.eval_every=0"]


# alike on purpose: the same two-ranks-equal-one-accumulating check as tests/test_multiprocess.py, for another trainer
@pytest.mark.e2e
def test_two_processes_equal_one_process_accumulating(tmp_path):
    two = subprocess.run(accelerate_psrl("reward-model", "train", "--config", str(CONFIG)) + ARGS
                         + ["--set", f"run.output_dir={tmp_path}", "--set", "run.name=mp",
                            "--set", "train.gradient_accumulation=2"],
                         capture_output=True, text=True, env=psrl_env(), timeout=300, cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "batch 1 x accumulation 2 x 2 processes = 4 pairs per step" in two.stderr
    assert two.stdout.count("done: 2 steps") == 1          # only the main process reports
    one = subprocess.run([sys.executable, "-m", "psrl", "reward-model", "train", "--config", str(CONFIG)] + ARGS +
                         ["--set", f"run.output_dir={tmp_path}", "--set", "run.name=sp",
                          "--set", "train.gradient_accumulation=4"],
                         capture_output=True, text=True, env=psrl_env(), timeout=300, cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    a = load_file(tmp_path / "mp" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "sp" / "adapter" / "adapter_model.safetensors")
    init = {k: v for k, v in a.items() if "lora_B" in k}
    assert a.keys() == b.keys() and any(v.abs().max() > 0 for v in init.values())   # trained (B starts at 0)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
