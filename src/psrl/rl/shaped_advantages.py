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
"""
from __future__ import annotations

import torch
from torch import Tensor

from psrl.rewards import aggregate

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


# The names the rewards issue asked for; the trainer registers the *_advantages names.
group_zscore = group_zscore_advantages
log_tamed = log_tamed_advantages
sars = sars_advantages
