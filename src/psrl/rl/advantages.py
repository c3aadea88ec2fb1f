"""Group-relative advantages (GRPO) from per-reward scores, and the registry of advantage modes.

The trainer gathers the rewards of every process, calls :func:`compute_advantages` on the full step (so groups that
span processes are normalised together) and slices its own rows back out.

An advantage mode is a pure function::

    mode(rewards: Tensor[N, K], weights: Tensor[K], group_ids: Tensor[N], cfg: AdvantageConfig,
         trained_steps: tuple[int, ...], num_steps: int) -> Tensor[N, S]

``rewards`` holds one column per configured reward (in config order), ``weights`` their weights, ``group_ids`` the
prompt group of each sample, ``S = len(trained_steps)``: a mode may give each trained step its own advantage (a
step-dependent reward mixture such as Customized-GRPO's TDW; ``trained_steps`` are true denoising indices,
``0`` = noisiest, out of ``num_steps``). The caller guarantees every row is finite and every group in the input has
at least two members; the mode returns unclipped advantages and :func:`compute_advantages` clips them.

A mode may carry an attribute ``unscorable(rewards [N, K], weights [K]) -> list[str | None]``: per sample, why the
mode cannot score it (a negative reward has no geometric mean), or ``None``. :func:`compute_advantages` takes such a
sample out of its group before calling the mode, as it does a NaN reward, and logs the reason.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from psrl.config import ConfigError
from psrl.registry import Registry
from psrl.rewards.aggregate import group_center_scale, spread_is_rounding, terms_magnitude
from psrl.rl.grpo_config import AdvantageConfig

logger = logging.getLogger(__name__)

AdvantageMode = Callable[[Tensor, Tensor, Tensor, AdvantageConfig, tuple, int], Tensor]

ADVANTAGE_MODES = Registry("advantage mode")


def group_normalize(values: Tensor, group_ids: Tensor, std_mode: str = "group", eps: float = 1e-4,
                    magnitude: Tensor | None = None) -> Tensor:
    """``(v - mean_group(v)) / (std + eps)``, per sample ([N] float32): Flow-GRPO's per-prompt stat tracking
    (flow_grpo/stat_tracking.py), through the one group normalisation of every mode,
    :func:`psrl.rewards.aggregate.group_center_scale`.

    Args:
        values (`Tensor` of shape `[N]`): finite scalar rewards.
        group_ids (`Tensor` of shape `[N]`): the prompt group of each sample.
        std_mode (`"group"` | `"global"`): the group's own std, or the std of all ``N`` values (Flow-GRPO's
            ``global_std``, after REINFORCE++). Population std (``ddof=0``), as Flow-GRPO's ``np.std``.
        eps (`float`): added to the std.
        magnitude (`Tensor` of shape `[N]`, optional): the scale of each value's rounding error (for a weighted sum,
            ``sum_k |w_k r_k|``); a group whose spread is within rounding of it
            (:func:`psrl.rewards.aggregate.spread_is_rounding`) gets advantage 0, whatever ``eps``.

    Raises:
        ValueError: ``std_mode`` is neither ``group`` nor ``global``.
    """
    if std_mode not in ("group", "global"):
        raise ValueError(f"std_mode must be 'group' or 'global', got {std_mode!r}")
    return group_center_scale(values, group_ids, unbiased=False, eps=eps, global_std=std_mode == "global",
                              magnitude=magnitude)


def weighted_advantages(rewards: Tensor, weights: Tensor, group_ids: Tensor, cfg: AdvantageConfig,
                        trained_steps: tuple[int, ...], num_steps: int) -> Tensor:
    """Flow-GRPO: ``R = sum_k w_k r_k`` per sample, group-normalised, the same advantage on every trained step."""
    total = rewards.float() @ weights.float()
    adv = group_normalize(total, group_ids, cfg.std_mode, cfg.eps, magnitude=terms_magnitude(rewards, weights))
    return adv[:, None].expand(-1, len(trained_steps)).clone()


ADVANTAGE_MODES.register("weighted", weighted_advantages)
# Reward shaping modes live beside the rewards work (Customized-GRPO / PaCo); resolved lazily on first use.
ADVANTAGE_MODES.register("group_zscore", "psrl.rl.shaped_advantages:group_zscore_advantages")
ADVANTAGE_MODES.register("log_tamed", "psrl.rl.shaped_advantages:log_tamed_advantages")
ADVANTAGE_MODES.register("sars", "psrl.rl.shaped_advantages:sars_advantages")
# PaCo-GRPO's aggregations (X-GenGroup/PaCo-RL@08caac6 PaCo-GRPO/paco_grpo/stat_tracking.py, config/grpo.py)
ADVANTAGE_MODES.register("rank", "psrl.rl.shaped_advantages:rank_advantages")
ADVANTAGE_MODES.register("per_reward_normalized", "psrl.rl.shaped_advantages:per_reward_normalized_advantages")
ADVANTAGE_MODES.register("geometric_mean", "psrl.rl.shaped_advantages:geometric_mean_advantages")
ADVANTAGE_MODES.register("harmonic_mean", "psrl.rl.shaped_advantages:harmonic_mean_advantages")


PER_SUBJECT_COMBINE = ("mean", "min", "weakest")
_WARNED: dict[str, bool] = {}  # warnings given once per process


def per_subject_matrix(lists, n: int, width: int) -> Tensor:
    """A reward's ``details["per_subject"]`` (a list per sample of subject scores, in record order; empty or ``None``
    for an unscored sample) as ``[n, width]`` float32, NaN where a sample has no score for that subject.

    Raises:
        ValueError: ``lists`` does not hold ``n`` entries, or a sample has more than ``width`` subjects.
    """
    out = torch.full((n, width), float("nan"))
    if lists is None:
        return out
    if len(lists) != n:
        raise ValueError(f"per_subject has {len(lists)} entries for {n} samples")
    for i, row in enumerate(lists):
        row = list(row or [])
        if len(row) > width:
            raise ValueError(f"sample {i} has {len(row)} per-subject scores, more than {width}")
        if row:
            out[i, :len(row)] = torch.tensor([float(v) for v in row])
    return out


def stack_per_subject(per_batch: list[list], sizes: list[int]) -> dict[int, Tensor]:
    """``{reward index k: [n, S]}`` for the rewards that reported ``details["per_subject"]`` in any batch, from
    each batch's list of per-reward details (``per_batch[b][k]``: that list or ``None``) and its sample count;
    ``S`` is the most subjects any sample has (at least 1)."""
    num = len(per_batch[0]) if per_batch else 0
    out = {}
    for k in range(num):
        lists = [batch[k] for batch in per_batch]
        if all(x is None for x in lists):
            continue
        width = max([len(row or ()) for x in lists if x is not None for row in x] + [1])
        out[k] = torch.cat([per_subject_matrix(x, n, width) for x, n in zip(lists, sizes)])
    return out


def join_per_subject(parts: list[tuple[int, dict[int, Tensor]]]) -> dict[int, Tensor]:
    """Concatenate the per-process ``(n_p, {k: [n_p, S_p]})`` of :func:`stack_per_subject` in rank order, NaN-padding
    to the widest ``S``; a reward that reported nothing on some process gets NaN rows for that process's samples."""
    keys = sorted({k for _, p in parts for k in p})
    out = {}
    for k in keys:
        width = max(p[k].shape[1] for _, p in parts if k in p)
        rows = []
        for n, p in parts:
            m = p.get(k, torch.full((n, width), float("nan")))
            rows.append(torch.nn.functional.pad(m.float(), (0, width - m.shape[1]), value=float("nan")))
        out[k] = torch.cat(rows)
    return out


