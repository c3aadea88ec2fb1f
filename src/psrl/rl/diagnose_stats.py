"""The statistics of ``psrl diagnose`` as pure functions: reward spread per reward, the gradient signal test (cosine
between the policy gradients of independent rollout batches against a shuffled-advantage control), and the
median phase time. No model, no trainer; :mod:`psrl.rl.diagnose` feeds them.

The gradient signal test. For each rollout batch ``b`` the diagnosis computes the policy gradient twice: ``r_b`` with
the batch's advantages, ``c_b`` with the advantages shuffled within each group (the control: the same images and
log-probs, the link between a sample and its reward cut). The statistic is the mean cosine over pairs of batches,
:func:`mean_pairwise_cosine`. If the rewards carry a direction the policy can follow, the ``r_b`` share it and their
mean cosine is positive; the ``c_b`` never do. For a batch of ``B`` images whose per-image gradients have mean
``mu`` and covariance ``S``, the expected cosine of two independent batches is about
``|mu|^2 / (|mu|^2 + tr(S) / B) = B / (B + B_simple)``, with ``B_simple = tr(S) / |mu|^2`` the simple noise scale of
McCandlish et al. (arXiv 1812.06162, section 2.2): the cosine is the quantity "raise group_size or groups_per_step"
moves, and it is 0.5 at ``B = B_simple`` (:func:`images_for_cosine`).

Whether the observed cosine is above noise is decided by an exact test, not a normal approximation: with few
batches and LoRA gradients that live in few effective dimensions, pair cosines of pure noise reach +-0.5 and a z-score
is badly calibrated (measured on the tiny model: a random reward's z-score reached 2.6 in one of four sets of 8
batches, a rate a normal null puts at 1 in 200). Under the null
hypothesis "the rewards are independent of the samples within a group" (a reward that returns random numbers), each
batch's pair ``(r_b, c_b)`` is exchangeable: both are the gradient under a uniformly random assignment of the
group's reward values to its samples. So swapping ``r_b`` with ``c_b`` in any set of batches leaves the statistic's
distribution unchanged, and the share of the ``2^K`` swap patterns whose statistic reaches the observed one is an
exact p-value (:func:`swap_test`; a randomization test in Fisher's sense, *The Design of Experiments*, 1935).
The verdict says ``signal`` when ``p <= SIGNAL_ALPHA``: a reward that returns random numbers is called ``signal``
with probability ``SIGNAL_ALPHA`` at most, whatever the model, batch size or number of batches.
"""
from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass

import torch
from torch import Tensor

from psrl.rewards.aggregate import spread_is_rounding
from psrl.rl.image_stats import nan_mean_std

#: The significance level of the gradient signal test: at most 1 in 100 diagnoses of a pure-noise reward says
#: ``signal``. Lower would need more batches to ever say ``signal`` (the smallest p-value with ``K`` batches is
#: ``2^-K``: 0.004 with 8).
SIGNAL_ALPHA = 0.01
#: Swap patterns are enumerated exhaustively up to this many batches (``2^12`` patterns), sampled beyond.
EXACT_SWAP_BATCHES = 12
#: The cosine two independent steps' gradients should reach for a step to follow the reward rather than its noise;
#: used to suggest a step size (``mu^2 = tr(S)`` at 0.5: the signal is as large as the noise).
TARGET_COSINE = 0.5


def shuffle_within_groups(group_ids: Tensor, generator: torch.Generator) -> Tensor:
    """A permutation ``[N]`` (int64) of the sample indices that moves samples only within their group: the
    shuffled-advantage control is ``advantages[perm]``."""
    gid = torch.as_tensor(group_ids).long().cpu()
    perm = torch.arange(gid.numel())
    for g in torch.unique(gid):
        idx = (gid == g).nonzero().flatten()
        perm[idx] = idx[torch.randperm(idx.numel(), generator=generator)]
    return perm


