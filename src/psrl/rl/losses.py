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
    kl = policy_loss.new_zeros(())
    if beta > 0:
        if mean is None or ref_mean is None or std is None:
            raise ValueError("beta > 0 needs the policy mean, the reference mean and the step std")
        kl = kl_to_reference(mean, ref_mean.detach(), std, dt=dt).mean()
    return _output(policy_loss, kl, beta, ratio_stats(log_prob, old_log_prob, clip_range))


def _output(policy_loss: Tensor, kl: Tensor, beta: float, stats: dict[str, float]) -> LossOutput:
    """``loss = policy_loss + beta * kl`` with the three values added to ``stats``."""
    loss = policy_loss + beta * kl
    stats.update(policy_loss=float(policy_loss.detach()), kl=float(kl.detach()), loss=float(loss.detach()))
    return LossOutput(loss=loss, policy_loss=policy_loss, kl=kl, stats=stats)


def guard_loss(log_prob: Tensor, old_log_prob: Tensor, mean: Tensor, old_mean: Tensor, std: Tensor, dt: Tensor,
               advantages: Tensor, clip_range: float, *, beta: float = 0.0, ref_mean: Tensor | None = None,
               kl_dt: Tensor | None = None, reduce: str = "mean") -> LossOutput:
    """GRPO-Guard's loss for one trained step (arXiv 2510.22319; as released in X-GenGroup/PaCo-RL
    ``PaCo-GRPO/scripts/train_flux.py@08caac6``, ``compute_guard_grpo_loss``).

    With ``s = mean(std)`` (the step Gaussian's std ``sigma_t sqrt|dt|``, averaged over the batch) the ratio is
    re-centred and re-scaled so that its spread no longer depends on the step's noise::

        bias  = reduce_dims((mu - mu_old)^2) / (2 s^2)
        ratio = exp((log_prob - old_log_prob + bias) * s)
        policy_loss = PPO-clip(ratio, A) / mean|dt|          # the per-step 1/|dt| reweighting

    Args:
        log_prob, old_log_prob (`Tensor` `[B]`): the step log-probs with the current and the old weights.
        mean, old_mean (`Tensor` `[B, ...]`): the step Gaussian means (current differentiable, old detached).
        std (`Tensor`): the step Gaussian std, broadcastable to ``mean``; dt (`Tensor` `[B]`): ``sigma_next - sigma``.
        advantages (`Tensor` `[B]`), clip_range (`float`): as :func:`ppo_clip_loss`.
        beta, ref_mean, kl_dt: the KL to the reference, as :func:`grpo_loss`.
        reduce: ``mean`` or ``sum`` over latent dims, as the log-prob was reduced (the bias must match it).

    Returns:
        :class:`LossOutput`; ``stats`` has the Guard ratio's diagnostics.
    """
    s = std.float().mean()
    diff = (mean.float() - old_mean.float().detach()) ** 2
    dims = tuple(range(1, diff.ndim))
    bias = diff.mean(dim=dims) if reduce == "mean" else diff.sum(dim=dims)
    bias = bias / (2 * s**2)
    guarded = (log_prob.float() - old_log_prob.float().detach() + bias) * s
    policy_loss, _ = ppo_clip_loss(guarded, torch.zeros_like(guarded), advantages, clip_range)
    policy_loss = policy_loss / dt.float().abs().mean()
    kl = policy_loss.new_zeros(())
    if beta > 0:
        if ref_mean is None:
            raise ValueError("beta > 0 needs the reference mean")
        kl = kl_to_reference(mean, ref_mean.detach(), std, dt=kl_dt).mean()
    return _output(policy_loss, kl, beta, ratio_stats(guarded, torch.zeros_like(guarded), clip_range))


def nft_loss(v_new: Tensor, v_old: Tensor, x_t: Tensor, x0: Tensor, sigma: Tensor, advantages: Tensor, *,
             adv_clip: float, nft_beta: float = 1.0, beta: float = 0.0,
             v_ref: Tensor | None = None) -> LossOutput:
    """DiffusionNFT's loss on the forward process (arXiv 2509.16117; as released in X-GenGroup/PaCo-RL
    ``PaCo-GRPO/scripts/train_flux.py@08caac6``, ``compute_nft_loss``). No likelihoods: any sampler made ``x0``.

    ``x_t = (1 - t) x0 + t eps`` is the clean rollout latent re-noised at ``t = sigma``; the advantage becomes an
    optimality probability ``r = clip(A / adv_clip / 2 + 0.5, 0, 1)``; the implicit positive and negative policies
    around the old one are ``v+ = b v_new + (1 - b) v_old`` and ``v- = (1 + b) v_old - b v_new`` (``b = nft_beta``);
    each is scored by its x0-prediction ``x_t - t v`` with the adaptive weight ``1 / mean|x0_hat - x0|`` (no
    gradient, floored at 1e-5)::

        L = adv_clip * mean_B((r L+ + (1 - r) L-) / b) + beta * mean_B(mean_dims((v_new - v_ref)^2))

    Args:
        v_new (`Tensor` `[B, ...]`): velocity with the current weights (differentiable).
        v_old (`Tensor` `[B, ...]`): velocity with the old weights (detached here).
        x_t, x0 (`Tensor` `[B, ...]`): the re-noised and the clean latents; sigma (`Tensor` `[B]` or scalar): ``t``.
        advantages (`Tensor` `[B]`): already clipped to ``[-adv_clip, adv_clip]``.
        adv_clip (`float`): the advantage clip (``advantage.clip``; PaCo ``adv_clip_max`` = 5).
        nft_beta (`float`): ``b`` > 0 (PaCo default 1).
        beta (`float`): weight of the velocity KL to the reference; v_ref: the reference velocity.

    Returns:
        :class:`LossOutput` with ``stats``: ``policy_loss``, ``kl``, ``loss``, ``old_deviate``
        (``mean((v_new - v_old)^2)``).
    """
    if nft_beta <= 0:
        raise ValueError(f"nft_beta must be > 0, got {nft_beta}")
    v_new, v_old, x_t, x0 = v_new.float(), v_old.float().detach(), x_t.float(), x0.float()
    dims = tuple(range(1, x0.ndim))
    t = torch.as_tensor(sigma, dtype=torch.float32, device=x0.device)
    t = t.view(-1, *([1] * (x0.ndim - 1))) if t.ndim else t
    r = torch.clamp(advantages.float().detach() / adv_clip / 2.0 + 0.5, 0.0, 1.0)
    v_pos = nft_beta * v_new + (1 - nft_beta) * v_old
    v_neg = (1.0 + nft_beta) * v_old - nft_beta * v_new

    def weighted(v: Tensor) -> Tensor:
        x0_hat = x_t - t * v
        with torch.no_grad():
            w = (x0_hat.double() - x0.double()).abs().mean(dim=dims, keepdim=True).clamp(min=1e-5)
        return ((x0_hat - x0) ** 2 / w.float()).mean(dim=dims)

    per_sample = (r * weighted(v_pos) + (1.0 - r) * weighted(v_neg)) / nft_beta
    policy_loss = (per_sample * adv_clip).mean()
    kl = policy_loss.new_zeros(())
    if beta > 0:
        if v_ref is None:
            raise ValueError("beta > 0 needs the reference velocity")
        kl = ((v_new - v_ref.float().detach()) ** 2).mean(dim=dims).mean()
    return _output(policy_loss, kl, beta, {"old_deviate": float(((v_new.detach() - v_old) ** 2).mean())})
