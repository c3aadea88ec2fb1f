"""FSDP2 sharding of the frozen base (``accelerate launch --config_file configs/accelerate/fsdp.yaml -m psrl train``)
on two CPU processes over gloo: the denoiser's blocks are sharded, the LoRA stays replicated, and the updates are
bit for bit those of the unsharded two-process run."""
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from launch import ACCELERATE, ACCELERATE_2, accelerate_psrl, psrl_env
from safetensors.torch import load_file

FSDP_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "fsdp.yaml"
ARGS = ["--config", str(Path(__file__).resolve().parents[1] / "configs" / "tiny_flux.yaml"),
        "--set", "train.max_steps=2", "--set", "train.groups_per_step=2", "--set", "train.group_size=2",
        "--set", "train.sample_batch_size=2", "--set", "train.train_batch_size=2", "--set", "sampling.num_steps=3",
        "--set", "eval.every=0", "--set", "run.dump_rank_data=true"]
FSDP_LAUNCH = [*ACCELERATE, "--config_file", str(FSDP_CONFIG), "--num_processes", "2"]


def _launch(tmp_path, launcher: list[str], name: str, *extra: str):
    cmd = accelerate_psrl("train", *ARGS, "--set", f"run.output_dir={tmp_path}", "--set", f"run.name={name}", *extra,
                          launcher=launcher)
    return subprocess.run(cmd, capture_output=True, text=True, env=psrl_env(), timeout=400, cwd=tmp_path)


@pytest.mark.unit
def test_the_config_is_accelerates_fsdp2_plugin():
    cfg = yaml.safe_load(FSDP_CONFIG.read_text())
    assert cfg["distributed_type"] == "FSDP" and cfg["fsdp_config"]["fsdp_version"] == 2


@pytest.mark.component
def test_the_units_are_the_denoisers_blocks():
    from psrl.models.tiny import tiny_flux_components
    from psrl.rl.fsdp import fsdp_units

    transformer = tiny_flux_components()["transformer"]
    assert fsdp_units(transformer) == [*transformer.transformer_blocks, *transformer.single_transformer_blocks]


@pytest.mark.e2e
def test_fsdp_on_two_cpu_processes_equals_the_unsharded_run(tmp_path):
    sharded = _launch(tmp_path, FSDP_LAUNCH, "fsdp")
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert "FSDP2 sharded the frozen denoiser into 3 units over 2 processes" in sharded.stderr
    plain = _launch(tmp_path, ACCELERATE_2, "plain")
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert "FSDP2" not in plain.stderr
    for rank in (0, 1):
        a = load_file(tmp_path / "fsdp" / "rank_data" / f"rank-{rank}-step-1.safetensors")
        b = load_file(tmp_path / "plain" / "rank_data" / f"rank-{rank}-step-1.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the LoRA, whole on each rank
    start = load_file(tmp_path / "fsdp" / "rank_data" / "rank-0-step-0.safetensors")
    assert any(not torch.equal(a[k], start[k]) for k in a)  # and the updates moved it
    assert (tmp_path / "fsdp" / "checkpoints" / "step-2" / "lora" / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.e2e
def test_fsdp_refuses_main_process_evaluation_before_the_run_directory(tmp_path):
    out = _launch(tmp_path, FSDP_LAUNCH, "evaluating", "--set", "eval.every=1")
    assert out.returncode != 0
    assert "eval.every: 1; evaluation generates on the main process only" in out.stderr
    assert not (tmp_path / "evaluating").exists()