def mean_pairwise_cosine(vectors: Tensor) -> Tensor:
    """Mean of ``cos(v_i, v_j)`` over the ``K (K - 1) / 2`` pairs of rows of ``vectors [..., K, D]`` (computed in
    float64): ``[...]``. A zero row counts as cosine 0 with everything. Raises ``ValueError`` for fewer than 2 rows."""
    if vectors.shape[-2] < 2:
        raise ValueError(f"need at least 2 vectors for a pairwise cosine, got {vectors.shape[-2]}")
    v = vectors.double()
    return _mean_pair_cosine_from_gram(v @ v.transpose(-1, -2))


def _mean_pair_cosine_from_gram(gram: Tensor) -> Tensor:
    """Mean off-diagonal cosine of Gram matrices ``[..., K, K]`` (a zero vector has cosine 0 with everything)."""
    k = gram.shape[-1]
    norm = gram.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()
    inv = torch.where(norm > 0, 1.0 / norm.clamp_min(1e-300), torch.zeros_like(norm))
    cos = gram * inv[..., :, None] * inv[..., None, :]
    return (cos.sum(dim=(-1, -2)) - cos.diagonal(dim1=-2, dim2=-1).sum(dim=-1)) / (k * (k - 1))


def _gram(vectors: Tensor, chunk: int = 1 << 20) -> Tensor:
    """``vectors @ vectors.T`` in float64, ``chunk`` columns at a time (no float64 copy of the whole matrix)."""
    n = vectors.shape[0]
    gram = torch.zeros(n, n, dtype=torch.float64)
    for start in range(0, vectors.shape[1], chunk):
        part = vectors[:, start:start + chunk].double().cpu()
        gram += part @ part.T
    return gram


@dataclass(frozen=True)
class SignalTest:
    """The gradient signal test's result.

    Attributes:
        cosine: mean cosine between the policy gradients of the ``batches`` rollout batches (pairs of batches).
        control_cosine: the same over the shuffled-advantage controls.
        p_value: the exact swap-test p-value of ``cosine`` (1.0 when there is no gradient at all).
        batches: how many batches (``K``; ``K (K - 1) / 2`` pairs).
        patterns: how many swap patterns the p-value counts over (``2^K`` when enumerated; 0 when every gradient
            is zero and there is nothing to test).
        signal: ``p_value <= alpha``.
    """

    cosine: float
    control_cosine: float
    p_value: float
    batches: int
    patterns: int
    signal: bool


def swap_test(real: Tensor, control: Tensor, *, alpha: float = SIGNAL_ALPHA, samples: int = 4095,
              generator: torch.Generator | None = None) -> SignalTest:
    """Is the mean pairwise cosine of ``real [K, D]`` above that of noise? Exact swap test against ``control [K, D]``
    (row ``b`` of each comes from batch ``b``; see the module docstring for why the pairs are exchangeable).

    Every pattern of swapping ``real[b]`` with ``control[b]`` gives a statistic; ``p`` is the share of patterns (all
    ``2^K`` when ``K <= EXACT_SWAP_BATCHES``, else the observed one plus ``samples`` random ones) whose statistic is at
    least the observed one. Gradients that are all zero (every group zero-std or unscorable) give ``cosine`` 0,
    ``p`` 1 and no signal.

    Raises:
        ValueError: shapes differ or ``K < 2``.
    """
    if real.shape != control.shape or real.ndim != 2 or real.shape[0] < 2:
        raise ValueError(f"real and control must both be [K >= 2, D], got {tuple(real.shape)} and "
                         f"{tuple(control.shape)}")
    k = real.shape[0]
    if not bool(real.abs().sum(dim=1).gt(0).any()):
        return SignalTest(0.0, float(mean_pairwise_cosine(control)), 1.0, k, 0, False)
    # every pattern's statistic from one Gram matrix of the 2K gradients (a LoRA gradient may have 1e8 entries)
    gram = _gram(torch.cat([real, control]))
    if k <= EXACT_SWAP_BATCHES:
        masks = torch.tensor(list(itertools.product((False, True), repeat=k)))
    else:
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        masks = torch.cat([torch.zeros(1, k, dtype=torch.bool), torch.rand(samples, k, generator=gen) < 0.5])
    idx = torch.arange(k) + k * masks.long()  # [P, K]: row of ``both`` each pattern takes for batch b
    stats = _mean_pair_cosine_from_gram(gram[idx[:, :, None], idx[:, None, :]])  # [P]
    observed = float(stats[0])  # pattern 0 swaps nothing
    control_cos = float(_mean_pair_cosine_from_gram(gram[k:, k:]))
    # ties within float rounding count as reaching the observed value (the all-real pattern always does)
    p = float((stats >= observed - 1e-12).double().mean())
    return SignalTest(observed, control_cos, p, k, len(masks), p <= alpha)


