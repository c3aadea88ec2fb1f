"""Sigma schedules and the choice of which steps are noisy and which are trained. Pure math, no diffusers."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch


def resolution_shift_mu(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096,
                        base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """FLUX's resolution-dependent shift ``mu``: linear in the packed latent sequence length (diffusers'
    ``calculate_shift``), 0.5 at 256 tokens (256 px) and 1.15 at 4096 tokens (1024 px)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + (base_shift - m * base_seq_len)


def shift_sigmas(sigmas: np.ndarray, *, mu: float | None = None, shift: float = 1.0,
                 time_shift_type: Literal["exponential", "linear"] = "exponential") -> np.ndarray:
    """Apply a dynamic (``mu``) or static (``shift``) time shift exactly as ``FlowMatchEulerDiscreteScheduler``."""
    sigmas = np.asarray(sigmas, dtype=np.float32)
    if mu is not None:
        if time_shift_type == "exponential":
            return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1) ** 1.0)
        if time_shift_type == "linear":
            return mu / (mu + (1 / sigmas - 1) ** 1.0)
        raise ValueError(f"time_shift_type must be 'exponential' or 'linear', got {time_shift_type!r}")
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flux_sigmas(num_steps: int, image_seq_len: int | None = None, **shift_kwargs) -> torch.Tensor:
    """The FLUX pipelines' schedule: ``linspace(1, 1/num_steps)`` shifted by ``mu(image_seq_len)`` when a
    sequence length is given (else unshifted), with the terminal 0 appended. Shape ``[num_steps + 1]``, float32."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
    if image_seq_len is not None:
        sigmas = shift_sigmas(sigmas, mu=resolution_shift_mu(image_seq_len, **shift_kwargs))
    return torch.cat([torch.from_numpy(np.asarray(sigmas, dtype=np.float32)), torch.zeros(1)])


TrainSteps = Literal["all_but_last", "all", "first_k", "fast_window", "list"]


@dataclass(frozen=True)
class StepPlan:
    """Which sampling steps add noise (SDE) and which are trained. ``noisy[i]`` is step ``i``, 0 the noisiest."""

    noisy: tuple[bool, ...]
    trained: tuple[int, ...]

    @property
    def num_steps(self) -> int:
        return len(self.noisy)


def plan_steps(num_steps: int, mode: TrainSteps = "all_but_last", *, k: int = 1,
               window_range: tuple[int, int] | None = None, steps: tuple[int, ...] | list[int] | None = None,
               rng: random.Random | None = None) -> StepPlan:
    """Choose noisy and trained steps.

    * ``all_but_last``: every step noisy, all trained but the last (near sigma=0 its Gaussian is so narrow that
      the log-prob overflows; Flow-GRPO's ``timestep_fraction=0.99``).
    * ``all``: every step noisy and trained (only sensible with few steps; the caller asked for it).
    * ``first_k``: every step noisy, the first ``k`` trained.
    * ``fast_window``: Flow-GRPO-Fast. A window of ``k`` consecutive noisy steps starting at
      ``randint(lo, hi - k)`` from ``window_range=(lo, hi)`` (default ``(0, num_steps // 2)``); ODE elsewhere; only
      the window is trained.
    * ``list``: PaCo's sparse noise steps: ``steps`` noisy and trained, ODE elsewhere.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if mode == "all_but_last":
        return StepPlan((True,) * num_steps, tuple(range(max(num_steps - 1, 0))))
    if mode == "all":
        return StepPlan((True,) * num_steps, tuple(range(num_steps)))
    if mode == "first_k":
        if not 1 <= k <= num_steps:
            raise ValueError(f"first_k needs 1 <= k <= num_steps ({num_steps}), got k={k}")
        return StepPlan((True,) * num_steps, tuple(range(k)))
    if mode == "fast_window":
        lo, hi = window_range if window_range is not None else (0, max(num_steps // 2, k))
        if not (0 <= lo and hi <= num_steps and hi - lo >= k >= 1):
            raise ValueError(f"fast_window needs 0 <= lo, hi <= num_steps ({num_steps}) and hi - lo >= k >= 1; "
                             f"got window_range=({lo}, {hi}), k={k}")
        start = (rng or random).randint(lo, hi - k)
        window = tuple(range(start, start + k))
        return StepPlan(tuple(i in window for i in range(num_steps)), window)
    if mode == "list":
        chosen = tuple(sorted(set(steps or ())))
        if not chosen or chosen[0] < 0 or chosen[-1] >= num_steps:
            raise ValueError(f"steps must be a non-empty list of indices in [0, {num_steps}), got {steps!r}")
        return StepPlan(tuple(i in chosen for i in range(num_steps)), chosen)
    raise ValueError(f"unknown train-steps mode {mode!r}; expected one of all_but_last, all, first_k, fast_window, "
                     "list")
