"""Reward shaping: pure tensor functions that turn per-reward scores into one advantage: Customized-GRPO's
group z-score, SARS and time-aware weighting (arXiv 2510.18263; Safeoffellow/Customized-GRPO@a431775
train/train_customized_grpo.py) and PaCo-RL's log-tamed, rank, per-reward-normalised and mean aggregations
(arXiv 2512.04784; X-GenGroup/PaCo-RL@08caac6 PaCo-GRPO/paco_grpo/stat_tracking.py).

Shapes: ``rewards [N, K]`` (one column per reward), ``weights [K]``, ``group_ids [N]`` (prompt group of each
sample). NaN marks an unscorable sample: group statistics ignore it and its per-reward advantage is 0 (it carries
no signal), so one failed detection does not poison its group.

A group whose values differ only by float rounding is a zero-std group: :func:`spread_is_rounding` decides it, for
every advantage mode (:func:`group_center_scale` is the one group normalisation, used by every mode) and for the
trainer's ``zero_std_groups`` count alike; :func:`group_rank` treats values within the same tolerance
(:func:`rounding_tolerance`) as ties.

PaCo-GRPO's aggregations (X-GenGroup/PaCo-RL@08caac6 PaCo-GRPO/paco_grpo/stat_tracking.py and config/grpo.py):
:func:`group_rank` ('rank-grpo'), :func:`per_reward_normalized` (``weighted_advantage_sum_aggregate_fn``),
:func:`geometric_mean` and :func:`harmonic_mean` (``geometric_mean_aggregate_fn`` / ``harmonic_mean_aggregate_fn``,
scipy's ``gmean`` / ``hmean``).
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


def rounding_tolerance(values: Tensor, magnitude: Tensor | float | None = None) -> float:
    """``ROUNDING_ULPS * FLOAT32_EPS * M``: how far apart two of ``values`` can be and still differ only by float32
    rounding. ``M = max|v|`` over the finite values by default; for a weighted sum ``v = sum_k w_k r_k`` pass
    ``magnitude = sum_k |w_k r_k|`` per sample (``M`` is its largest finite value at the finite values): the terms'
    rounding survives cancellation between them. 0.0 when no value is finite.

    Args:
        values (`Tensor` of shape `[n]`): any float dtype; NaN/inf entries are ignored.
        magnitude (`Tensor` of shape `[n]`, `float` or `None`): the scale of each value's rounding error.
    """
    v = values.detach().double().flatten()
    ok = torch.isfinite(v)
    if magnitude is None:
        m = v[ok].abs()
    elif isinstance(magnitude, Tensor) and magnitude.numel() > 1:
        m = magnitude.detach().double().flatten()[ok].abs()
        m = m[torch.isfinite(m)]
    else:
        m = torch.tensor([abs(float(magnitude))], dtype=torch.float64)
    return ROUNDING_ULPS * FLOAT32_EPS * float(m.max()) if m.numel() else 0.0


def spread_is_rounding(values: Tensor, magnitude: Tensor | float | None = None) -> bool:
    """Whether a group's values differ only by float32 rounding, i.e. carry no signal (a zero-std group).

    ``max(v) - min(v) <= rounding_tolerance(v, magnitude)`` over the finite values (see :func:`rounding_tolerance`
    for ``magnitude``). Computed in float64, so the test itself adds no rounding. Exactly equal values (and fewer
    than two finite ones) are always a zero spread.

    Args:
        values (`Tensor` of shape `[n]`): one group's values, any float dtype; NaN/inf entries are ignored.
        magnitude (`Tensor` of shape `[n]`, `float` or `None`): the scale of each value's rounding error.
    """
    v = values.detach().double().flatten()
    v = v[torch.isfinite(v)]
    if v.numel() < 2:
        return True
    spread = float(v.max() - v.min())
    if spread == 0.0:
        return True
    return spread <= rounding_tolerance(values, magnitude)


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


def group_rank(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """PaCo's 'rank-grpo' transform: each reward replaced by its rank within its group, scaled to ``[0, 1]``:
    ``rank / (n - 1)`` with ``rank`` 0-based over the group's ``n`` finite values ([N, K] float32).

    Ties share the average of their ranks (scipy ``rankdata(method="average")``), and values within
    :func:`rounding_tolerance` of each other (sorted, neighbour to neighbour) are ties: a group whose spread is
    rounding ranks every member 0.5, so it stays a zero-std group. PaCo breaks ties by position
    (``argsort(argsort(r))``), which would make a signal out of equal rewards. A lone finite value ranks 0.5
    (no order); NaN stays NaN.

    Args:
        rewards (`Tensor` of shape `[N, K]`): one column per reward.
        group_ids (`Tensor` of shape `[N]`): the prompt group of each sample.

    Source: X-GenGroup/PaCo-RL@08caac6 PaCo-GRPO/paco_grpo/stat_tracking.py ``_calc_rank_grpo_advantage``.
    """
    _check(rewards, None, group_ids)
    out = torch.full(rewards.shape, float("nan"), dtype=torch.float32)
    for gid in torch.unique(group_ids):
        rows = torch.nonzero(group_ids == gid).flatten()
        for k in range(rewards.shape[1]):
            v = rewards[rows, k].double()
            ok = torch.isfinite(v)
            n = int(ok.sum())
            if n == 0:
                continue
            idx, vals = rows[ok], v[ok]
            order = torch.argsort(vals, stable=True)
            tol = rounding_tolerance(vals)
            ranks = torch.empty(n, dtype=torch.float64)
            start = 0
            for i in range(1, n + 1):  # close a tie block where the next sorted value is more than rounding away
                if i == n or float(vals[order[i]] - vals[order[i - 1]]) > tol:
                    ranks[order[start:i]] = (start + i - 1) / 2
                    start = i
            out[idx, k] = (ranks / (n - 1) if n > 1 else torch.full((1,), 0.5, dtype=torch.float64)).float()
    return out


def per_reward_normalized(rewards: Tensor, weights: Tensor, group_ids: Tensor, *, global_std: bool = False,
                          std_floor: float = 1e-6) -> Tensor:
    """PaCo's weighted advantage sum: ``A_n = sum_k w_k (r_nk - mean_g(r_k)) / max(std_k, std_floor)`` ([N]).

    Each reward is normalised on its own before the weighted sum; ``std_k`` is the population std of reward ``k``
    within the group, or over all ``N`` samples with ``global_std`` (PaCo's default). A reward whose spread in a
    group is rounding contributes 0 there (:func:`group_center_scale`); a NaN reward contributes 0 for its sample.
    Differs from :func:`group_zscore` (Customized-GRPO) in the population std, the floor instead of an added eps,
    and the global option.

    Source: X-GenGroup/PaCo-RL@08caac6 PaCo-GRPO/config/grpo.py ``weighted_advantage_sum_aggregate_fn``.
    """
    _check(rewards, weights, group_ids)
    cols = [group_center_scale(rewards[:, k], group_ids, unbiased=False, eps=std_floor, std_floor=True,
                               global_std=global_std) for k in range(rewards.shape[1])]
    return torch.stack(cols, dim=1) @ weights.float()


def _mean_weights(rewards: Tensor, weights: Tensor, kind: str) -> Tensor:
    _check(rewards, weights)
    w = weights.double()
    if bool((w < 0).any()) or not bool(w.sum() > 0) or not bool(torch.isfinite(w).all()):
        raise ValueError(f"the {kind} mean of the rewards needs reward weights >= 0 with a positive sum (the "
                         f"rewards' 'weight'), got {weights.tolist()}")
    return w


def _mean_inputs(rewards: Tensor, weights: Tensor, kind: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(r [N, K'] float64, w [K'] float64, undefined [N] bool)`` for a weighted mean over the K' rewards of positive
    weight; ``undefined`` marks rows with a negative or NaN reward (the mean is defined for rewards >= 0 only)."""
    w = _mean_weights(rewards, weights, kind)
    keep = w > 0
    r, w = rewards.double()[:, keep], w[keep]
    return r, w, ~(r >= 0).all(dim=1)


def mean_failures(rewards: Tensor, weights: Tensor, kind: str = "geometric") -> list[str | None]:
    """Per sample, why the ``kind`` (geometric or harmonic) mean of its rewards is undefined, or ``None``: a
    negative reward of positive weight (both means are defined for rewards >= 0 only; scipy returns NaN), or a
    NaN one. Zero-weight rewards are not part of the mean and are not checked."""
    w = _mean_weights(rewards, weights, kind)
    out: list[str | None] = []
    for row in rewards.double():
        why = None
        for k in torch.nonzero(w > 0).flatten().tolist():
            x = float(row[k])
            if not x >= 0:
                why = (f"reward column {k} is {x:.6g}: the {kind} mean is defined for rewards >= 0 only"
                       if x == x else f"reward column {k} is NaN")
                break
        out.append(why)
    return out


def geometric_mean(rewards: Tensor, weights: Tensor) -> Tensor:
    """Weighted geometric mean across rewards: ``G_n = exp(sum_k w_k log r_nk / sum_k w_k)`` ([N] float32, computed
    in float64), scipy ``gmean(r, axis=1, weights=w)``. Equal weights give PaCo's unweighted ``gmean``.

    A zero reward gives 0 (the limit, and scipy's value): one failed criterion zeroes the sample. A negative reward
    (undefined) or a NaN one gives NaN, for that sample alone (:func:`mean_failures` says why). Zero-weight rewards
    are left out.

    Raises:
        ValueError: a weight is negative or not finite, or the weights sum to 0.

    Source: X-GenGroup/PaCo-RL@08caac6 PaCo-GRPO/config/grpo.py ``geometric_mean_aggregate_fn``.
    """
    r, w, bad = _mean_inputs(rewards, weights, "geometric")
    logs = torch.log(r.clamp(min=0.0))  # log 0 = -inf, exp(-inf) = 0
    out = torch.exp((logs * w).sum(dim=1) / w.sum())
    return torch.where(bad, torch.full_like(out, float("nan")), out).float()


def harmonic_mean(rewards: Tensor, weights: Tensor) -> Tensor:
    """Weighted harmonic mean across rewards: ``H_n = sum_k w_k / sum_k (w_k / r_nk)`` ([N] float32, computed in
    float64), scipy ``hmean(r, axis=1, weights=w)``. Equal weights give PaCo's unweighted ``hmean``. Zeros, negative
    and NaN rewards and zero weights as in :func:`geometric_mean`.

    Raises:
        ValueError: a weight is negative or not finite, or the weights sum to 0.

    Source: X-GenGroup/PaCo-RL@08caac6 PaCo-GRPO/config/grpo.py ``harmonic_mean_aggregate_fn``.
    """
    r, w, bad = _mean_inputs(rewards, weights, "harmonic")
    out = w.sum() / (w / r.clamp(min=0.0)).sum(dim=1)  # w / 0 = inf, so a zero reward gives 0
    return torch.where(bad, torch.full_like(out, float("nan")), out).float()


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
