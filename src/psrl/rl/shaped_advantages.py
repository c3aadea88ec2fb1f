"""Reward-shaping advantage modes (registered in :data:`psrl.rl.advantages.ADVANTAGE_MODES`).

Each mode has the trainer's signature ``(rewards [N, K], weights [K], group_ids [N], cfg: AdvantageConfig,
trained_steps, num_steps) -> [N, S]`` and is a thin adapter over the pure functions of
:mod:`psrl.rewards.aggregate`. Options come from ``advantage.args``:

``group_zscore`` (Customized-GRPO / GDPO: per-reward z-score within each group, then weighted)
    ``unbiased`` (default true: torch's unbiased std, as Customized-GRPO); the std offset is ``advantage.eps``.
``log_tamed`` (PaCo)
    ``threshold`` (``mean`` | ``median`` | number, default ``mean``), ``normalize`` (``group`` | ``global_std`` |
    ``raw``; default follows ``advantage.std_mode``; ``raw`` = the released code, no normalisation),
    ``eps`` (std floor, default 1e-6 as PaCo).
``sars`` (Customized-GRPO: SARS bonus + TDW per trained step)
    ``identity`` / ``prompt``: column indices of the identity and prompt rewards in config order (defaults 0 and 1);
    ``gamma`` (0.4, released config); ``tdw`` (default true: each trained step gets the TDW mixture at its true
    denoising index; false: the config weights of the two columns); ``tdw_compat_loop_counter`` (false; true
    evaluates TDW at the position in ``trained_steps`` like the released code); ``unbiased`` (true).
    Further reward columns, if any, are added as ``w_k * zscore(r_k)``.

PaCo-GRPO's aggregations (X-GenGroup/PaCo-RL@08caac6 PaCo-GRPO/paco_grpo/stat_tracking.py, config/grpo.py):

``rank`` (PaCo's 'rank-grpo')
    each reward replaced by its within-group rank / (n - 1) (ties averaged, rounding-level differences are ties),
    then exactly ``weighted``: ``advantage.std_mode`` and ``advantage.eps`` apply. No options.
``per_reward_normalized`` (PaCo's ``weighted_advantage_sum``)
    ``sum_k w_k (r_k - mean_group) / max(std_k, eps)``, ``std_k`` the group's (``std_mode: group``) or all samples'
    (``global``, PaCo's default) population std of reward k. ``eps`` (std floor, default 1e-6 as PaCo).
``geometric_mean`` / ``harmonic_mean``
    the weighted geometric / harmonic mean across rewards (scipy ``gmean`` / ``hmean`` with the reward weights;
    weights must be >= 0), then group-normalised exactly as ``weighted`` (``std_mode``, ``eps``). ``normalize``:
    ``group`` (default) or ``raw`` (compat: PaCo's released functions return the mean itself as the advantage, not
    group-relative and never negative, so a zero-std group still moves the policy). A sample with a negative reward
    has no mean: it leaves its group with the reason logged (the mode's ``unscorable``), like a NaN reward.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from psrl.rewards import aggregate
from psrl.rl.advantages import group_normalize, weighted_advantages

_SARS_KEYS = {"identity", "prompt", "gamma", "tdw", "tdw_compat_loop_counter", "unbiased"}


def _args(cfg, allowed: set[str], mode: str) -> dict:
    args = dict(getattr(cfg, "args", None) or {})
    unknown = set(args) - allowed
    if unknown:
        raise ValueError(f"advantage.args: unknown option(s) {sorted(unknown)} for mode {mode!r}; "
                         f"allowed: {sorted(allowed)}")
    return args


def _per_step(adv: Tensor, trained_steps: tuple[int, ...]) -> Tensor:
    return adv[:, None].expand(-1, len(trained_steps)).clone()


def group_zscore_advantages(rewards: Tensor, weights: Tensor, group_ids: Tensor, cfg, trained_steps: tuple[int, ...],
                            num_steps: int) -> Tensor:
    args = _args(cfg, {"unbiased"}, "group_zscore")
    adv = aggregate.group_zscore(rewards, weights, group_ids, eps=cfg.eps, unbiased=bool(args.get("unbiased", True)))
    return _per_step(adv, trained_steps)


def log_tamed_advantages(rewards: Tensor, weights: Tensor, group_ids: Tensor, cfg, trained_steps: tuple[int, ...],
                         num_steps: int) -> Tensor:
    args = _args(cfg, {"threshold", "normalize", "eps"}, "log_tamed")
    default_norm = "global_std" if getattr(cfg, "std_mode", "group") == "global" else "group"
    adv = aggregate.log_tamed(rewards, weights, group_ids, threshold=args.get("threshold", "mean"),
                              normalize=args.get("normalize", default_norm), eps=float(args.get("eps", 1e-6)))
    return _per_step(adv, trained_steps)


def sars_advantages(rewards: Tensor, weights: Tensor, group_ids: Tensor, cfg, trained_steps: tuple[int, ...],
                    num_steps: int) -> Tensor:
    args = _args(cfg, _SARS_KEYS, "sars")
    K = rewards.shape[1]
    i_id, i_p = int(args.get("identity", 0)), int(args.get("prompt", 1))
    if not (0 <= i_id < K and 0 <= i_p < K) or i_id == i_p:
        raise ValueError(f"advantage.args: sars needs distinct 'identity' and 'prompt' reward columns in [0, {K}), "
                         f"got identity={i_id}, prompt={i_p}")
    z = aggregate.per_reward_zscore(rewards, group_ids, eps=cfg.eps, unbiased=bool(args.get("unbiased", True)))
    others = [k for k in range(K) if k not in (i_id, i_p)]
    extra = z[:, others] @ weights[others].float() if others else torch.zeros(rewards.shape[0])
    gamma = float(args.get("gamma", 0.4))
    use_tdw = bool(args.get("tdw", True))
    compat = bool(args.get("tdw_compat_loop_counter", False))
    cols = []
    for j, step in enumerate(trained_steps):
        if use_tdw:
            w_id, w_p = aggregate.tdw_weights(j if compat else step, num_steps, compat_loop_counter=compat)
        else:
            w_id, w_p = float(weights[i_id]), float(weights[i_p])
        cols.append(aggregate.sars(z[:, i_id], z[:, i_p], gamma, w_id, w_p, clip=cfg.clip) + extra)
    return torch.stack(cols, dim=1) if cols else torch.zeros(rewards.shape[0], 0)


def rank_advantages(rewards: Tensor, weights: Tensor, group_ids: Tensor, cfg, trained_steps: tuple[int, ...],
                    num_steps: int) -> Tensor:
    _args(cfg, set(), "rank")
    return weighted_advantages(aggregate.group_rank(rewards, group_ids), weights, group_ids, cfg, trained_steps,
                               num_steps)


def per_reward_normalized_advantages(rewards: Tensor, weights: Tensor, group_ids: Tensor, cfg,
                                     trained_steps: tuple[int, ...], num_steps: int) -> Tensor:
    args = _args(cfg, {"eps"}, "per_reward_normalized")
    adv = aggregate.per_reward_normalized(rewards, weights, group_ids, global_std=cfg.std_mode == "global",
                                          std_floor=float(args.get("eps", 1e-6)))
    return _per_step(adv, trained_steps)


def _mean_advantages(mean, mode: str, rewards: Tensor, weights: Tensor, group_ids: Tensor, cfg,
                     trained_steps: tuple[int, ...], num_steps: int) -> Tensor:
    normalize = _args(cfg, {"normalize"}, mode).get("normalize", "group")
    if normalize not in ("group", "raw"):
        raise ValueError(f"advantage.args.normalize for mode {mode!r} must be 'group' or 'raw', got {normalize!r}")
    if normalize == "raw" and cfg.std_mode == "global":
        raise ValueError(f"advantage.std_mode: global has no effect with mode {mode!r} and normalize: raw (the mean "
                         f"itself is the advantage); set std_mode: group")
    m = mean(rewards, weights)
    return _per_step(m if normalize == "raw" else group_normalize(m, group_ids, cfg.std_mode, cfg.eps), trained_steps)


# the mode functions with the trainer's signature, and the samples they cannot score (a negative reward has no
# geometric/harmonic mean; see compute_advantages)
geometric_mean_advantages = partial(_mean_advantages, aggregate.geometric_mean, "geometric_mean")
harmonic_mean_advantages = partial(_mean_advantages, aggregate.harmonic_mean, "harmonic_mean")
geometric_mean_advantages.unscorable = partial(aggregate.mean_failures, kind="geometric")
harmonic_mean_advantages.unscorable = partial(aggregate.mean_failures, kind="harmonic")


# The names the rewards issue asked for; the trainer registers the *_advantages names.
group_zscore = group_zscore_advantages
log_tamed = log_tamed_advantages
sars = sars_advantages
