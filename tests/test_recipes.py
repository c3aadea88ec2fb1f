"""The paper recipes in configs/ load with the trainer's config classes and name registered rewards and policies;
each has a tiny twin in configs/tiny/ that runs 2 steps through the CLI (GRPO: psrl train, SFT: psrl sft). Qwen-
Image-Edit-Plus and SD3 also run both stages from the CLI through overrides of the twins."""
import json
from pathlib import Path

import pytest

from psrl.rl.tracking import read_metrics

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GRPO_RECIPES = ["psr_kontext", "paco_flux", "paco_kontext", "customized_grpo", "flowgrpo_fast"]
SFT_RECIPES = ["psr_kontext_sft"]
# the tiny twin may swap a reward whose tiny model cannot score (documented in the twin)
TWIN_STAND_INS = {("psr_kontext", "semantic_alignment"): "vlm_consistency"}
QWEN_ARGS = "model.args={condition_area: 1024, vae_area: 1024, max_references: 4}"


@pytest.mark.parametrize("name", GRPO_RECIPES)
def test_recipe_and_twin_load_and_agree(name):
    from psrl.models import POLICIES
    import psrl.rewards.builtin  # noqa: F401  (registers the reward names)
    from psrl.rewards import REWARDS
    from psrl.rl.run_config import load_run_config

    full = load_run_config(CONFIGS / f"{name}.yaml")
    twin = load_run_config(CONFIGS / "tiny" / f"{name}.yaml")
    assert full.model.name in POLICIES.names() and twin.model.name == full.model.name
    assert twin.model.path == "tiny" and full.model.path != "tiny"
    full_rewards = [TWIN_STAND_INS.get((name, r.name), r.name) for r in full.rewards]
    assert [r.name for r in twin.rewards] == full_rewards
    assert all(r.name in REWARDS.names() for r in full.rewards)
    assert all(r.args.get("path") == "tiny" for r in twin.rewards)
    assert [r.weight for r in twin.rewards] == [r.weight for r in full.rewards]
    for key in ("train_steps", "sde_kind", "same_noise_per_group"):
        assert getattr(twin.sampling, key) == getattr(full.sampling, key), key
    assert twin.advantage.mode == full.advantage.mode
    assert twin.model.args.get("position_ids") == full.model.args.get("position_ids")
    text = (CONFIGS / f"{name}.yaml").read_text()
    assert "research" in text and "our choice" in text     # traced to the notes, free values marked


def test_sft_recipe_and_twin_load():
    from psrl.rl.sft_config import load_sft_config

    full = load_sft_config(CONFIGS / "psr_kontext_sft.yaml")
    twin = load_sft_config(CONFIGS / "tiny" / "psr_kontext_sft.yaml")
    assert (full.model.lora.rank, full.sft.lr, full.sft.height) == (512, 1e-4, 512)   # psr.md §6.4
    assert twin.model.name == full.model.name and twin.model.path == "tiny"
    assert twin.sft.sigma_sampling == full.sft.sigma_sampling


def _train(config, tmp_path, *extra):
    from psrl.cli.main import main

    assert main(["train", "--config", str(config), "--set", f"run.output_dir={tmp_path}", *extra]) == 0
    run = next(p for p in tmp_path.iterdir() if p.is_dir())
    return run, read_metrics(run / "metrics.jsonl")


