"""Calling the rewards of a GRPO step: one reward on one rollout batch with its failure turned into a message,
and the step's unscorable-sample reasons logged whole. Kept apart from the trainer loop, which only sequences
them."""
from __future__ import annotations

import logging
from collections import Counter

import torch

logger = logging.getLogger(__name__)


def call_reward(reward, rollout):
    """``(RewardOutput, None)``, or ``(None, why)`` when the reward raised or returned the wrong shape."""
    name = getattr(reward, "name", type(reward).__name__)
    try:
        out = reward(rollout.images, rollout.records)
    except torch.OutOfMemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - any reward bug must end the run with its name, not a traceback
        return None, f"reward {name!r} raised {type(e).__name__}: {e}"
    scores = getattr(out, "scores", None)
    if not isinstance(scores, torch.Tensor) or scores.numel() != len(rollout):
        got = scores.numel() if isinstance(scores, torch.Tensor) else type(scores).__name__
        return None, f"reward {name!r} returned {got} scores for {len(rollout)} images"
    return out, None


def log_failure_reasons(per_process: list[dict]) -> None:
    """One warning per reward that could not score some samples this step, with the commonest reasons whole (a
    failure rate alone does not say what to fix)."""
    merged: dict[str, Counter] = {}
    for reasons in per_process:
        for name, counts in reasons.items():
            merged.setdefault(name, Counter()).update(counts)
    for name, counts in merged.items():
        if counts:
            top = "; ".join(f"{n} x {why}" for why, n in counts.most_common(3))
            more = f"; and {len(counts) - 3} other reason(s)" if len(counts) > 3 else ""
            logger.warning("reward %r could not score %d sample(s): %s%s", name, sum(counts.values()), top, more)


__all__ = ["call_reward", "log_failure_reasons"]
