"""SD3Policy on tiny components: diffusers oracle (ODE, CFG), rollout/log-prob consistency, LoRA round trip."""
import pytest
import torch

from psrl.data.records import Record
from psrl.models.base import Policy
from psrl.sampling import SamplingConfig
from psrl.models.config import LoraConfig, ModelConfig

pytestmark = pytest.mark.component

pytest.importorskip("diffusers")


def _policy(**kw):
    from psrl.models.sd3 import SD3Policy

    cfg = ModelConfig(name="sd3", path="tiny", max_sequence_length=32, lora=LoraConfig(rank=4, alpha=4), **kw)
    return SD3Policy.from_config(cfg, "cpu")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("scale", [5.0, 1.0])
def test_ode_generation_matches_diffusers_pipeline(scale):
    from diffusers import StableDiffusion3Pipeline

    from psrl.models.tiny_more import tiny_sd3_components

    pipe = StableDiffusion3Pipeline(**tiny_sd3_components())
    pipe.set_progress_bar_config(disable=True)
    ref = pipe("a red dog", negative_prompt="", guidance_scale=scale, num_inference_steps=3, height=16, width=16,
               max_sequence_length=32, output_type="pt", generator=_gen()).images
    policy = _policy()
    assert isinstance(policy, Policy)
    sampling = SamplingConfig(num_steps=3, height=16, width=16, guidance_scale=scale)
    out = policy.generate([Record(id="r", prompt="a red dog")], sampling, _gen())
    assert out.shape == ref.shape == (1, 3, 16, 16)
    assert (out - ref).abs().max().item() < 1e-4


def test_rollout_log_prob_recompute_ratio_is_one():
    policy = _policy()
    recs = [Record(id="a", prompt="a red dog")] * 2 + [Record(id="b", prompt="a cat")] * 2
    sampling = SamplingConfig(num_steps=4, height=16, width=16, guidance_scale=4.5, noise_level=0.7)
    ro = policy.rollout(recs, sampling, _gen(1))
    assert ro.latents.shape == (4, 5, 4, 16, 16) and ro.log_probs.shape == (4, 4)
    assert ro.trained_steps == (0, 1, 2)
    for step in ro.trained_steps:
        sub = ro.select([1, 2])
        lp = policy.log_prob(sub, step)
        assert torch.allclose(lp.log_prob, sub.log_probs[:, step], atol=1e-5, rtol=0)
    # group members differ (SDE noise), the record's prompt encoding is shared
    assert not torch.equal(ro.latents[0, -1], ro.latents[1, -1])
    assert torch.equal(ro.cond["prompt_embeds"][0], ro.cond["prompt_embeds"][1])


def test_lora_trains_and_round_trips_through_diffusers(tmp_path):
    from diffusers import StableDiffusion3Pipeline

    from psrl.models.tiny_more import tiny_sd3_components

    policy = _policy()
    params = list(policy.trainable_parameters())
    assert params and all("lora_" in n for n, p in policy.transformer.named_parameters() if p.requires_grad)
    sampling = SamplingConfig(num_steps=2, height=16, width=16, guidance_scale=1.0, noise_level=0.7,
                              train_steps="all")
    ro = policy.rollout([Record(id="a", prompt="a dog")], sampling, _gen(2))
    (-policy.log_prob(ro, 0).log_prob.sum()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    with torch.no_grad():  # a visible adapter: B is zero at init, so give every LoRA weight a random value
        for p in params:
            p.copy_(torch.randn(p.shape, generator=_gen(7)) * 0.3)
    policy.save_lora(tmp_path)
    gen_sampling = SamplingConfig(num_steps=2, height=16, width=16, guidance_scale=1.0)
    ours = policy.generate([Record(id="a", prompt="a dog")], gen_sampling, _gen(3))
    pipe = StableDiffusion3Pipeline(**tiny_sd3_components())
    pipe.set_progress_bar_config(disable=True)
    base = pipe("a dog", guidance_scale=1.0, num_inference_steps=2, height=16, width=16, max_sequence_length=32,
                output_type="pt", generator=_gen(3)).images
    pipe.load_lora_weights(tmp_path)
    theirs = pipe("a dog", guidance_scale=1.0, num_inference_steps=2, height=16, width=16, max_sequence_length=32,
                  output_type="pt", generator=_gen(3)).images
    assert (ours - base).abs().max() > 1e-3           # the update changed the policy
    assert (ours - theirs).abs().max() < 1e-4         # and diffusers reproduces it from the saved file


def test_unknown_arg_is_a_clear_error():
    with pytest.raises(ValueError, match="model.args.*posiiton"):
        _policy(args={"posiiton": 1})