def per_subject_scores(per_subject: Tensor, group_ids: Tensor, combine: str, *, eps: float = 1e-4,
                       weakest_weight: float = 2.0) -> Tensor:
    """Per-subject credit (psrl's extension, ``advantage.per_subject``): each subject's score z-scored within its
    prompt group (population std + ``eps``, the one group normalisation :func:`group_normalize`), then combined per
    sample. A sample that nails one subject and loses another keeps the signal of both instead of a mean that hides
    them, and a subject whose scores barely vary in its group no longer counts less than one that varies a lot.

    Args:
        per_subject (`Tensor` of shape `[N, S]`): subject scores (NaN = no such subject, or unscored); the samples of
            a group share a record, so column ``j`` is the same subject throughout a group.
        group_ids (`Tensor` of shape `[N]`).
        combine: ``mean`` (of the subject z-scores), ``min`` (the worst subject's z-score: credit only when every
            subject improves) or ``weakest`` (a weighted mean, the sample's lowest-scoring subject weighted
            ``weakest_weight``, the others 1).

    Returns:
        ``[N]`` float32 combined z-scores; NaN for a sample with no finite subject score.

    Raises:
        ValueError: an unknown ``combine`` or ``weakest_weight < 1``.
    """
    if combine not in PER_SUBJECT_COMBINE:
        raise ValueError(f"per_subject combine must be one of {PER_SUBJECT_COMBINE}, got {combine!r}")
    if weakest_weight < 1:
        raise ValueError(f"weakest_weight must be >= 1, got {weakest_weight}")
    x = per_subject.float()
    ok = torch.isfinite(x)
    z = torch.stack([group_normalize(torch.where(ok[:, j], x[:, j], torch.full_like(x[:, j], float("nan"))),
                                     group_ids, "group", eps) for j in range(x.shape[1])], dim=1)
    z = torch.where(ok, z, torch.full_like(z, float("nan")))
    any_ok = ok.any(dim=1)
    if combine == "min":
        out = torch.where(ok, z, torch.full_like(z, float("inf"))).min(dim=1).values
    else:
        w = ok.float()
        if combine == "weakest":
            weakest = torch.where(ok, x, torch.full_like(x, float("inf"))).argmin(dim=1)
            w[torch.arange(x.shape[0]), weakest] *= weakest_weight
        out = torch.where(ok, z, torch.zeros_like(z)).mul(w).sum(dim=1) / w.sum(dim=1).clamp_min(1e-12)
    return torch.where(any_ok, out, torch.full_like(out, float("nan")))