def images_for_cosine(cosine: float, images_per_step: int, target: float = TARGET_COSINE) -> int | None:
    """Images per step at which two steps' gradients would reach cosine ``target``, from the ``cosine`` ``c``
    measured at ``images_per_step`` ``B``: with ``c = B / (B + B_simple)`` (module docstring), ``B_simple =
    B (1 - c) / c`` and the cosine reaches ``target`` at ``B_simple * target / (1 - target)`` images (``B_simple``
    itself for 0.5). ``images_per_step`` when already there; ``None`` when ``cosine <= 0`` (no signal to scale)."""
    if not cosine > 0:
        return None
    if cosine >= target:
        return images_per_step
    snr = cosine / (1.0 - cosine)
    return int(math.ceil(images_per_step * target / (1.0 - target) / snr))


@dataclass(frozen=True)
class RewardSpread:
    """One reward's spread over the diagnosed groups.

    Attributes:
        mean, std: over all scored samples (population std).
        group_std: mean within-group std (population) over groups with at least two scored samples.
        zero_std_ratio: share of those groups whose scores differ by float rounding only
            (:func:`psrl.rewards.aggregate.spread_is_rounding`): they give this reward no advantage.
        unscorable: share of samples this reward scored NaN.
        groups: groups with at least two scored samples.
    """

    mean: float
    std: float
    group_std: float
    zero_std_ratio: float
    unscorable: float
    groups: int


def reward_spread(scores: Tensor, group_ids: Tensor) -> RewardSpread:
    """:class:`RewardSpread` of one reward's ``scores [N]`` (NaN = unscorable) over the groups ``group_ids [N]``
    (ids unique across batches). NaN fields when nothing was scored."""
    s = scores.detach().double().cpu().flatten()
    gid = torch.as_tensor(group_ids).long().cpu().flatten()
    if s.shape != gid.shape:
        raise ValueError(f"scores [N] and group_ids [N] differ: {tuple(s.shape)} vs {tuple(gid.shape)}")
    ok = torch.isfinite(s)
    mean, std = nan_mean_std(s)
    stds, zero = [], 0
    for g in torch.unique(gid):
        v = s[(gid == g) & ok]
        if v.numel() >= 2:
            stds.append(float(v.std(unbiased=False)))
            zero += int(spread_is_rounding(v))
    nan = math.nan
    return RewardSpread(
        mean=mean, std=std,
        group_std=sum(stds) / len(stds) if stds else nan,
        zero_std_ratio=zero / len(stds) if stds else nan,
        unscorable=float((~ok).double().mean()) if s.numel() else nan,
        groups=len(stds),
    )


def median(values: list[float]) -> float:
    """The median (NaN for an empty list): phase times use it so the first batch's warm-up does not count."""
    return statistics.median(values) if values else math.nan


__all__ = ["EXACT_SWAP_BATCHES", "SIGNAL_ALPHA", "TARGET_COSINE", "RewardSpread", "SignalTest", "images_for_cosine",
           "mean_pairwise_cosine", "median", "reward_spread", "shuffle_within_groups", "swap_test"]
