"""Every policy's ``from_config`` loads through ``load_policy_components``: ``model.variant`` picks the weight files
and ``model.revision`` the Hub commit, for FLUX, FLUX-Kontext, SD3 and Qwen-Image-Edit-Plus alike, and the commit a run
was loaded at lands in its ``env.json``."""
import json

import pytest
import torch

import hub_fake
from hub_fake import go_offline
from psrl.errors import ModelLoadError
from psrl.models.config import LoraConfig, ModelConfig
from psrl.models.factory import build_policy

fake_hub = hub_fake.fake_hub  # the fixture


def _pipeline(name: str, seed: int):
    from diffusers import FluxKontextPipeline, FluxPipeline, QwenImageEditPlusPipeline, StableDiffusion3Pipeline

    from psrl.models.tiny import tiny_flux_components
    from psrl.models.tiny_more import (tiny_kontext_components, tiny_qwen_image_edit_plus_components,
                                       tiny_sd3_components)

    if name == "flux":
        return FluxPipeline(**tiny_flux_components(seed=seed))
    if name == "flux_kontext":
        return FluxKontextPipeline(**tiny_kontext_components(seed))
    if name == "sd3":
        comps = tiny_sd3_components(seed)
        return StableDiffusion3Pipeline(**{k: v for k, v in comps.items()
                                           if k not in ("image_encoder", "feature_extractor")})
    return QwenImageEditPlusPipeline(**tiny_qwen_image_edit_plus_components(seed))


def _first_weight(policy) -> torch.Tensor:
    return next(policy.transformer.parameters()).detach().flatten()[:8].float().cpu()


@pytest.mark.component
@pytest.mark.parametrize("name", ["flux", "flux_kontext", "sd3", "qwen_image_edit_plus"])
def test_variant_reaches_from_pretrained_in_every_policy(tmp_path, name):
    pipe = _pipeline(name, seed=5)
    pipe.save_pretrained(tmp_path / "m", variant="fp16")  # only *.fp16.safetensors weight files
    cfg = ModelConfig(name=name, path=str(tmp_path / "m"), variant="fp16", max_sequence_length=16,
                      lora=LoraConfig(rank=2, alpha=2))
    policy = build_policy(cfg)
    expected = next(pipe.transformer.parameters()).detach().flatten()[:8]
    assert torch.equal(_first_weight(policy), expected)
    with pytest.raises(ModelLoadError, match="could not load"):
        build_policy(ModelConfig(name=name, path=str(tmp_path / "m"), max_sequence_length=16))  # variant not optional


def _pipeline_files(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.component
def test_revision_reaches_from_pretrained_and_the_run_records_its_commit(tmp_path, fake_hub, monkeypatch):
    from psrl.models.tiny import tiny_flux_components
    from psrl.rl.grpo_trainer import GRPOTrainer
    from psrl.rl.run_config import load_run_config

    for seed in (1, 0):  # the first commit (seed 1) is pinned below; main moves on to seed 0
        _pipeline("flux", seed).save_pretrained(tmp_path / f"seed{seed}")
    pinned = fake_hub.add_repo("model", "org/tiny-flux", _pipeline_files(tmp_path / "seed1"))
    fake_hub.add_repo("model", "org/tiny-flux", _pipeline_files(tmp_path / "seed0"), message="new weights")
    seed1 = next(tiny_flux_components(seed=1)["transformer"].parameters()).detach().flatten()[:8]
    cfg = load_run_config(None, [f"run.output_dir={tmp_path}", "run.name=pinned", "model.path=org/tiny-flux",
                                 f"model.revision={pinned}", "model.max_sequence_length=16", "train.max_steps=1",
                                 "train.groups_per_step=1", "train.group_size=2", "train.sample_batch_size=2",
                                 "train.train_batch_size=2", "sampling.num_steps=2", "eval.every=0",
                                 "train.save_every=0"])
    trainer = GRPOTrainer(cfg)
    assert torch.equal(_first_weight(trainer.policy), seed1)  # the pinned commit's weights, not main's
    env = json.loads((tmp_path / "pinned" / "env.json").read_text())
    assert env["model"] == {"path": "org/tiny-flux", "revision": pinned, "variant": None, "commit": pinned}
    go_offline(monkeypatch)  # what was downloaded at that commit loads again without the hub
    again = build_policy(ModelConfig(path="org/tiny-flux", revision=pinned, max_sequence_length=16))
    assert torch.equal(_first_weight(again), seed1)
