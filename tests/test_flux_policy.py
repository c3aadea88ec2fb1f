"""FluxPolicy against diffusers' FluxPipeline (ODE oracle), log-prob recompute, loading, gradients, SFT loss."""
import os

import pytest
import torch

from psrl.data.records import Record
from psrl.errors import ModelLoadError
from psrl.models.base import Policy
from psrl.sampling import SamplingConfig
from psrl.models.config import LoraConfig, ModelConfig
from psrl.models.factory import build_policy
from psrl.models.flux import FluxPolicy
from psrl.models.lora import lora_parameters
from psrl.models.tiny import tiny_flux_components

SEQ = 16
LORA = LoraConfig(rank=4, alpha=8)


def _policy(guidance_embeds=True, **kw):
    kw.setdefault("lora", LORA)
    return FluxPolicy(tiny_flux_components(guidance_embeds=guidance_embeds),
                      ModelConfig(max_sequence_length=SEQ, **kw))


def _gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def _perturb(policy, std=0.3):
    g = torch.Generator().manual_seed(123)
    for name, p in lora_parameters(policy.transformer):
        if "lora_B" in name:
            p.data.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.mark.component
@pytest.mark.parametrize("guidance_embeds", [True, False])
def test_ode_generation_equals_flux_pipeline(guidance_embeds):
    from diffusers import FluxPipeline

    pipe = FluxPipeline(**tiny_flux_components(guidance_embeds=guidance_embeds))
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red dog", "a cat on a sofa"]
    expected = pipe(prompts, num_inference_steps=3, height=16, width=24, guidance_scale=4.0,
                    max_sequence_length=SEQ, output_type="pt", generator=_gens(0, 1)).images
    policy = _policy(guidance_embeds)
    assert isinstance(policy, Policy)
    sampling = SamplingConfig(num_steps=3, height=16, width=24, guidance_scale=4.0, noise_level=0.9)
    got = policy.generate([Record(id=str(i), prompt=p) for i, p in enumerate(prompts)], sampling, _gens(0, 1))
    assert got.shape == expected.shape == (2, 3, 16, 24)
    assert (got - expected).abs().max() < 1e-4
    # the rollout's ODE path (noise 0) is the same computation
    ro = policy.rollout([Record(id=str(i), prompt=p) for i, p in enumerate(prompts)],
                        SamplingConfig(num_steps=3, height=16, width=24, guidance_scale=4.0, noise_level=0.0),
                        _gens(0, 1))
    assert (ro.images - expected).abs().max() < 1e-4
    assert ro.meta["guidance"] == (4.0 if guidance_embeds else None)


@pytest.mark.component
def test_schedule_is_the_schedulers_own_with_resolution_shift():
    policy = _policy()
    sigmas, timesteps = policy.sigma_schedule(4, image_seq_len=64)
    assert sigmas.shape == (5,) and sigmas[0] == 1 and sigmas[-1] == 0
    assert torch.allclose(timesteps, sigmas[:-1] * 1000)
    unshifted = torch.linspace(1, 0.25, 4)
    assert (sigmas[1:-1] > unshifted[1:]).all(), "mu shift pushes sigmas up (FLUX-like scheduler)"