@pytest.mark.parametrize("name", GRPO_RECIPES)
def test_tiny_twin_trains_two_steps(name, tmp_path):
    run, metrics = _train(CONFIGS / "tiny" / f"{name}.yaml", tmp_path)
    assert [m["step"] for m in metrics] == [1, 2]
    assert (run / "checkpoints" / "step-2" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert all(m["train_passes"] > 0 for m in metrics), "no sample carried a training signal"
    assert all(m["reward/total/mean"] is not None for m in metrics)


def _sft(config, tmp_path, *extra):
    from psrl.cli.main import main

    assert main(["sft", "--config", str(config), "--set", f"run.output_dir={tmp_path}", *extra]) == 0
    run = next(p for p in tmp_path.iterdir() if p.is_dir())
    metrics = read_metrics(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1, 2] and all(m.get("loss", 1.0) > 0 for m in metrics)
    lora = run / "checkpoints" / "step-2" / "lora"
    assert (lora / "pytorch_lora_weights.safetensors").is_file()
    return lora


@pytest.mark.parametrize("model", ["flux_kontext", "qwen_image_edit_plus", "sd3"])
def test_sft_then_grpo_from_the_cli(model, tmp_path):
    """Every policy: SFT from the CLI, then a GRPO run (1 step) initialised from the SFT LoRA (model.lora.path)."""
    targets = {"flux_kontext": "attn_ff_single", "qwen_image_edit_plus": "attn_ff_single", "sd3": "attn"}[model]
    lora_cfg = [f"model.name={model}", f"model.lora.targets={targets}", "model.lora.rank=4", "model.lora.alpha=4.0"]
    sft_extra, grpo_extra = [], []
    if model == "qwen_image_edit_plus":
        lora_cfg += [QWEN_ARGS, "model.max_sequence_length=512"]
        sft_extra = ["sft.height=32", "sft.width=32"]
        grpo_extra = ["sampling.height=32", "sampling.width=32", "sampling.guidance_scale=4.0"]
    elif model == "sd3":
        lora_cfg += ["model.args={}"]
        grpo_extra = ["rewards=[{name: clip_t, weight: 1.0, args: {path: tiny}}]"]
    lora = _sft(CONFIGS / "tiny" / "psr_kontext_sft.yaml", tmp_path / "sft",
                *[a for s in lora_cfg + sft_extra for a in ("--set", s)])
    grpo_extra += [f"model.lora.path={lora}", "train.max_steps=1", "eval.every=0"]
    run, metrics = _train(CONFIGS / "tiny" / "paco_kontext.yaml", tmp_path / "grpo",
                          *[a for s in lora_cfg + grpo_extra for a in ("--set", s)])
    from safetensors.torch import load_file

    sft_weights = load_file(lora / "pytorch_lora_weights.safetensors")
    grpo_weights = load_file(run / "checkpoints" / "step-1" / "lora" / "pytorch_lora_weights.safetensors")
    assert set(sft_weights) == set(grpo_weights)
    # the GRPO run started from the SFT weights (SFT moved the zero-initialised B; GRPO took one small step)
    assert any(float(v.abs().sum()) > 0 for k, v in sft_weights.items() if "lora_B" in k)
    assert max(float((sft_weights[k] - grpo_weights[k]).abs().max()) for k in sft_weights) < 0.1
    assert metrics[-1]["reward/total/mean"] is not None


def test_psr_two_stages_sft_rank_8_fused_under_a_rank_4_grpo_lora(tmp_path):
    """PSR's hand-over (rank-512 SFT -> rank-64 RL), shrunk: the SFT LoRA is fused (model.lora.fuse), a fresh
    smaller adapter trains on top, and its saved file records the fused LoRA."""
    from safetensors import safe_open

    from psrl.models.lora import FUSED_METADATA_KEY

    sft = _sft(CONFIGS / "tiny" / "psr_kontext_sft.yaml", tmp_path / "sft",
               "--set", "model.lora.rank=8", "--set", "model.lora.alpha=8.0")
    run, metrics = _train(CONFIGS / "tiny" / "psr_kontext.yaml", tmp_path / "grpo",
                          "--set", f"model.lora.fuse=[{sft}]", "--set", "train.max_steps=1", "--set", "eval.every=0")
    assert metrics[-1]["reward/total/mean"] is not None and metrics[-1]["train_passes"] > 0
    with safe_open(str(run / "checkpoints" / "step-1" / "lora" / "pytorch_lora_weights.safetensors"), "pt") as f:
        fused = json.loads(f.metadata()[FUSED_METADATA_KEY])
        ranks = {f.get_tensor(k).shape[0] for k in f.keys() if ".lora_A." in k}
    assert [e["path"] for e in fused] == [str(sft / "pytorch_lora_weights.safetensors")] and ranks == {4}
