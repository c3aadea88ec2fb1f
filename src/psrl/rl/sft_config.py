"""Config of a ``psrl sft`` run (PSR stage 1: flow-matching SFT of a LoRA on records with target images).

Layout::

    model: ModelConfig          (psrl.models.config; the same section as a GRPO run)
    sft:   SFTTrainConfig       (below)
    data:  {records, data_root} (psrl.rl.run_config.DataConfig; records must carry a ``target`` image)
    run:   {name, output_dir, tracker, wandb_project}

The run directory, checkpoints (``checkpoints/step-N/lora`` in the diffusers format, usable as a GRPO run's
``model.lora.fuse`` of PSR's stage 2, or its ``model.lora.path`` when rank and alpha match), ``metrics.jsonl`` and
``--resume`` work exactly as for ``psrl train``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal
from pathlib import Path

from psrl.config import ConfigError, check_range, load_config
from psrl.data.records import misplaced_data_root
from psrl.models.config import ModelConfig
from psrl.rl.grpo_config import EmaConfig
from psrl.rl.run_config import DataConfig, RunSection
from psrl.rl.training_config import TrainingConfig


@dataclass
class SFTTrainConfig(TrainingConfig):
    """Optimisation of the SFT stage (and the optimizer, checkpoint and logging keys of
    :class:`~psrl.rl.training_config.TrainingConfig`, with ``lr`` 1e-4).

    Attributes:
        max_steps: optimizer updates.
        batch_size: records per micro-batch on one process.
        gradient_accumulation: micro-batches per update.
        height, width: target images are resized (shorter side) and centre-cropped to this size (PSR: 512).
        guidance_scale: embedded guidance during SFT for guidance-distilled FLUX/Kontext (ignored by true-CFG
            models, whose SFT uses the conditional branch).
        sigma_sampling: how the noise level of each sample is drawn, as diffusers' FLUX/SD3 training examples
            (``compute_density_for_timestep_sampling``): ``logit_normal`` (``sigmoid(N(logit_mean, logit_std))``),
            ``uniform`` or ``mode`` (with ``mode_scale``).
        logit_mean, logit_std, mode_scale: the scheme's parameters (diffusers' defaults 0, 1, 1.29).
        sigma_shift: static shift ``s * u / (1 + (s - 1) u)`` applied to the draw (1 = none, as FLUX's dynamic-shift
            scheduler; SD3's training scheduler uses 3).
        eval_sigmas: fixed noise levels of the deterministic ``loss/fixed`` metric (same samples, same noise every
            time), a low-variance view of progress; empty disables it.
        ema: an EMA of the trained weights (as a GRPO run's ``train.ema``), saved beside them in each checkpoint
            (``lora_ema/``, or ``transformer_ema/`` for ``model.lora: null``); pretraining from scratch uses
            decay ~0.995, every 1.
    """

    max_steps: int = 1000
    batch_size: int = 1
    gradient_accumulation: int = 1
    height: int = 512
    width: int = 512
    guidance_scale: float = 2.5
    sigma_sampling: Literal["logit_normal", "uniform", "mode"] = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    sigma_shift: float = 1.0
    lr: float = 1e-4
    eval_sigmas: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    ema: EmaConfig = field(default_factory=EmaConfig)

    section: ClassVar[str] = "sft"

    def __post_init__(self):
        super().__post_init__()
        check_range(self, ("max_steps", "batch_size", "gradient_accumulation", "height", "width"), 1, section="sft")
        check_range(self, ("logit_std", "sigma_shift"), 0, lo_open=True, section="sft")
        if not all(0.0 < s <= 1.0 for s in self.eval_sigmas):
            raise ValueError(f"sft.eval_sigmas must be in (0, 1], got {self.eval_sigmas}")


@dataclass
class SFTRunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SFTTrainConfig = field(default_factory=SFTTrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunSection = field(default_factory=RunSection)

    def __post_init__(self):
        if not isinstance(self.data.records, str):
            raise ValueError("data.records must be a records JSONL path whose records carry a 'target' image")
        if why := misplaced_data_root(self.model.args, "model.args"):
            raise ValueError(why)


def load_sft_config(path: str | Path, overrides: list[str] | None = None) -> SFTRunConfig:
    """Load an SFT config from YAML with dotted ``--set`` overrides. Relative ``data.records`` / ``data.data_root``
    resolve against the file's folder when they do not exist relative to the working directory."""
    return load_config(SFTRunConfig, path, overrides, paths=("data.records", "data.data_root"))


__all__ = ["ConfigError", "SFTRunConfig", "SFTTrainConfig", "load_sft_config"]
