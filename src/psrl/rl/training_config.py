"""The knobs :class:`psrl.rl.base_trainer.BaseTrainer` reads, shared by every trainer's config section.

GRPO's ``train:`` (:class:`psrl.rl.grpo_config.TrainConfig`), ``psrl sft``'s ``sft:`` and the reward model's
``train:`` subclass :class:`TrainingConfig`, as TRL's trainer configs subclass ``transformers.TrainingArguments``:
one vocabulary and one range check for the optimizer, schedule, checkpoints, logging and device. A stage declares a
field again only to change its default (dataclasses keep the field where the base put it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from psrl.config import check_range


@dataclass
class TrainingConfig:
    """Optimizer, checkpoints, logging and device of a training run.

    Defaults follow Flow-GRPO's released configs (arXiv 2505.05470; yifan123/flow_grpo@ac4c86e ``config/base.py``).

    Attributes:
        optimizer: ``adamw`` or ``adamw8bit`` (bitsandbytes, the ``psrl[bnb]`` extra, CUDA; Flow-GRPO offers 8-bit
            Adam).
        lr: AdamW's peak learning rate.
        betas, weight_decay, adam_eps: AdamW's moment decays, decoupled weight decay and epsilon.
        lr_warmup_steps: linear warm-up in optimizer updates (0 = constant LR, as Flow-GRPO).
        max_grad_norm: clip the global grad norm (0 disables).
        seed: seeds the data order, the noise and everything else.
        save_every: checkpoint every this many steps (0 = only at the end).
        save_every_minutes: also checkpoint when this many minutes passed since the last save (0 = off), so a
            preempted run loses minutes, not hours.
        keep_last: checkpoints kept (older ones are deleted; 0 keeps all).
        log_every: write metrics every this many steps.
        device: ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``.
        mixed_precision: ``no`` | ``bf16``: autocast of the forward passes (fp16 would need a loss scaler kept
            consistent across processes; bf16 needs none, and FLUX trains in bf16).
    """

    section: ClassVar[str] = "train"  # the YAML section errors name

    # alike on purpose: a typed field list (every config section has one; a scanner sees their shape alike)
    # the names of psrl.rl.optim.OPTIMIZERS (tests/test_config.py keeps the two in step)
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    adam_eps: float = 1e-8
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0
    seed: int = 42
    save_every: int = 0
    save_every_minutes: float = 0.0
    keep_last: int = 3
    log_every: int = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: Literal["no", "bf16"] = "no"

    def __post_init__(self):
        check_range(self, "log_every", 1, section=self.section)
        check_range(self, ("save_every", "keep_last", "lr_warmup_steps", "save_every_minutes", "max_grad_norm",
                           "weight_decay"), 0, section=self.section)
        check_range(self, "lr", 0, lo_open=True, section=self.section)
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"{self.section}.betas must be in [0, 1), got {list(self.betas)}")
