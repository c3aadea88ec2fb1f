"""train.cfg_grad: the gradient through true classifier-free guidance. ``both`` (default) is the true gradient of the
sampling policy; ``cond_only`` detaches the unconditional branch as Flow-GRPO does. Same loss value, different
gradients, and cond_only's gradient equals the one computed by hand with the unconditional prediction detached."""
import numpy as np
import pytest
import torch
from PIL import Image

from psrl.data.records import Record, SubjectRef, resolve_records
from psrl.sampling import SamplingConfig
from psrl.models.config import LoraConfig, ModelConfig
from psrl.sampling import sde_step_with_logprob

pytest.importorskip("diffusers")
pytestmark = pytest.mark.component

STEP = 1
ADV = torch.tensor([1.0, -0.5])


def _randomise_lora(policy) -> None:
    """LoRA B starts at zero, which would leave A without gradient: give every LoRA weight a small random value."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))


def _sd3(scale: float = 4.5):
    from psrl.models.sd3 import SD3Policy

    policy = SD3Policy.from_config(ModelConfig(name="sd3", path="tiny", max_sequence_length=32,
                                               lora=LoraConfig(rank=4, alpha=4)), "cpu")
    _randomise_lora(policy)
    recs = [Record(id="a", prompt="a red dog"), Record(id="b", prompt="a cat")]
    sampling = SamplingConfig(num_steps=3, height=16, width=16, guidance_scale=scale, noise_level=0.7)
    return policy, policy.rollout(recs, sampling, [torch.Generator().manual_seed(i) for i in range(2)])


def _qwen(tmp_path):
    from psrl.models.qwen_edit_plus import QwenImageEditPlusPolicy

    arr = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    cfg = ModelConfig(name="qwen_image_edit_plus", path="tiny", lora=LoraConfig(rank=4, alpha=4),
                      args={"condition_area": 1024, "vae_area": 1024})
    policy = QwenImageEditPlusPolicy.from_config(cfg, "cpu")
    _randomise_lora(policy)
    recs = resolve_records([Record(id="r", prompt="the dog from picture 1",
                                   subjects=(SubjectRef(image="a.png", phrase="dog"),))], tmp_path) * 2
    sampling = SamplingConfig(num_steps=3, height=32, width=32, guidance_scale=4.0, noise_level=0.7)
    return policy, policy.rollout(recs, sampling, [torch.Generator().manual_seed(i) for i in range(2)])


def _grads(policy, loss: torch.Tensor) -> list[torch.Tensor]:
    params = list(policy.trainable_parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)  # the last block's text-stream output is unused
    return [torch.zeros_like(p) if g is None else g.detach().clone() for p, g in zip(params, grads)]


def _policy_loss(policy, rollout, cfg_grad: str):
    """A policy-gradient loss on one step's recomputed log-prob, as the trainer's PPO pass builds it."""
    policy.cfg_grad = cfg_grad
    policy.train(True)
    loss = -(ADV * policy.log_prob(rollout, STEP).log_prob).sum()
    return loss, _grads(policy, loss)


def _hand_loss(policy, rollout, v_cond, v_uncond, combine):
    sampling = rollout.meta["sampling"]
    v = combine(v_cond, v_uncond, sampling.guidance_scale)
    _, lp, _, _ = sde_step_with_logprob(rollout.latents[:, STEP], v, float(rollout.sigmas[STEP]),
                                        float(rollout.sigmas[STEP + 1]), sampling.noise_level,
                                        prev_sample=rollout.latents[:, STEP + 1], kind=sampling.sde_kind,
                                        reduce=sampling.log_prob_reduce)
    loss = -(ADV * lp).sum()
    return loss, _grads(policy, loss)


def _branches(policy, rollout, negative: dict):
    """The conditional and unconditional velocities, each from its own un-guided forward pass."""
    x, t = rollout.latents[:, STEP], rollout.timesteps[:, STEP]
    v_cond = policy.predict(x, t, rollout.cond, rollout.meta, guidance=False)
    v_uncond = policy.predict(x, t, {**rollout.cond, **negative}, rollout.meta, guidance=False)
    return v_cond, v_uncond


def _check(policy, rollout, negative, combine):
    loss_both, g_both = _policy_loss(policy, rollout, "both")
    loss_cond, g_cond = _policy_loss(policy, rollout, "cond_only")
    assert torch.equal(loss_both, loss_cond)  # the forward value does not depend on where the gradient stops
    diff = max(float((a - b).abs().max()) for a, b in zip(g_both, g_cond))
    scale = max(float(a.abs().max()) for a in g_both)
    assert diff > 0.05 * scale, (diff, scale)  # far beyond the 1e-4 agreement below
    v_cond, v_uncond = _branches(policy, rollout, negative)
    loss_hand, g_hand = _hand_loss(policy, rollout, v_cond, v_uncond.detach(), combine)
    assert loss_hand.item() == pytest.approx(loss_cond.item(), rel=1e-5, abs=1e-6)
    for a, b in zip(g_cond, g_hand):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4 * scale)
    # and both is the same hand computation without the detach
    v_cond, v_uncond = _branches(policy, rollout, negative)
    _, g_true = _hand_loss(policy, rollout, v_cond, v_uncond, combine)
    for a, b in zip(g_both, g_true):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4 * scale)


def test_sd3_cond_only_detaches_the_unconditional_branch():
    policy, rollout = _sd3()
    neg = policy._negative_embeds()
    b = rollout.latents.shape[0]
    negative = {"prompt_embeds": neg["prompt_embeds"].expand(b, -1, -1),
                "pooled_prompt_embeds": neg["pooled_prompt_embeds"].expand(b, -1)}
    _check(policy, rollout, negative, lambda c, u, w: u + w * (c - u))


def test_qwen_edit_plus_cond_only_detaches_the_negative_branch(tmp_path):
    policy, rollout = _qwen(tmp_path)
    negative = {"prompt_embeds": rollout.cond["negative_embeds"], "prompt_len": rollout.cond["negative_len"]}

    def combine(c, u, w):  # the pipeline's guided velocity, rescaled per token to the conditional one's norm
        comb = u + w * (c - u)
        return comb * (torch.norm(c, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))

    _check(policy, rollout, negative, combine)


def test_without_cfg_the_setting_changes_nothing():
    policy, rollout = _sd3(scale=1.0)  # guidance <= 1: one conditional pass, nothing to detach
    loss_both, g_both = _policy_loss(policy, rollout, "both")
    loss_cond, g_cond = _policy_loss(policy, rollout, "cond_only")
    assert torch.equal(loss_both, loss_cond) and all(torch.equal(a, b) for a, b in zip(g_both, g_cond))


@pytest.mark.parametrize("model", ["sd3", "flux"])
def test_trainer_hands_cfg_grad_to_the_policy(tmp_path, model):
    """sd3 trains differently with cond_only; FLUX (distilled guidance, one pass) trains identically."""
    from psrl.rl.grpo_trainer import GRPOTrainer
    from psrl.rl.run_config import load_run_config

    weights = {}
    for setting in ("both", "cond_only"):
        cfg = load_run_config(None, [
            f"run.output_dir={tmp_path}", f"run.name={model}-{setting}", f"model.name={model}", "model.lora.rank=4",
            "model.lora.alpha=4", "model.max_sequence_length=32", "train.groups_per_step=1", "train.group_size=2",
            "train.sample_batch_size=2", "train.train_batch_size=2", "sampling.num_steps=2", "eval.every=0",
            "train.max_steps=1", "sampling.guidance_scale=4.0", f"train.cfg_grad={setting}", "train.lr=0.1"])
        trainer = GRPOTrainer(cfg)
        assert trainer.policy.cfg_grad == setting
        before = [p.detach().clone() for p in trainer.params]
        trainer.train()
        weights[setting] = [p.detach().clone() for p in trainer.params]
        assert any(not torch.equal(a, b) for a, b in zip(before, weights[setting]))  # the step trained
    same = all(torch.equal(a, b) for a, b in zip(weights["both"], weights["cond_only"]))
    assert same == (model == "flux")


def test_cfg_grad_is_validated():
    from psrl.config import ConfigError
    from psrl.rl.run_config import load_run_config

    assert load_run_config(None, []).train.cfg_grad == "both"
    with pytest.raises(ConfigError, match="train.cfg_grad"):
        load_run_config(None, ["train.cfg_grad=uncond"])
