"""How a rollout or a generation is sampled: the typed config the sampling math (:func:`psrl.sampling.plan_steps`,
:func:`psrl.sampling.sde_step_with_logprob`) and every policy read. Pure data, no torch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from psrl.config import check_range


# alike on purpose: a typed field list, the shape of every config section
@dataclass
class SamplingConfig:
    """How a rollout or a generation is sampled.

    Attributes:
        num_steps: denoising steps.
        height, width: output size in pixels.
        guidance_scale: FLUX distilled guidance (embedded) or true CFG scale, as the policy uses it.
        noise_level: SDE noise ``a`` (0 = ODE).
        sde_kind: ``"sde"`` (Flow-GRPO) or ``"cps"`` (coefficients-preserving).
        train_steps: which steps are noisy and trained (see :func:`psrl.sampling.plan_steps`).
        train_k: ``k`` for ``first_k`` / ``fast_window``.
        window_range: where a ``fast_window`` may start, ``[lo, hi)``; ``None`` = ``(0, num_steps // 2)``.
        noise_steps: explicit step list for ``train_steps: list`` (PaCo's sparse noise steps).
        num_noise_steps: with ``train_steps: list``, draw this many of ``noise_steps`` at random each GRPO step
            (seeded by the run seed and the step, the same on every process; PaCo's ``num_noise_steps``).
        log_prob_reduce: ``"mean"`` (Flow-GRPO, default) or ``"sum"`` over latent dims.
        same_noise_per_group: start every member of a group from the same initial noise.
        cps_compat: Flow-GRPO's constant-free CPS log-prob instead of the true Gaussian one.
    """

    num_steps: int = 10
    height: int = 512
    width: int = 512
    guidance_scale: float = 3.5
    noise_level: float = 0.7
    sde_kind: Literal["sde", "cps"] = "sde"
    train_steps: Literal["all_but_last", "all", "first_k", "fast_window", "list"] = "all_but_last"
    train_k: int = 1
    window_range: list[int] | None = None
    noise_steps: list[int] | None = None
    num_noise_steps: int | None = None
    log_prob_reduce: Literal["mean", "sum"] = "mean"
    same_noise_per_group: bool = False
    cps_compat: bool = False

    def __post_init__(self):
        check_range(self, ("num_steps", "height", "width"), 1)
        check_range(self, "noise_level", 0)
        if self.num_noise_steps is not None and (self.train_steps != "list" or not self.noise_steps
                                                 or not 1 <= self.num_noise_steps <= len(self.noise_steps)):
            raise ValueError(f"num_noise_steps ({self.num_noise_steps}) needs train_steps: list and 1 <= "
                             f"num_noise_steps <= len(noise_steps) ({self.noise_steps})")