def apply_per_subject(rewards: Tensor, per_subject: dict[int, Tensor], group_ids: Tensor, cfg: AdvantageConfig
                      ) -> Tensor:
    """The rewards ``[N, K]`` with each column ``k`` in ``per_subject`` replaced by its per-subject credit
    (:func:`per_subject_scores` with ``cfg.per_subject``), expressed back in the reward's own units: its group mean
    plus the combined z-score times its group std, so the reward's configured weight keeps its meaning beside the
    other rewards. A sample unscored by that reward stays NaN. ``cfg.per_subject == "off"`` returns ``rewards``."""
    if cfg.per_subject == "off":
        return rewards
    if not per_subject:
        if not _WARNED.get("per_subject"):
            _WARNED["per_subject"] = True
            logger.warning("advantage.per_subject=%s: no reward reported per-subject scores (details['per_subject'], "
                           "as subject_consistency does); the rewards are used as they are", cfg.per_subject)
        return rewards
    out = rewards.float().clone()
    for k, matrix in per_subject.items():
        combined = per_subject_scores(matrix, group_ids, cfg.per_subject, eps=cfg.eps,
                                      weakest_weight=cfg.per_subject_weakest_weight)
        col = out[:, k]
        for gid in torch.unique(group_ids):
            m = group_ids == gid
            v = col[m]
            good = torch.isfinite(v)
            if int(good.sum()) == 0:
                continue
            mean, std = v[good].mean(), v[good].std(unbiased=False)
            # a scored sample without subject scores keeps its reward as it is
            col[m] = torch.where(good & torch.isfinite(combined[m]), mean + std * combined[m], v)
        out[:, k] = col
    return out


