"""Checkpoints: 2 steps + resume + 2 steps == 4 steps; atomic layout; keep_last; diffusers-loadable LoRA."""
import pytest
import torch
from safetensors.torch import load_file

from psrl.errors import PsrlError
from psrl.rl import checkpoint as ckpt
from psrl.rl.run_config import load_run_config
from psrl.rl.tracking import read_metrics
from psrl.rl.grpo_trainer import GRPOTrainer

pytestmark = pytest.mark.component

BASE = ["train.groups_per_step=2", "train.group_size=4", "train.sample_batch_size=4", "train.train_batch_size=2",
        "train.gradient_accumulation=2", "sampling.num_steps=3", "eval.every=0", "train.ema.enabled=true",
        "train.ema.every=1", "train.lr_warmup_steps=3"]


def _cfg(tmp_path, name, *extra):
    return load_run_config(None, [f"run.output_dir={tmp_path}", f"run.name={name}", *BASE, *extra])


def test_resume_equals_uninterrupted(tmp_path):
    GRPOTrainer(_cfg(tmp_path, "full", "train.max_steps=4")).train()
    GRPOTrainer(_cfg(tmp_path, "split", "train.max_steps=2")).train()
    resumed = GRPOTrainer(_cfg(tmp_path, "split", "train.max_steps=4"), resume=True)
    assert resumed.start_step == 2 and resumed.updates == 4
    resumed.train()
    full = load_file(tmp_path / "full" / "checkpoints" / "step-4" / "trainable.safetensors")
    split = load_file(tmp_path / "split" / "checkpoints" / "step-4" / "trainable.safetensors")
    assert full.keys() == split.keys() and full
    for k in full:
        assert torch.allclose(full[k], split[k], atol=1e-6, rtol=0), k
    # the EMA and the optimizer moved on identically too
    ema_full = torch.load(tmp_path / "full" / "checkpoints" / "step-4" / "ema.pt", weights_only=True)
    ema_split = torch.load(tmp_path / "split" / "checkpoints" / "step-4" / "ema.pt", weights_only=True)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ema_full["shadow"], ema_split["shadow"]))
    # metrics continue in the same file: steps 1, 2 then 3, 4
    assert [m["step"] for m in read_metrics(tmp_path / "split" / "metrics.jsonl")] == [1, 2, 3, 4]
    # keep_last (2 in the default config) pruned nothing here: only step-2 and step-4 exist
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "split")] == [2, 4]


def test_checkpoint_layout_atomicity_and_keep_last(tmp_path):
    trainer = GRPOTrainer(_cfg(tmp_path, "r", "train.max_steps=3", "train.save_every=1", "train.keep_last=2"))
    trainer.train()
    run = tmp_path / "r"
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2, 3]  # step-1 pruned
    d = run / "checkpoints" / "step-3"
    for name in ("lora/pytorch_lora_weights.safetensors", "lora_ema/pytorch_lora_weights.safetensors",
                 "trainable.safetensors", "optimizer.pt", "scheduler.pt", "ema.pt", "rng/rank-0.pt", "config.yaml",
                 "state.json"):
        assert (d / name).is_file(), name
    assert not list((run / "checkpoints").glob(".*.tmp"))
    # a half-written checkpoint (no state.json) or a temp dir is never picked up by --resume
    (run / "checkpoints" / "step-9").mkdir()
    (run / "checkpoints" / ".step-10.tmp").mkdir()
    assert ckpt.latest_checkpoint(run) == d


def test_resume_without_checkpoint_or_name_is_a_clear_error(tmp_path):
    with pytest.raises(PsrlError, match="no complete checkpoint"):
        GRPOTrainer(_cfg(tmp_path, "empty", "train.max_steps=1"), resume=True)
    cfg = _cfg(tmp_path, "x", "train.max_steps=1")
    cfg.run.name = None
    with pytest.raises(PsrlError, match="run-name"):
        GRPOTrainer(cfg, resume=True)


def test_saved_lora_loads_into_diffusers_pipeline_and_changes_output(tmp_path):
    from diffusers import FluxPipeline

    from psrl.models.tiny import tiny_flux_components

    trainer = GRPOTrainer(_cfg(tmp_path, "l", "train.max_steps=1", "train.lr=0.5"))
    trainer.train()
    lora_dir = tmp_path / "l" / "checkpoints" / "step-1" / "lora"
    pipe = FluxPipeline(**tiny_flux_components(seed=0))

    def run():
        return pipe("a blue sky", num_inference_steps=2, height=16, width=16, max_sequence_length=16,
                    output_type="pt", generator=torch.Generator().manual_seed(0)).images

    base = run()
    pipe.load_lora_weights(lora_dir)
    adapted = run()
    assert (adapted - base).abs().max() > 1e-4


def test_a_new_run_never_mixes_into_an_old_run_dir(tmp_path):
    GRPOTrainer(_cfg(tmp_path, "same", "train.max_steps=1")).train()
    second = GRPOTrainer(_cfg(tmp_path, "same", "train.max_steps=1"))
    assert second.run_dir == tmp_path / "same-1"
    resumed = GRPOTrainer(_cfg(tmp_path, "same", "train.max_steps=1"), resume=True)
    assert resumed.run_dir == tmp_path / "same" and resumed.start_step == 1
