"""The GRPO policy loss (PPO-clip on per-step ratios, Flow-GRPO form), its KL term and diagnostics. Pure tensors."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from psrl.sampling import kl_to_reference


@dataclass
class LossOutput:
    """``loss`` (scalar, differentiable) and its parts; ``stats`` are detached floats for logging."""

    loss: Tensor
    policy_loss: Tensor
    kl: Tensor
    stats: dict[str, float]


def ppo_clip_loss(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor,
                  clip_range: float) -> tuple[Tensor, Tensor]:
    """``mean(max(-A * r, -A * clip(r, 1 - eps, 1 + eps)))`` with ``r = exp(log_prob - old_log_prob)``.

    Args:
        log_prob (`Tensor` of shape `[B]`): recomputed with the current weights (differentiable).
        old_log_prob (`Tensor` of shape `[B]`): stored at rollout time.
        advantages (`Tensor` of shape `[B]`): this step's advantages.
        clip_range (`float`): ``eps``; ~1e-4 for the mean-over-dims log-prob.

    Returns:
        ``(loss, ratio)``, the ratio detached-free so callers can compute diagnostics.
    """
    ratio = torch.exp(log_prob.float() - old_log_prob.float().detach())
    adv = advantages.float().detach()
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped).mean(), ratio


def ratio_stats(log_prob: Tensor, old_log_prob: Tensor, clip_range: float) -> dict[str, float]:
    """Flow-GRPO's diagnostics: ``approx_kl = 0.5 * mean(dlogp^2)``, clip fraction, ratio mean/min/max."""
    with torch.no_grad():
        delta = log_prob.detach().float() - old_log_prob.detach().float()
        ratio = torch.exp(delta)
        return {
            "approx_kl": float(0.5 * (delta**2).mean()),
            "clipfrac": float(((ratio - 1.0).abs() > clip_range).float().mean()),
            "clipfrac_gt_one": float((ratio > 1.0 + clip_range).float().mean()),
            "clipfrac_lt_one": float((ratio < 1.0 - clip_range).float().mean()),
            "ratio_mean": float(ratio.mean()),
            "ratio_min": float(ratio.min()),
            "ratio_max": float(ratio.max()),
        }


def grpo_loss(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, clip_range: float, *,
              beta: float = 0.0, mean: Tensor | None = None, ref_mean: Tensor | None = None,
              std: Tensor | None = None, dt: Tensor | None = None) -> LossOutput:
    """``policy_loss + beta * mean(KL)`` for one trained step of a micro-batch.

    The KL is the closed form between the policy's and the reference's step Gaussians
    (:func:`psrl.sampling.kl_to_reference`); it needs ``mean``, ``ref_mean`` and ``std`` when ``beta > 0``. Pass
    ``dt`` to scale it by ``|dt|`` as Flow-GRPO's code does (so its published ``beta`` transfers).
    """
    policy_loss, _ = ppo_clip_loss(log_prob, old_log_prob, advantages, clip_range)
    if beta > 0:
        if mean is None or ref_mean is None or std is None:
            raise ValueError("beta > 0 needs the policy mean, the reference mean and the step std")
        kl = kl_to_reference(mean, ref_mean.detach(), std, dt=dt).mean()
    else:
        kl = policy_loss.new_zeros(())
    loss = policy_loss + beta * kl
    stats = ratio_stats(log_prob, old_log_prob, clip_range)
    stats.update(policy_loss=float(policy_loss.detach()), kl=float(kl.detach()), loss=float(loss.detach()))
    return LossOutput(loss=loss, policy_loss=policy_loss, kl=kl, stats=stats)
