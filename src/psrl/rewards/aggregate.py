"""Reward shaping: pure tensor functions that turn per-reward scores into one advantage (research notes:
customized_uno_rewards.md §1.5-1.6, paco_flowgrpo.md §3.3).

Shapes: ``rewards [N, K]`` (one column per reward), ``weights [K]``, ``group_ids [N]`` (prompt group of each
sample). NaN marks an unscorable sample: group statistics ignore it and its per-reward advantage is 0 (it carries
no signal), so one failed detection does not poison its group.

A group whose values differ only by float rounding is a zero-std group: :func:`spread_is_rounding` decides it, for
every advantage mode (:func:`group_center_scale` is the one group normalisation, used by ``weighted``,
``group_zscore``, ``sars`` and ``log_tamed``) and for the trainer's ``zero_std_groups`` count alike.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def _check(rewards: Tensor, weights: Tensor | None = None, group_ids: Tensor | None = None) -> None:
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [N, K], got shape {tuple(rewards.shape)}")
    if weights is not None and weights.shape != (rewards.shape[1],):
        raise ValueError(f"weights must be [K={rewards.shape[1]}], got shape {tuple(weights.shape)}")
    if group_ids is not None and group_ids.shape != (rewards.shape[0],):
        raise ValueError(f"group_ids must be [N={rewards.shape[0]}], got shape {tuple(group_ids.shape)}")


def weighted_sum(rewards: Tensor, weights: Tensor) -> Tensor:
    """``R_n = sum_k w_k r_nk`` ([N]); NaN if any reward of the sample is NaN (no silent fallback)."""
    _check(rewards, weights)
    return rewards.float() @ weights.float()


FLOAT32_EPS = float(torch.finfo(torch.float32).eps)  # 2**-23: the gap between 1.0 and the next float32
ROUNDING_ULPS = 16
"""How many float32 rounding steps of the values' magnitude a spread may span and still be rounding: a float32
holds ``x`` to within ``eps * |x| / 2``; batched and single reward calls differ by a few of these (HPSv3: 5.96e-8
apart at 0.8, one step), and a weighted sum of K rewards adds up to K half-steps more. 16 steps is 1.9e-6 relative:
above any rounding seen, below any difference a reward model resolves."""


def spread_is_rounding(values: Tensor, magnitude: Tensor | float | None = None) -> bool:
    """Whether a group's values differ only by float32 rounding, i.e. carry no signal (a zero-std group).

    ``max(v) - min(v) <= ROUNDING_ULPS * FLOAT32_EPS * M`` over the finite values, with ``M = max|v|`` by default.
    For a weighted sum ``v = sum_k w_k r_k`` pass ``magnitude = sum_k |w_k r_k|`` per sample (``M`` is its
    largest finite value): the terms' rounding survives cancellation between them. Computed in float64, so the test
    itself adds no rounding. Exactly equal values (and fewer than two finite ones) are always a zero spread.

    Args:
        values (`Tensor` of shape `[n]`): one group's values, any float dtype; NaN/inf entries are ignored.
        magnitude (`Tensor` of shape `[n]`, `float` or `None`): the scale of each value's rounding error.
    """
    v = values.detach().double().flatten()
    ok = torch.isfinite(v)
    v = v[ok]
    if v.numel() < 2:
        return True
    spread = float(v.max() - v.min())
    if spread == 0.0:
        return True
    if magnitude is None:
        scale = float(v.abs().max())
    elif isinstance(magnitude, Tensor) and magnitude.numel() > 1:
        m = magnitude.detach().double().flatten()[ok]
        m = m[torch.isfinite(m)]
        scale = float(m.abs().max()) if m.numel() else 0.0
    else:
        scale = abs(float(magnitude))
    return spread <= ROUNDING_ULPS * FLOAT32_EPS * scale


def terms_magnitude(rewards: Tensor, weights: Tensor) -> Tensor:
    """``sum_k |w_k r_nk|`` ([N]): the scale of the rounding error of ``sum_k w_k r_nk`` (NaN where a reward is)."""
    return rewards.float().abs() @ weights.float().abs()


def _nan_std(x: Tensor, unbiased: bool) -> Tensor:
    x = x[~torch.isnan(x)]
    n = x.numel()
    if n == 0 or (unbiased and n < 2):
        return torch.tensor(float("nan"))
    return x.std(unbiased=unbiased) if n > 1 else torch.tensor(0.0)


def group_center_scale(values: Tensor, group_ids: Tensor, *, unbiased: bool, eps: float, std_floor: bool = False,
                       global_std: bool = False, magnitude: Tensor | None = None) -> Tensor:
    """``(v - mean_group) / (std + eps)`` (or ``/ max(std, eps)`` with ``std_floor``), NaN-aware ([N] float32).

    NaN inputs, groups without a defined std and zero-std groups (:func:`spread_is_rounding` of the group's values,
    with ``magnitude [N]`` when given) give 0, whatever ``eps``: with ``eps = 1e-8`` a 1-ulp spread would otherwise be
    blown up to advantages near +-1. ``global_std`` divides by the std of all values (Flow-GRPO's ``global_std``)."""
    values = values.float()
    out = torch.zeros_like(values)
    gstd = _nan_std(values, unbiased)
    for gid in torch.unique(group_ids):
        m = group_ids == gid
        v = values[m]
        ok = ~torch.isnan(v)
        if not bool(ok.any()):
            continue
        if spread_is_rounding(v, None if magnitude is None else magnitude[m]):
            continue
        mean = v[ok].mean()
        std = gstd if global_std else _nan_std(v, unbiased)
        if torch.isnan(std):
            continue
        denom = torch.clamp(std, min=eps) if std_floor else std + eps
        out[m] = torch.where(ok, (v - mean) / denom, torch.zeros_like(v))
    return out


def per_reward_zscore(rewards: Tensor, group_ids: Tensor, *, eps: float = 1e-8, unbiased: bool = True) -> Tensor:
    """``A_nk = (r_nk - mean_g(r_k)) / (std_g(r_k) + eps)`` for each reward k within each group ([N, K]).
    Customized-GRPO: unbiased (torch) std, eps 1e-8."""
    _check(rewards, None, group_ids)
    cols = [group_center_scale(rewards[:, k], group_ids, unbiased=unbiased, eps=eps) for k in range(rewards.shape[1])]
    return torch.stack(cols, dim=1) if cols else rewards.new_zeros(rewards.shape)


def group_zscore(rewards: Tensor, weights: Tensor, group_ids: Tensor, *, eps: float = 1e-8,
                 unbiased: bool = True) -> Tensor:
    """Customized-GRPO / GDPO "normalise then combine": ``A_n = sum_k w_k * zscore_group(r_k)_n`` ([N])."""
    _check(rewards, weights, group_ids)
    return per_reward_zscore(rewards, group_ids, eps=eps, unbiased=unbiased) @ weights.float()


def coefficient_of_variation(rewards: Tensor) -> Tensor:
    """``h_k = std(r_k) / (mean(r_k) + 1e-6)`` over the batch (population std, as numpy), NaN-aware ([K])."""
    _check(rewards)
    out = []
    for k in range(rewards.shape[1]):
        x = rewards[:, k].float()
        x = x[~torch.isnan(x)]
        if x.numel() == 0:
            out.append(float("nan"))
            continue
        out.append(float(x.std(unbiased=False) / (x.mean() + 1e-6)) if x.numel() > 1 else 0.0)
    return torch.tensor(out)


def log_tame(rewards: Tensor, threshold: str | float = "mean") -> tuple[Tensor, Tensor]:
    """PaCo's taming step: rewards whose coefficient of variation exceeds the threshold (mean or median of the
    ``h_k``, or a number) are replaced by ``log(1 + r)``. Returns ``(tamed [N, K], tamed_mask [K])``."""
    h = coefficient_of_variation(rewards)
    finite = h[~torch.isnan(h)]
    if threshold == "mean":
        tau = float(finite.mean()) if finite.numel() else math.inf
    elif threshold == "median":
        # numpy's median (mean of the two middle values), not torch's lower median
        tau = float(finite.quantile(0.5)) if finite.numel() else math.inf
    elif isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
        tau = float(threshold)
    else:
        raise ValueError(f"log_tamed threshold must be 'mean', 'median' or a number, got {threshold!r}")
    mask = torch.nan_to_num(h, nan=-math.inf) > tau
    tamed = rewards.float().clone()
    for k in torch.nonzero(mask).flatten().tolist():
        col = tamed[:, k]
        if bool((col[~torch.isnan(col)] <= -1).any()):
            raise ValueError(f"log_tamed: reward column {k} has values <= -1; log(1 + r) is undefined")
        tamed[:, k] = torch.log1p(col)
    return tamed, mask


def log_tamed(rewards: Tensor, weights: Tensor, group_ids: Tensor, *, threshold: str | float = "mean",
              normalize: str = "group", eps: float = 1e-6) -> Tensor:
    """PaCo log-tamed aggregation: tame high-variance rewards with ``log(1 + r)``, ``R = sum_k w_k r~_k``, then
    ``(R - mean_group(R)) / max(std, eps)`` (population std). ``normalize``: ``group`` (each group's std, default),
    ``global_std`` (the std of all samples), or ``raw`` (compat: the released code returns ``R`` itself as the
    advantage, without centring or scaling; not group-relative, so it is the one mode where a zero-std group still
    gets a non-zero advantage, as in the released code)."""
    _check(rewards, weights, group_ids)
    tamed, _ = log_tame(rewards, threshold)
    total = tamed @ weights.float()
    if normalize == "raw":
        return total
    if normalize not in ("group", "global_std"):
        raise ValueError(f"log_tamed normalize must be 'group', 'global_std' or 'raw', got {normalize!r}")
    return group_center_scale(total, group_ids, unbiased=False, eps=eps, std_floor=True,
                              global_std=normalize == "global_std", magnitude=terms_magnitude(tamed, weights))


def sars(adv_identity: Tensor | float, adv_prompt: Tensor | float, gamma: float = 0.4,
         w_identity: Tensor | float = 0.5, w_prompt: Tensor | float = 0.5, clip: float | None = 5.0) -> Tensor:
    """Customized-GRPO's synergy-aware reward shaping (released ``conflict_strategy: tanh``)::

        bonus = gamma * s * tanh(A_id * A_p),  s = +1 if (A_id > 0 or A_p > 0) else -1
        A     = w_p * A_p + w_id * A_id + bonus, clamped to [-clip, clip]

    i.e. +gamma*tanh|A_id*A_p| when both advantages are positive (Pareto-improving sample), a penalty otherwise
    (conflict or joint failure). Elementwise; weights broadcast (TDW passes per-step weights)."""
    a_id = torch.as_tensor(adv_identity, dtype=torch.float32)
    a_p = torch.as_tensor(adv_prompt, dtype=torch.float32)
    sign = torch.where((a_id > 0) | (a_p > 0), 1.0, -1.0)
    bonus = gamma * sign * torch.tanh(a_id * a_p)
    w_p = torch.as_tensor(w_prompt, dtype=torch.float32)
    w_id = torch.as_tensor(w_identity, dtype=torch.float32)
    adv = w_p * a_p + w_id * a_id + bonus
    return adv.clamp(-clip, clip) if clip is not None else adv


TDW_REFERENCE_STEPS = 25


def tdw_prompt_weight(t: float) -> float:
    """The released TDW prompt (HPS) weight at step ``t`` of a 25-step schedule (0 = noisiest)."""
    if t < 6:
        return 0.7
    if t < 22:
        return 0.3 + 0.4 * (1.0 - 1.0 / (1.0 + math.exp(-0.8 * (t - 10.0))))
    return 0.5


def tdw_weights(step_index: int, num_steps: int = TDW_REFERENCE_STEPS, compat_loop_counter: bool = False
                ) -> tuple[float, float]:
    """Customized-GRPO time-aware dynamic weights ``(w_identity, w_prompt)`` for denoising step ``step_index``
    (0 = noisiest) of ``num_steps``. Prompt-following is emphasised early, identity later.

    At ``num_steps=25`` this is exactly the released table. Other step counts are stretched proportionally: the
    table is evaluated at ``t = step_index * 25 / num_steps`` (the same fraction of the trajectory).
    ``compat_loop_counter=True`` reproduces the released code, which evaluates the table at the *training loop
    counter* (0, 1, 2, ... over the randomly permuted trained steps) instead of the true denoising index: pass that
    counter as ``step_index``; it is used as-is, without stretching."""
    if compat_loop_counter:
        t = float(step_index)
    else:
        if num_steps <= 0 or not 0 <= step_index < num_steps:
            raise ValueError(f"tdw_weights: step_index must be in [0, {num_steps}), got {step_index}")
        t = step_index * TDW_REFERENCE_STEPS / num_steps
    w_prompt = tdw_prompt_weight(t)
    return 1.0 - w_prompt, w_prompt