def get_advantage_mode(name: str) -> AdvantageMode:
    """The mode function for ``advantage.mode``; a clear :class:`ConfigError` when unknown or not importable."""
    try:
        fn = ADVANTAGE_MODES.get(name)
    except KeyError as e:
        raise ConfigError(f"bad value for 'advantage.mode': {name!r}; registered modes: "
                          f"{', '.join(ADVANTAGE_MODES.names())}, or a dotted 'module:function'") from e
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"advantage.mode {name!r} is registered but its implementation cannot be imported: {e}") \
            from e
    if not callable(fn):
        raise ConfigError(f"advantage.mode {name!r} resolves to {fn!r}, which is not callable")
    return fn


def check_advantage_config(cfg: AdvantageConfig, weights, num_steps: int = 1) -> None:
    """Fail before a run starts on what a mode would reject at its first step (unknown ``advantage.args``, reward
    columns out of range, negative weights for a geometric mean): run the mode once on a synthetic step of two
    groups of two samples with distinct positive rewards.

    Args:
        cfg: the ``advantage`` config.
        weights (sequence of `float`, length `K`): the rewards' weights in config order.
        num_steps (`int`): denoising steps of a rollout (the synthetic step trains step 0).

    Raises:
        ConfigError: naming ``advantage`` and the mode, with the mode's own reason.
    """
    fn = get_advantage_mode(cfg.mode)
    w = torch.as_tensor(list(weights), dtype=torch.float32)
    rewards = torch.arange(1.0, 5.0)[:, None] + 0.25 * torch.arange(float(w.numel()))[None, :]
    try:
        fn(rewards, w, torch.tensor([0, 0, 1, 1]), cfg, (0,), max(int(num_steps), 1))
    except (ValueError, TypeError, IndexError) as e:
        raise ConfigError(f"advantage (mode {cfg.mode!r}): {e}") from None


@dataclass
class AdvantageResult:
    """``advantages [N, S]`` (0 where not trained), ``trained [N]`` (False for NaN samples and skipped groups),
    and counters/diagnostics for logging."""

    advantages: Tensor
    trained: Tensor
    stats: dict[str, float] = field(default_factory=dict)


