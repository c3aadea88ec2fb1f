"""The loss types of the one GRPO trainer (``train.loss``): each turns a micro-batch, its advantages and one trained
step into a :class:`~psrl.rl.losses.LossOutput`, calling the policy only through the :class:`Policy` protocol and
leaving the math to the pure functions in :mod:`psrl.rl.losses`.

* ``ppo``: Flow-GRPO's PPO-clip on the step log-prob ratio (arXiv 2505.05470).
* ``guard``: GRPO-Guard's re-centred, noise-scaled ratio with the per-step ``1/|dt|`` reweighting
  (arXiv 2510.22319).
* ``nft``: DiffusionNFT's forward-process loss on the re-noised clean latent (arXiv 2509.16117): no log-probs, so
  any sampler (the ODE too) may make the rollouts.

``guard`` and ``nft`` compare the current weights with the old policy's (:mod:`psrl.rl.old_policy`), so they
always run with one. The old and reference passes run before the differentiable one: they swap weights in place,
which must not happen while autograd still needs the current values.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from psrl.rl.losses import LossOutput, grpo_loss, guard_loss, nft_loss


@dataclass
class LossContext:
    """What a loss type needs besides the batch: the policy, the old policy (or ``None``), the train config, the
    advantage clip and the trainer's autocast."""

    policy: Any
    old_policy: Any
    train: Any
    adv_clip: float
    autocast: Callable[[], Any]


def _old_weights(ctx: LossContext):
    return ctx.old_policy.swapped_in() if ctx.old_policy is not None else nullcontext()


def _reference_mean(ctx: LossContext, batch, step: int) -> Tensor | None:
    """The step's mean under the reference (LoRA disabled) for the KL term; ``None`` when ``beta`` is 0 (no pass).
    Call inside ``no_grad``."""
    if ctx.train.beta <= 0:
        return None
    with ctx.policy.disable_lora():
        return ctx.policy.log_prob(batch, step).mean


def ppo_step(ctx: LossContext, batch, adv: Tensor, step: int, seed: int) -> LossOutput:
    """PPO-clip; the old log-prob is the rollout's, or recomputed with the old weights when an old policy is kept
    (then in the training micro-batch's shapes, so the first ratio of a step is exactly 1)."""
    t, policy = ctx.train, ctx.policy
    with torch.no_grad(), ctx.autocast():
        if ctx.old_policy is not None:
            with ctx.old_policy.swapped_in():
                old_lp = policy.log_prob(batch, step).log_prob
        else:
            old_lp = batch.log_probs[:, step].to(adv.device)
        ref_mean = _reference_mean(ctx, batch, step)
    with ctx.autocast():
        new = policy.log_prob(batch, step)
    return grpo_loss(new.log_prob, old_lp, adv, t.clip_range, beta=t.beta, mean=new.mean, ref_mean=ref_mean,
                     std=new.std, dt=new.dt if t.kl_compat_dt else None)


def guard_step(ctx: LossContext, batch, adv: Tensor, step: int, seed: int) -> LossOutput:
    t, policy = ctx.train, ctx.policy
    with torch.no_grad(), ctx.autocast():
        with _old_weights(ctx):
            old = policy.log_prob(batch, step)
        ref_mean = _reference_mean(ctx, batch, step)
    with ctx.autocast():
        new = policy.log_prob(batch, step)
    reduce = batch.meta["sampling"].log_prob_reduce if "sampling" in batch.meta else "mean"
    return guard_loss(new.log_prob, old.log_prob, new.mean, old.mean, new.std, new.dt, adv, t.clip_range,
                      beta=t.beta, ref_mean=ref_mean, kl_dt=new.dt if t.kl_compat_dt else None, reduce=reduce)


def nft_step(ctx: LossContext, batch, adv: Tensor, step: int, seed: int) -> LossOutput:
    """Re-noise the rollout's clean latent at the step's sigma with noise from ``seed`` (drawn on the CPU, so every
    device and process draws the same), then the NFT loss on the three velocities."""
    t, policy = ctx.train, ctx.policy
    x0 = batch.latents[:, -1].float()
    sigma = float(batch.sigmas[step])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    x_t = (1.0 - sigma) * x0 + sigma * noise.to(x0.device)
    with torch.no_grad(), ctx.autocast():
        with _old_weights(ctx):
            v_old = policy.velocity_at(batch, x_t, step)
        v_ref = None
        if t.beta > 0:
            with policy.disable_lora():
                v_ref = policy.velocity_at(batch, x_t, step)
    with ctx.autocast():
        v_new = policy.velocity_at(batch, x_t, step)
    device = v_new.device
    return nft_loss(v_new, v_old, x_t.to(device), x0.to(device), torch.tensor(sigma), adv.to(device),
                    adv_clip=ctx.adv_clip, nft_beta=t.nft_beta, beta=t.beta, v_ref=v_ref)


@dataclass(frozen=True)
class LossType:
    """A registered loss: its step function, whether it needs an old policy, and the stats it reports."""

    step: Callable[..., LossOutput]
    needs_old_policy: bool
    stats: tuple[str, ...]


_RATIO_STATS = ("approx_kl", "clipfrac", "clipfrac_gt_one", "clipfrac_lt_one", "ratio_mean", "ratio_min",
                "ratio_max", "policy_loss", "kl", "loss")

LOSS_TYPES: dict[str, LossType] = {
    "ppo": LossType(ppo_step, False, _RATIO_STATS),
    "guard": LossType(guard_step, True, _RATIO_STATS),
    "nft": LossType(nft_step, True, ("policy_loss", "kl", "loss", "old_deviate")),
}

__all__ = ["LOSS_TYPES", "LossContext", "LossType", "guard_step", "nft_step", "ppo_step"]