@pytest.mark.component
@pytest.mark.parametrize("kind,mode,extra", [
    ("sde", "all_but_last", {}),
    ("cps", "all_but_last", {}),
    ("sde", "fast_window", {"train_k": 2, "window_range": [0, 4]}),
    ("sde", "list", {"noise_steps": [1, 3]}),
])
def test_recompute_reproduces_rollout_log_probs(kind, mode, extra):
    policy = _policy()
    _perturb(policy)
    records = [Record(id="a", prompt="a red dog")] * 2 + [Record(id="b", prompt="a cat")] * 2
    sampling = SamplingConfig(num_steps=5, height=16, width=16, noise_level=0.8, sde_kind=kind, train_steps=mode,
                              **extra)
    ro = policy.rollout(records, sampling, torch.Generator().manual_seed(3))
    assert ro.latents.shape == (4, 6, 64, 4) and ro.latents.dtype == torch.float32
    assert ro.log_probs.shape == (4, 5) and ro.timesteps.shape == (4, 5) and ro.sigmas.shape == (6,)
    assert ro.images.shape == (4, 3, 16, 16) and 0 <= ro.images.min() and ro.images.max() <= 1
    assert set(ro.cond) == {"prompt_embeds", "pooled_prompt_embeds"} and ro.cond["prompt_embeds"].shape[:2] == (4, SEQ)
    assert ro.trained_steps and all(bool(ro.noisy[s]) for s in ro.trained_steps)
    assert (ro.log_probs[:, ~ro.noisy] == 0).all()
    policy.train(True)
    for step in ro.trained_steps:
        new = policy.log_prob(ro, step)
        ratio = torch.exp(new.log_prob - ro.log_probs[:, step])
        assert (ratio - 1).abs().max() < 1e-5, (step, ratio)
        assert new.mean.shape == ro.latents[:, 0].shape and new.dt.shape == (4,) and (new.dt < 0).all()
    if mode == "fast_window":
        again = policy.rollout(records, sampling, torch.Generator().manual_seed(3))
        assert again.trained_steps == ro.trained_steps and len(ro.trained_steps) == 2
        assert torch.equal(again.latents, ro.latents)


@pytest.mark.component
def test_group_shares_prompt_encoding_and_optionally_noise():
    policy = _policy()
    calls = []
    encode = policy.encode_prompts
    policy.encode_prompts = lambda prompts: calls.append(list(prompts)) or encode(prompts)
    records = [Record(id="a", prompt="a red dog")] * 3 + [Record(id="b", prompt="a cat")] * 2
    sampling = SamplingConfig(num_steps=2, height=16, width=16, same_noise_per_group=True)
    ro = policy.rollout(records, sampling, torch.Generator().manual_seed(0))
    assert calls == [["a red dog", "a cat"]]
    assert torch.equal(ro.latents[0, 0], ro.latents[2, 0]) and torch.equal(ro.latents[3, 0], ro.latents[4, 0])
    assert not torch.equal(ro.latents[0, 0], ro.latents[3, 0])
    assert not torch.equal(ro.latents[0, -1], ro.latents[1, -1]), "SDE noise still differs within a group"


@pytest.mark.component
def test_per_sample_generators_make_samples_independent_of_the_batch():
    policy = _policy()
    sampling = SamplingConfig(num_steps=3, height=16, width=16, noise_level=0.7)
    pair = policy.rollout([Record(id="a", prompt="a dog"), Record(id="b", prompt="a dog")], sampling, _gens(5, 6))
    single = policy.rollout([Record(id="b", prompt="a dog")], sampling, _gens(6))
    assert torch.allclose(pair.latents[1], single.latents[0], atol=1e-5)


@pytest.mark.component
def test_backward_through_log_prob_reaches_only_lora_and_disable_lora_gives_base():
    policy = _policy()
    _perturb(policy)
    sampling = SamplingConfig(num_steps=3, height=16, width=16)
    ro = policy.rollout([Record(id="a", prompt="a dog")] * 2, sampling, torch.Generator().manual_seed(0))
    policy.train(True)
    assert policy.transformer.training and not any(m.training for m in policy.frozen_modules())
    policy.log_prob(ro, 0).log_prob.sum().backward()
    with_grad = [n for n, p in policy.transformer.named_parameters() if p.grad is not None]
    assert with_grad and all("lora_" in n for n in with_grad)
    assert any(p.grad.abs().sum() > 0 for p in policy.trainable_parameters())
    with torch.no_grad():
        with policy.disable_lora():
            ref = policy.log_prob(ro, 0)
        cur = policy.log_prob(ro, 0)
    assert (ref.mean - cur.mean).abs().max() > 0
    assert all(p.requires_grad for p in policy.trainable_parameters())
    base = _policy(lora=None)
    with torch.no_grad():
        assert torch.allclose(base.log_prob(ro, 0).mean, ref.mean, atol=1e-6)


@pytest.mark.component
def test_flow_matching_loss_is_finite_and_differentiable():
    policy = _policy()
    targets = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    loss = policy.flow_matching_loss([Record(id="a", prompt="a dog")] * 2, targets, torch.tensor([0.3, 0.9]),
                                     torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.trainable_parameters())


