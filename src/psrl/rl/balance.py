"""Adaptive multi-reward balance (``advantage.balance: adaptive``): psrl's own extension, off by default.

With several rewards, the Flow-GRPO family sums them with fixed weights; the trackers' complaint is that the hard
reward stalls while the easy one runs off with the advantage. The balancer watches, per reward, how fast its step
mean is rising and how often the rewards disagree inside a group, and moves weight toward the stalled rewards within
bounds the user sets. Weighting each objective by its inverse rate of progress is the idea of the Dynamic Weight
Average of Liu et al. (arXiv 1803.10704, the model-objective section of MTAN, for multi-task losses); here the rate
is measured in units of each reward's own within-group spread, so rewards of different scales compare, and the shift
is gated by how often the rewards disagree (when they rank a group's samples alike, re-weighting changes little).

The rule, at each step, from the last ``window`` steps (``advantage.balance_window``):

* ``slope_k``: least-squares slope of reward ``k``'s step mean per step (:func:`reward_slopes`);
* ``spread_k``: reward ``k``'s mean within-group standard deviation (:func:`group_spread`);
* ``progress_k = max(slope_k, 0) / spread_k``: how many of its own noise units it gains per step;
* ``target_k = clip(mean(progress) / progress_k, lo, hi)`` (``1`` for every reward when none progresses);
* ``D``: the disagreement rate (:func:`disagreement_rate`): the share of (group, reward pair) cases in which one
  reward's best sample is the other's worst;
* ``w_k = base_k * (1 + min(1, D / d_ref) * (target_k - 1))``, within ``[lo, hi] * base_k``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from psrl.rl.image_stats import nan_mean

_TINY = 1e-12


def reward_slopes(means: Tensor) -> Tensor:
    """Least-squares slope per step of each column of ``means`` (``[T, K]`` step means, oldest first) over its finite
    entries: ``[K]`` float32, NaN for a column with fewer than two finite entries."""
    means = means.double()
    t = torch.arange(means.shape[0], dtype=torch.float64)
    out = torch.full((means.shape[1],), float("nan"))
    for k in range(means.shape[1]):
        ok = torch.isfinite(means[:, k])
        if int(ok.sum()) < 2:
            continue
        x, y = t[ok], means[ok, k]
        xc = x - x.mean()
        out[k] = float((xc * (y - y.mean())).sum() / (xc * xc).sum())
    return out


def group_spread(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """Mean over groups of each reward's population std within the group (finite samples only): ``[K]`` float32;
    NaN for a reward with no group of two finite samples."""
    rewards, gid = rewards.double(), torch.as_tensor(group_ids).long()
    out = torch.full((rewards.shape[1],), float("nan"))
    for k in range(rewards.shape[1]):
        stds = []
        for g in torch.unique(gid):
            v = rewards[gid == g, k]
            v = v[torch.isfinite(v)]
            if v.numel() >= 2:
                stds.append(float(v.std(unbiased=False)))
        if stds:
            out[k] = sum(stds) / len(stds)
    return out


def disagreement_rate(rewards: Tensor, group_ids: Tensor) -> float:
    """Share of (group, unordered reward pair) cases in which the pair disagrees at the extremes: one reward's
    highest-scoring sample is the other's lowest (either way round). Groups with fewer than two samples finite in
    both rewards, or where either reward is flat, are not counted. ``0.0`` with one reward or nothing counted."""
    rewards, gid = rewards.double(), torch.as_tensor(group_ids).long()
    k = rewards.shape[1]
    hits = cases = 0
    for g in torch.unique(gid):
        block = rewards[gid == g]
        for a in range(k):
            for b in range(a + 1, k):
                ok = torch.isfinite(block[:, a]) & torch.isfinite(block[:, b])
                ra, rb = block[ok, a], block[ok, b]
                if ra.numel() < 2 or float(ra.max() - ra.min()) == 0 or float(rb.max() - rb.min()) == 0:
                    continue
                cases += 1
                hits += int(int(ra.argmax()) == int(rb.argmin()) or int(ra.argmin()) == int(rb.argmax()))
    return hits / cases if cases else 0.0


def adaptive_weights(base: Tensor, slopes: Tensor, spreads: Tensor, disagreement: float, *,
                     bounds: tuple[float, float] = (0.25, 4.0), disagreement_ref: float = 0.25) -> Tensor:
    """The weights of the module docstring's rule.

    Args:
        base (`Tensor` of shape `[K]`): the configured weights.
        slopes, spreads (`Tensor` of shape `[K]`): per-step slope and within-group spread of each reward; a reward
            with a NaN in either keeps its base weight.
        disagreement (`float` in ``[0, 1]``): :func:`disagreement_rate`.
        bounds: ``(lo, hi)`` multipliers of the base weights, ``0 < lo <= 1 <= hi``.
        disagreement_ref: the disagreement rate at which the full shift applies (below it, proportionally less).

    Returns:
        ``[K]`` float32 weights, each within ``[lo, hi] * base_k``.

    Raises:
        ValueError: mismatched shapes or bad bounds.
    """
    lo, hi = bounds
    if not 0 < lo <= 1 <= hi or disagreement_ref <= 0:
        raise ValueError(f"bounds must satisfy 0 < lo <= 1 <= hi and disagreement_ref > 0, got {bounds}, "
                         f"{disagreement_ref}")
    if not base.shape == slopes.shape == spreads.shape or base.ndim != 1:
        raise ValueError(f"base, slopes and spreads must be [K], got {tuple(base.shape)}, {tuple(slopes.shape)}, "
                         f"{tuple(spreads.shape)}")
    known = torch.isfinite(slopes) & torch.isfinite(spreads)
    if int(known.sum()) < 2:
        return base.float().clone()
    progress = slopes.double().clamp_min(0) / (spreads.double() + _TINY)
    mean = progress[known].mean()
    target = ((mean + _TINY) / (progress + _TINY)).clamp(lo, hi)
    gate = min(1.0, max(0.0, disagreement) / disagreement_ref)
    mult = torch.where(known, 1.0 + gate * (target - 1.0), torch.ones_like(target))
    return (base.double() * mult).float()


class RewardBalancer:
    """Keeps the last ``window`` steps' reward means, spreads and disagreement and gives the next step's weights.

    Args:
        base (`Tensor` of shape `[K]`): the configured weights.
        mode: ``fixed`` (always ``base``) or ``adaptive``.
        window: steps of history the rule reads; ``base`` until it is full.
        bounds, disagreement_ref: see :func:`adaptive_weights`.
    """

    def __init__(self, base: Tensor, mode: str = "fixed", *, window: int = 5, bounds=(0.25, 4.0),
                 disagreement_ref: float = 0.25):
        if mode not in ("fixed", "adaptive"):
            raise ValueError(f"advantage.balance must be 'fixed' or 'adaptive', got {mode!r}")
        self.base = base.float().clone()
        self.mode, self.window, self.bounds, self.disagreement_ref = mode, window, tuple(bounds), disagreement_ref
        self.means: list[Tensor] = []
        self.spreads: list[Tensor] = []
        self.disagreements: list[float] = []

    def weights(self) -> Tensor:
        """The weights for the next step (``[K]`` float32)."""
        if self.mode == "fixed" or len(self.means) < self.window:
            return self.base.clone()
        spreads = torch.stack(self.spreads).double()
        spread = torch.tensor([nan_mean(spreads[:, k]) for k in range(spreads.shape[1])])
        return adaptive_weights(self.base, reward_slopes(torch.stack(self.means)), spread,
                                sum(self.disagreements) / len(self.disagreements), bounds=self.bounds,
                                disagreement_ref=self.disagreement_ref)

    def observe(self, rewards: Tensor, group_ids: Tensor) -> None:
        """Record one step's gathered rewards ``[N, K]`` (NaN = unscorable) and their groups ``[N]``."""
        if self.mode == "fixed":
            return
        r = rewards.float().cpu()
        self.means.append(torch.tensor([nan_mean(r[:, k]) for k in range(r.shape[1])]))
        self.spreads.append(group_spread(r, group_ids))
        self.disagreements.append(disagreement_rate(r, group_ids))
        del self.means[:-self.window], self.spreads[:-self.window], self.disagreements[:-self.window]

    def state_dict(self) -> dict:
        """The window as JSON: ``{"means": [[K floats]], "spreads": [[K floats]], "disagreements": [floats]}``,
        oldest first; NaN is written as ``null``. Saved with each checkpoint (float32 values round-trip exactly)."""
        return {"means": [_to_json(m) for m in self.means], "spreads": [_to_json(s) for s in self.spreads],
                "disagreements": list(self.disagreements)}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s window (the newest ``window`` steps of it).

        Raises:
            ValueError: a saved row whose length is not the number of rewards (the rewards changed)."""
        k = self.base.numel()
        rows = [*state.get("means", []), *state.get("spreads", [])]
        if any(len(r) != k for r in rows):
            raise ValueError(f"the saved balance window has rows of {sorted({len(r) for r in rows})} rewards, the run "
                             f"has {k}")
        self.means = [_from_json(m) for m in state.get("means", [])][-self.window:]
        self.spreads = [_from_json(s) for s in state.get("spreads", [])][-self.window:]
        self.disagreements = [float(d) for d in state.get("disagreements", [])][-self.window:]


def _to_json(t: Tensor) -> list:
    return [float(v) if math.isfinite(v) else None for v in t.tolist()]


def _from_json(values: list) -> Tensor:
    return torch.tensor([math.nan if v is None else float(v) for v in values], dtype=torch.float32)


__all__ = ["RewardBalancer", "adaptive_weights", "disagreement_rate", "group_spread", "reward_slopes"]
