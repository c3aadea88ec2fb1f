"""PaCo-GRPO's old policy: a separate copy of the trainable (LoRA) weights that rollouts are sampled with and that
the old log-probs (and old velocities) are recomputed with at update time, decoupled from the trained weights by
an EMA (X-GenGroup/PaCo-RL ``PaCo-GRPO/scripts/train_flux.py@08caac6``: the ``"old"`` adapter and
``return_decay``; the decoupling DiffusionNFT uses, arXiv 2509.16117).

After every GRPO step ``old <- decay * old + (1 - decay) * current`` with ``decay`` from a schedule of the number
of optimizer updates so far. Type 0 copies (decay 0: rollouts use the current weights, Flow-GRPO semantics, and
the first ratio of a step is exactly 1); type 1 is DiffusionNFT's slow start; type 2 stays a copy for 75 updates.
The copy is swapped into the live parameters (no second adapter), so it works for every policy and LoRA layout.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from psrl.rl.ema import swap_values


def _schedule(flat: int, rate: float, cap: float) -> Callable[[int], float]:
    return lambda updates: 0.0 if updates < flat else min((updates - flat) * rate, cap)


DECAY_SCHEDULES: dict[int, Callable[[int], float]] = {
    0: _schedule(0, 0.0, 0.0),         # a plain copy (PaCo's PPO and Guard default)
    1: _schedule(0, 0.001, 0.5),       # min(0.001 n, 0.5) (PaCo's NFT default)
    2: _schedule(75, 0.0075, 0.999),   # min(max(n - 75, 0) * 0.0075, 0.999)
}


def old_policy_decay(updates: int, decay_type: int) -> float:
    """The EMA decay in [0, 1) after ``updates`` optimizer updates under schedule ``decay_type`` (0, 1 or 2).

    Raises:
        ValueError: unknown ``decay_type``.
    """
    if decay_type not in DECAY_SCHEDULES:
        raise ValueError(f"old policy decay_type must be one of {sorted(DECAY_SCHEDULES)}, got {decay_type}")
    return DECAY_SCHEDULES[decay_type](updates)


class OldPolicy:
    """The old weights of ``parameters`` (same dtype and device), swapped in for rollouts and old passes."""

    def __init__(self, parameters: Iterable[nn.Parameter], decay_type: int = 0):
        old_policy_decay(0, decay_type)  # validates the type
        self.parameters = list(parameters)
        self.decay_type = decay_type
        self.shadow = [p.detach().clone() for p in self.parameters]

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        with swap_values(self.parameters, self.shadow):
            yield

    @torch.no_grad()
    def update(self, updates: int) -> float:
        """``old <- d * old + (1 - d) * current`` with ``d = old_policy_decay(updates)``; returns ``d``."""
        d = old_policy_decay(updates, self.decay_type)
        for s, p in zip(self.shadow, self.parameters):
            s.mul_(d).add_(p.detach(), alpha=1 - d)
        return d

    def state_dict(self) -> dict:
        return {"shadow": [s.cpu() for s in self.shadow], "decay_type": self.decay_type}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"old-policy state has {len(state['shadow'])} tensors, the model {len(self.shadow)}")
        for s, saved in zip(self.shadow, state["shadow"]):
            s.copy_(saved.to(s.device, s.dtype))


__all__ = ["DECAY_SCHEDULES", "OldPolicy", "old_policy_decay"]