@pytest.mark.component
def test_from_config_loads_a_saved_pipeline_folder_like_a_user(tmp_path):
    from diffusers import FluxPipeline

    FluxPipeline(**tiny_flux_components(seed=0)).save_pretrained(tmp_path)
    loaded = build_policy(ModelConfig(path=str(tmp_path), max_sequence_length=SEQ, lora=LORA))
    tiny = FluxPolicy.from_config(ModelConfig(path="tiny", max_sequence_length=SEQ, lora=LORA))
    assert isinstance(loaded, FluxPolicy) and not loaded.text_encoder_2.training
    sampling = SamplingConfig(num_steps=2, height=16, width=16)
    records = [Record(id="a", prompt="a red dog")]
    a = loaded.generate(records, sampling, torch.Generator().manual_seed(0))
    b = tiny.generate(records, sampling, torch.Generator().manual_seed(0))
    assert (a - b).abs().max() < 1e-6


@pytest.mark.component
def test_load_errors_are_clear(tmp_path, monkeypatch):
    from diffusers import FluxPipeline

    with pytest.raises(ModelLoadError, match="does not exist"):
        FluxPolicy.from_config(ModelConfig(path=str(tmp_path / "nope")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"black-forest-labs/FLUX.1-dev.*offline.*local directory"):
        FluxPolicy.from_config(ModelConfig(path="black-forest-labs/FLUX.1-dev"))
    FluxPipeline(**tiny_flux_components()).save_pretrained(tmp_path / "m")
    for f in (tmp_path / "m" / "tokenizer_2").iterdir():
        f.unlink()
    with pytest.raises(ModelLoadError, match="tokenizer_2"):
        FluxPolicy.from_config(ModelConfig(path=str(tmp_path / "m"), max_sequence_length=SEQ))
    (tmp_path / "m" / "tokenizer_2").rmdir()
    with pytest.raises(ModelLoadError, match="no 'tokenizer_2' folder"):
        FluxPolicy.from_config(ModelConfig(path=str(tmp_path / "m"), max_sequence_length=SEQ))


@pytest.mark.unit
def test_silently_empty_tokenizer_is_rejected():
    from transformers import CLIPTokenizer

    from psrl.models.loading import check_tokenizer

    empty = CLIPTokenizer(vocab={"<|startoftext|>": 0, "<|endoftext|>": 1}, merges=[])
    with pytest.raises(ModelLoadError, match="no usable vocabulary"):
        check_tokenizer(empty, "somewhere/tokenizer")


@pytest.mark.component
def test_bad_size_and_unknown_args_are_errors():
    from psrl.config import ConfigError

    policy = _policy()
    with pytest.raises(ValueError, match="multiples of 2"):
        policy.generate([Record(id="a", prompt="x")], SamplingConfig(num_steps=1, height=15, width=16))
    with pytest.raises(ConfigError, match="model.args.foo"):
        FluxPolicy.from_config(ModelConfig(path="tiny", args={"foo": 1}))


@pytest.mark.component
@pytest.mark.skipif(not os.environ.get("PSRL_TEST_BF16"), reason="bf16 CPU check is opt-in")
def test_bf16_rollout_ratio_is_one():
    policy = _policy(dtype="bfloat16")
    ro = policy.rollout([Record(id="a", prompt="a dog")] * 2, SamplingConfig(num_steps=3, height=16, width=16),
                        torch.Generator().manual_seed(0))
    assert (policy.log_prob(ro, 0).log_prob - ro.log_probs[:, 0]).abs().max() < 1e-5


@pytest.mark.component
def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for ckpt in (False, True):
        policy = _policy(gradient_checkpointing=ckpt)
        _perturb(policy)
        ro = policy.rollout([Record(id="a", prompt="a dog")] * 2, SamplingConfig(num_steps=2, height=16, width=16),
                            torch.Generator().manual_seed(0))
        policy.train(True)
        policy.log_prob(ro, 0).log_prob.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.trainable_parameters()]))
    assert policy.transformer.gradient_checkpointing
    assert torch.allclose(grads[0], grads[1], atol=1e-6) and grads[0].abs().sum() > 0


@pytest.mark.component
def test_build_policy_unknown_name_is_a_config_error():
    from psrl.config import ConfigError

    with pytest.raises(ConfigError, match="model.name.*nope"):
        build_policy(ModelConfig(name="nope"))
