"""The CLI as a user runs it: ``psrl train`` on the embedded default, ``psrl generate`` with its LoRA, ``psrl env``."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from psrl.rl.tracking import read_metrics

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny_flux.yaml")  # the tiny random FLUX run

pytestmark = pytest.mark.e2e


def _psrl(*args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "psrl", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


def test_train_default_then_generate_with_its_lora(tmp_path):
    out = _psrl("train", "--config", TINY, "--set", f"run.output_dir={tmp_path}", "--set", "train.max_steps=4",
                "--set", "eval.every=2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "tiny_flux"
    assert f"run directory: {run_dir}" in out.stdout
    assert "reward curve (axis " in out.stdout and "approx_kl" in out.stdout
    assert "images per step" in out.stderr  # derived sizes logged at start-up
    metrics = read_metrics(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert (run_dir / "checkpoints" / "step-4" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert (run_dir / "samples" / "step-2.png").is_file() and (run_dir / "samples" / "step-4.png").is_file()
    assert (run_dir / "config.yaml").is_file() and (run_dir / "env.json").is_file()

    (tmp_path / "r.jsonl").write_text('{"id": "sky", "prompt": "a blue sky"}\n{"id": "sea/1", "prompt": "sea"}\n')
    gen = _psrl("generate", "--records", "r.jsonl", "--out", "imgs", "--lora", str(run_dir / "checkpoints" / "step-4"),
                "--steps", "3", cwd=tmp_path)
    assert gen.returncode == 0, gen.stderr[-3000:]
    from PIL import Image

    assert Image.open(tmp_path / "imgs" / "sky.png").size == (16, 16)
    assert (tmp_path / "imgs" / "sea_1.png").is_file()  # ids are made safe as file names


def test_env_and_bad_model_path(tmp_path, capsys):
    from psrl.cli.main import main

    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for name in ("python", "torch", "diffusers", "transformers", "peft", "accelerate", "cuda_available", "devices"):
        assert name in out
    assert main(["train", "--config", TINY, "--set", "model.path=/nonexistent/flux", "--set",
                 f"run.output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "/nonexistent/flux" in err