def compute_advantages(rewards: Tensor, weights: Tensor, group_ids: Tensor, cfg: AdvantageConfig,
                       trained_steps: tuple[int, ...], num_steps: int,
                       mode: AdvantageMode | None = None) -> AdvantageResult:
    """Advantages of all gathered samples of one step.

    A sample with a NaN (or inf) in any reward column, or one the mode's ``unscorable`` names, leaves its group
    (counted in ``nan_samples``, warned with the reason); a group left with fewer than two valid samples is skipped
    (advantage 0, not trained). The zero-std group ratio is the share of the remaining groups whose weighted reward
    has no spread beyond float rounding
    (:func:`psrl.rewards.aggregate.spread_is_rounding`, the same test every mode applies: such a group's samples
    carry no signal and get advantage 0, except in ``log_tamed``'s ``raw`` compat normalisation).

    Args:
        rewards (`Tensor` of shape `[N, K]`), weights (`Tensor` of shape `[K]`), group_ids (`Tensor` of shape `[N]`).
        cfg: the ``advantage`` config; ``mode`` overrides ``cfg.mode`` with a function.
    """
    if rewards.ndim != 2 or rewards.shape[0] != group_ids.shape[0] or rewards.shape[1] != weights.shape[0]:
        raise ValueError(f"rewards must be [N, K] matching group_ids [N] and weights [K]; got "
                         f"{tuple(rewards.shape)}, {tuple(group_ids.shape)}, {tuple(weights.shape)}")
    rewards = rewards.float().cpu()
    weights = weights.float().cpu()
    group_ids = group_ids.long().cpu()
    n, num_trained = rewards.shape[0], len(trained_steps)
    fn = mode if mode is not None else get_advantage_mode(cfg.mode)
    valid = torch.isfinite(rewards).all(dim=1)
    mode_nan = _mode_unscorable(fn, rewards, weights, valid, cfg.mode)
    valid &= ~mode_nan
    trained = valid.clone()
    skipped_groups = 0
    groups = torch.unique(group_ids)
    for gid in groups:
        member = group_ids == gid
        if int((member & valid).sum()) < 2:
            trained[member] = False
            skipped_groups += 1
    num_invalid = int((~valid).sum())
    if num_invalid > int(mode_nan.sum()):
        logger.warning("%d of %d samples have a NaN/inf reward and leave their group",
                       num_invalid - int(mode_nan.sum()), n)
    if skipped_groups:
        logger.warning("%d of %d groups have fewer than 2 valid samples and are skipped (not trained)",
                       skipped_groups, len(groups))

    advantages = torch.zeros(n, num_trained)
    zero_std, group_stds = 0, []
    if bool(trained.any()):
        adv = fn(rewards[trained], weights, group_ids[trained], cfg, tuple(trained_steps), num_steps)
        adv = torch.as_tensor(adv, dtype=torch.float32).cpu()
        if adv.ndim == 1:
            adv = adv[:, None].expand(-1, num_trained)
        if adv.shape != (int(trained.sum()), num_trained):
            raise ValueError(f"advantage mode {cfg.mode!r} returned shape {tuple(adv.shape)}, expected "
                             f"({int(trained.sum())}, {num_trained})")
        if not bool(torch.isfinite(adv).all()):
            raise ValueError(f"advantage mode {cfg.mode!r} returned non-finite advantages")
        advantages[trained] = adv.clamp(-cfg.clip, cfg.clip)
        total = rewards[trained] @ weights
        magnitude = terms_magnitude(rewards[trained], weights)
        for gid in torch.unique(group_ids[trained]):
            member = group_ids[trained] == gid
            group_stds.append(float(total[member].std(unbiased=False)))
            zero_std += int(spread_is_rounding(total[member], magnitude[member]))
    num_groups_used = len(group_stds)
    stats = {
        "num_samples": float(n),
        "num_trained_samples": float(trained.sum()),
        "nan_samples": float(num_invalid),
        "mode_nan_samples": float(mode_nan.sum()),
        "skipped_groups": float(skipped_groups),
        "zero_std_groups": float(zero_std),
        "zero_std_ratio": zero_std / num_groups_used if num_groups_used else 0.0,
        "reward_std_mean": sum(group_stds) / num_groups_used if num_groups_used else 0.0,
        "adv_abs_mean": float(advantages[trained].abs().mean()) if bool(trained.any()) else 0.0,
        "adv_clipped_frac": float((advantages[trained].abs() >= cfg.clip).float().mean()) if bool(trained.any())
        else 0.0,
    }
    return AdvantageResult(advantages=advantages, trained=trained, stats=stats)


def _mode_unscorable(fn, rewards: Tensor, weights: Tensor, valid: Tensor, name: str) -> Tensor:
    """``[N]`` bool: the finite samples the mode's ``unscorable`` hook rejects (warned with the first reason)."""
    hook = getattr(fn, "unscorable", None)
    if hook is None or not bool(valid.any()):
        return torch.zeros(rewards.shape[0], dtype=torch.bool)
    reasons = hook(rewards, weights)
    out = valid & torch.tensor([why is not None for why in reasons], dtype=torch.bool)
    if bool(out.any()):
        first = int(torch.nonzero(out)[0])
        logger.warning("%d of %d samples cannot be scored by advantage mode %r and leave their group (sample %d: %s)",
                       int(out.sum()), rewards.shape[0], name, first, reasons[first])
    return out
