"""The reward protocol, its output, `build_reward` (names looked up in `REWARDS`, :mod:`psrl.rewards.builtin`) and the
adapter for plain callables.

A reward scores a batch of images against their records. An unscorable sample is ``NaN`` and ``failures[i]`` says
why; a reward never invents a value. One sample's failure never fails the batch: inputs are checked per sample
(:func:`psrl.rewards.images.to_pil_images`, :class:`psrl.rewards.images.ReferenceImages`) and every model call runs
through :func:`psrl.rewards.isolation.per_item`, which retries a batch that raises one item at a time.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from psrl.data.records import Record
from psrl.rewards.builtin import REWARDS


@dataclass
class RewardOutput:
    """``scores [B]`` float32 (NaN = unscorable), ``details`` (name -> per-sample tensor or list, e.g. per-subject
    scores), ``failures`` (reason per sample, ``None`` when scored)."""

    scores: Tensor
    details: dict[str, Any] = field(default_factory=dict)
    failures: list[str | None] = field(default_factory=list)

    def __post_init__(self):
        self.scores = torch.as_tensor(self.scores, dtype=torch.float32).detach().reshape(-1).cpu()
        if not self.failures:
            self.failures = [None] * len(self.scores)
        if len(self.failures) != len(self.scores):
            raise ValueError(f"failures has {len(self.failures)} entries for {len(self.scores)} scores")
        for i, s in enumerate(self.scores.tolist()):
            if math.isnan(s) and self.failures[i] is None:
                self.failures[i] = "unscorable (no reason given)"

    @property
    def failure_rate(self) -> float:
        return sum(f is not None for f in self.failures) / max(len(self.failures), 1)


def to_jsonable(value: Any) -> Any:
    """``value`` (a score, a ``details`` entry) as strict JSON: tensors and numpy values as numbers or lists, NaN
    and inf as ``None``, dict keys as strings, any other object as its ``str``."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().tolist()
    elif hasattr(value, "tolist"):  # numpy arrays and scalars
        value = value.tolist()
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


@runtime_checkable
class Reward(Protocol):
    """``name`` plus ``__call__(images [B,3,H,W] in [0,1], records) -> RewardOutput``."""

    name: str

    def __call__(self, images: Tensor, records: Sequence[Record]) -> RewardOutput: ...


class CallableReward:
    """Wraps a plain ``fn(images, records) -> Tensor[B]`` (or a RewardOutput) into the protocol."""

    def __init__(self, fn: Callable, name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, images: Tensor, records: Sequence[Record]) -> RewardOutput:
        out = self.fn(images, records)
        if isinstance(out, RewardOutput):
            return out
        scores = torch.as_tensor(out, dtype=torch.float32).reshape(-1)
        if scores.numel() != len(records):
            raise ValueError(f"reward {self.name!r} returned {scores.numel()} scores for {len(records)} images")
        failures = ["callable returned NaN" if math.isnan(s) else None for s in scores.tolist()]
        return RewardOutput(scores=scores, failures=failures)


def build_reward(name: str, args: dict | None = None, *, device: str | torch.device = "cpu") -> Reward:
    """Instantiate a registered reward by name (or ``module:attr``) with its config ``args``.

    Registered rewards are classes (or factories) taking ``device=`` plus keyword arguments. A dotted path may also
    point at a plain callable ``(images, records) -> Tensor[B]``, which is wrapped as it is.
    """
    target = REWARDS.get(name)
    args = dict(args or {})
    if isinstance(target, type):
        # registered rewards take the device from the caller; a user class named by path gets only its args
        obj = target(device=device, **args) if name in REWARDS else target(**args)
    else:
        if args:
            raise ValueError(f"reward {name!r} is a plain callable and takes no args, got {sorted(args)}")
        obj = target
    return obj if isinstance(obj, Reward) else CallableReward(obj, name=name)

