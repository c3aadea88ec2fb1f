"""Stochastic and deterministic flow-matching steps with Gaussian log-probabilities.

Pure tensor math: no diffusers import, no I/O. Notation follows diffusers' ``FlowMatchEulerDiscreteScheduler``:
``x_sigma = (1 - sigma) * x0 + sigma * noise``, the model predicts the velocity ``v ~ noise - x0`` and a step goes
from ``sigma`` to ``sigma_next < sigma``.

Everything is computed in float32 whatever the input dtype: in bf16 the mean of the SDE step can overflow and the
log-probabilities of rollout and update drift apart (Flow-GRPO FAQ).
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)

StepKind = Literal["sde", "cps"]
Reduce = Literal["mean", "sum"]


def _per_sample(value, like: Tensor) -> Tensor:
    """Broadcast a float, 0-d or [B] tensor to ``like``'s rank, float32."""
    t = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if t.ndim == 0:
        return t
    if t.ndim != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(f"sigma must be a scalar or a [B] tensor, got shape {tuple(t.shape)} for batch "
                         f"{like.shape[0]}")
    return t.view(-1, *([1] * (like.ndim - 1)))


def reduce_log_density(log_density: Tensor, reduce: Reduce) -> Tensor:
    """Collapse all non-batch dims: ``mean`` (Flow-GRPO convention, clip ranges ~1e-4) or ``sum`` (true density)."""
    dims = tuple(range(1, log_density.ndim))
    if reduce == "mean":
        return log_density.mean(dim=dims)
    if reduce == "sum":
        return log_density.sum(dim=dims)
    raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor, reduce: Reduce = "mean") -> Tensor:
    """log N(x; mean, std^2 I) per sample, reduced over non-batch dims. ``std`` broadcasts against ``x``."""
    x, mean, std = x.float(), mean.float(), torch.as_tensor(std, dtype=torch.float32, device=x.device)
    log_density = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    return reduce_log_density(log_density, reduce)


def sde_step_with_logprob(sample: Tensor, velocity: Tensor, sigma, sigma_next, noise_level: float, *,
                          prev_sample: Tensor | None = None,
                          generator: torch.Generator | list[torch.Generator] | None = None, kind: StepKind = "sde",
                          reduce: Reduce = "mean", sigma_max=None, cps_compat: bool = False
                          ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One sampling step from ``sigma`` to ``sigma_next`` and the log-probability of its result.

    Args:
        sample (`Tensor` of shape `[B, ...]`): the current latent ``x_sigma``.
        velocity (`Tensor` of shape `[B, ...]`): the model's prediction at ``(sample, sigma)``.
        sigma, sigma_next (`float` or `Tensor` of shape `[B]`): noise levels, ``sigma_next < sigma``.
        noise_level (`float`): ``a`` in Flow-GRPO's ``sigma_t = a * sqrt(t / (1 - t))`` (kind ``sde``) or the CPS
            angle fraction (kind ``cps``). ``0`` gives the deterministic Euler (ODE) step.
        prev_sample (`Tensor`, *optional*): score this given next latent instead of drawing one (the update phase).
        generator: torch generator(s) for the noise; a list gives one generator per sample.
        kind (`"sde"` | `"cps"`): Flow-GRPO's marginal-preserving SDE, or coefficients-preserving sampling.
        reduce (`"mean"` | `"sum"`): how the per-element log-density is collapsed; ``mean`` is Flow-GRPO's
            convention, so its published clip ranges transfer; ``sum`` is the true log-density.
        sigma_max (`float`, *optional*): replaces ``sigma`` in ``1 / (1 - sigma)`` when ``sigma == 1`` (the first
            step of an unshifted schedule). Flow-GRPO uses the schedule's second sigma, which at step 0 is
            ``sigma_next``, the default here.
        cps_compat (`bool`): for ``kind="cps"``, return Flow-GRPO's constant-free ``-mean((x - mean)^2)`` instead
            of the true Gaussian log-density (they differ by the ``1 / (2 std^2)`` scale and constants).

    Returns:
        ``(prev_sample, log_prob [B], mean, std)`` in float32, where ``std`` is the Gaussian's standard deviation
        broadcastable to ``sample``. For an ODE step (``noise_level == 0``) ``std`` is 0 and ``log_prob`` is 0:
        the step is deterministic and is never trained.
    """
    x = sample.float()
    v = velocity.float()
    s = _per_sample(sigma, x)
    s_next = _per_sample(sigma_next, x)

    if kind == "sde":
        dt = s_next - s
        s_max = s_next if sigma_max is None else _per_sample(sigma_max, x)
        denom_sigma = torch.where(s == 1, s_max, s)
        std_dev_t = torch.sqrt(s / (1 - denom_sigma)) * noise_level
        mean = x * (1 + std_dev_t**2 / (2 * s) * dt) + v * (1 + std_dev_t**2 * (1 - s) / (2 * s)) * dt
        std = std_dev_t * torch.sqrt(-dt)
    elif kind == "cps":
        std = s_next * math.sin(noise_level * math.pi / 2)
        x0_hat = x - s * v
        x1_hat = x + (1 - s) * v
        mean = x0_hat * (1 - s_next) + x1_hat * torch.sqrt(torch.clamp(s_next**2 - std**2, min=0.0))
    else:
        raise ValueError(f"kind must be 'sde' or 'cps', got {kind!r}")

    std = torch.as_tensor(std, dtype=torch.float32, device=x.device)
    std_full = std.expand_as(x) if std.ndim else std.expand(x.shape)

    if prev_sample is not None:
        prev = prev_sample.detach().float()
    else:
        prev = mean if noise_level == 0 else mean + std_full * _randn_like(x, generator)

    if noise_level == 0 or bool((std_full == 0).all()):
        log_prob = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
    elif kind == "cps" and cps_compat:
        log_prob = reduce_log_density(-((prev - mean) ** 2), reduce)
    else:
        log_prob = gaussian_log_prob(prev, mean, std_full, reduce)
    return prev, log_prob, mean, std_full


def _randn_like(x: Tensor, generator) -> Tensor:
    if isinstance(generator, (list, tuple)):
        if len(generator) != x.shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
        return torch.stack([torch.randn(x.shape[1:], generator=g, dtype=torch.float32, device=g.device).to(x.device)
                            for g in generator])
    if generator is not None:
        return torch.randn(x.shape, generator=generator, dtype=torch.float32, device=generator.device).to(x.device)
    return torch.randn_like(x)


def kl_to_reference(mean: Tensor, ref_mean: Tensor, std: Tensor, *, dt=None) -> Tensor:
    """Per-sample KL between the policy's and the reference's step Gaussians (same ``std``), shape ``[B]``.

    ``KL = mean_dims((mu - mu_ref)^2) / (2 std^2)`` with ``std`` the step's Gaussian std as returned by
    :func:`sde_step_with_logprob` (averaged over dims like the default log-prob, so ``beta`` has Flow-GRPO's scale).
    Flow-GRPO's code divides by ``sigma_t^2`` without the ``|dt|`` in ``std^2 = sigma_t^2 |dt|``; pass ``dt`` to
    reproduce that value (``KL * |dt|``) when reusing its published ``beta``.
    """
    diff = ((mean.float() - ref_mean.float()) ** 2).mean(dim=tuple(range(1, mean.ndim)))
    s = std.float()
    s = s.reshape(s.shape[0], -1)[:, 0] if s.ndim > 1 else s
    kl = diff / (2 * s**2)
    if dt is not None:
        kl = kl * torch.as_tensor(dt, dtype=torch.float32, device=kl.device).abs()
    return kl
