"""Exponential moving average of the trainable (LoRA) parameters, swapped in for evaluation and saving."""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn


@contextlib.contextmanager
def swap_values(parameters: list[nn.Parameter], values: list[torch.Tensor]) -> Iterator[None]:
    """Temporarily copy ``values`` into ``parameters`` (in place, so every module and optimizer keeps its
    references); the originals are restored on exit, also after an exception. Used for the EMA and the old
    policy."""
    backup = [p.detach().clone() for p in parameters]
    with torch.no_grad():
        for v, p in zip(values, parameters):
            p.copy_(v.to(p.dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            for b, p in zip(backup, parameters):
                p.copy_(b)


class ParameterEMA:
    """EMA with Flow-GRPO's warm-up: ``d = min(decay, (1 + n) / (10 + n))``, ``shadow = d * shadow + (1 - d) * p``.

    Updated every ``every`` optimizer updates (call :meth:`after_update` after each one). The shadow is kept in
    float32 on the parameters' device.
    """

    def __init__(self, parameters: Iterable[nn.Parameter], decay: float = 0.9, every: int = 1):
        self.parameters = list(parameters)
        self.decay = decay
        self.every = every
        self.shadow = [p.detach().clone().float() for p in self.parameters]
        self.num_updates = 0
        self.optimizer_updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def after_update(self) -> None:
        self.optimizer_updates += 1
        if self.optimizer_updates % self.every:
            return
        d = self.current_decay()
        for s, p in zip(self.shadow, self.parameters):
            s.mul_(d).add_(p.detach().float(), alpha=1 - d)
        self.num_updates += 1

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Temporarily load the EMA weights into the parameters (restored on exit)."""
        with swap_values(self.parameters, self.shadow):
            yield

    def state_dict(self) -> dict:
        return {"shadow": [s.cpu() for s in self.shadow], "num_updates": self.num_updates,
                "optimizer_updates": self.optimizer_updates, "decay": self.decay, "every": self.every}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"EMA state has {len(state['shadow'])} tensors, the model {len(self.shadow)}")
        for s, saved in zip(self.shadow, state["shadow"]):
            if s.shape != saved.shape:
                raise ValueError(f"EMA tensor shape {tuple(saved.shape)} does not match {tuple(s.shape)}")
            s.copy_(saved.to(s.device))
        self.num_updates = int(state["num_updates"])
        self.optimizer_updates = int(state["optimizer_updates"])
