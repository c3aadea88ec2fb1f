"""Full-parameter training (``model.lora: null``): SFT and GRPO train every denoiser weight, checkpoints hold the
whole transformer (and its EMA) as diffusers ``save_pretrained`` folders, resume is exact, and the settings that
cannot work (a KL reference, low-precision weights) are refused before a run directory exists."""
import pytest
import torch
from safetensors.torch import load_file

from psrl.config import ConfigError
from psrl.rl.run_config import load_run_config

GRPO = ["model.lora=null", "train.groups_per_step=2", "train.group_size=2", "train.sample_batch_size=4",
        "train.train_batch_size=4", "sampling.num_steps=3", "eval.every=0", "train.lr=1e-3",
        "train.ema.enabled=true", "train.ema.every=1"]


def _sft_cfg(tmp_path, name, steps, **sft):
    from tests.test_sft import _dataset
    from psrl.config import from_dict
    from psrl.rl.sft_config import SFTRunConfig

    if not (tmp_path / "train.jsonl").exists():
        _dataset(tmp_path)
    return from_dict(SFTRunConfig, {
        "model": {"name": "flux_kontext", "path": "tiny", "max_sequence_length": 8, "lora": None,
                  "args": {"reference_long_side_single": 16, "reference_long_side_multi": 8}},
        "sft": {"max_steps": steps, "batch_size": 2, "height": 16, "width": 16, "lr": 1e-3, "seed": 0,
                "save_every": 2, "device": "cpu", "eval_sigmas": [], "ema": {"enabled": True, "decay": 0.9,
                                                                             "every": 1}, **sft},
        "data": {"records": str(tmp_path / "train.jsonl")},
        "run": {"name": name, "output_dir": str(tmp_path / "runs")},
    })


@pytest.mark.component
def test_sft_full_parameter_trains_every_weight_saves_transformer_and_resumes_exactly(tmp_path):
    from diffusers import FluxTransformer2DModel

    from psrl.rl.sft_trainer import SFTTrainer

    straight = SFTTrainer(_sft_cfg(tmp_path, "straight", 4))
    before = {k: p.detach().clone() for k, p in straight.named_params.items()}
    total = sum(p.numel() for p in straight.policy.transformer.parameters())
    assert straight.full_finetune and sum(p.numel() for p in straight.params) == total  # every weight
    straight.train()
    moved = [k for k, p in straight.named_params.items() if not torch.equal(p.detach(), before[k])]
    assert len(moved) > 0.9 * len(before)

    step = tmp_path / "runs" / "straight" / "checkpoints" / "step-4"
    assert not (step / "lora").exists()
    loaded = FluxTransformer2DModel.from_pretrained(step / "transformer")
    for name, p in loaded.named_parameters():
        assert torch.equal(p, straight.named_params[name].detach()), name
    ema = FluxTransformer2DModel.from_pretrained(step / "transformer_ema")
    with straight.ema.swapped_in():
        for name, p in ema.named_parameters():
            assert torch.equal(p, straight.named_params[name].detach()), name
    assert any(not torch.equal(p, straight.named_params[n].detach()) for n, p in ema.named_parameters())

    SFTTrainer(_sft_cfg(tmp_path, "split", 2)).train()
    resumed = SFTTrainer(_sft_cfg(tmp_path, "split", 4), resume=True)
    assert resumed.start_step == 2
    resumed.train()
    a = load_file(step / "trainable.safetensors")
    b = load_file(tmp_path / "runs" / "split" / "checkpoints" / "step-4" / "trainable.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k


@pytest.mark.component
def test_grpo_full_parameter_step_writes_the_transformer(tmp_path):
    from psrl.rl.grpo_trainer import GRPOTrainer

    cfg = load_run_config(None, [f"run.output_dir={tmp_path}", "run.name=full", "train.max_steps=1", *GRPO])
    trainer = GRPOTrainer(cfg)
    before = {k: p.detach().clone() for k, p in trainer.named_params.items()}
    assert trainer.full_finetune and "transformer_blocks.0.attn.to_q.weight" in trainer.named_params
    trainer.train()
    assert any(not torch.equal(p.detach(), before[k]) for k, p in trainer.named_params.items())
    step = tmp_path / "full" / "checkpoints" / "step-1"
    assert (step / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert (step / "transformer_ema" / "config.json").is_file()


@pytest.mark.component
@pytest.mark.parametrize("extra, match", [
    (["train.beta=0.01"], r"train\.beta: 0\.01 needs a frozen KL reference"),
    (["model.dtype=bfloat16"], r"model\.dtype: 'bfloat16' with model\.lora: null"),
])
def test_full_parameter_refuses_kl_and_low_precision_before_the_run_dir(tmp_path, extra, match):
    from psrl.rl.grpo_trainer import GRPOTrainer

    cfg = load_run_config(None, [f"run.output_dir={tmp_path}", "run.name=bad", *GRPO, *extra])
    with pytest.raises(ConfigError, match=match):
        GRPOTrainer(cfg)
    assert not (tmp_path / "bad").exists()
