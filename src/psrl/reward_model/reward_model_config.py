"""Config of a ``psrl reward-model train`` run: LoRA SFT of a Qwen2.5-VL judge on pairwise consistency examples
with PaCo-Reward's weighted first-token loss.

Layout::

    model: JudgeModelConfig     (the base VLM, image limits, LoRA)
    train: RewardModelConfig    (loss, optimisation, schedule, evaluation; the keys BaseTrainer reads)
    data:  PairDataConfig       (pairs JSONL or ShareGPT JSON files, train and held-out)
    run:   {name, output_dir, tracker, wandb_project}   (psrl.rl.run_config.RunSection)

Defaults are the released recipe, X-GenGroup/PaCo-RL@08caac6 ``PaCo-Reward/config/paco_reward_lora.yaml``:
Qwen/Qwen2.5-VL-7B-Instruct, ``lora_rank: 32``, ``lora_target: all``, ``image_max_pixels: 2097152``,
``cutoff_len: 16384``, ``first_token_weight: 0.1``, ``per_device_train_batch_size: 8``,
``gradient_accumulation_steps: 4``, ``learning_rate: 2.0e-4``, ``num_train_epochs: 2.0``,
``lr_scheduler_type: cosine``, ``warmup_ratio: 0.1``, ``bf16: true``; keys it leaves unset take the defaults of
LLaMA-Factory and of transformers' ``TrainingArguments`` (LoRA alpha 2 x rank, dropout 0, ``image_min_pixels``
1024, weight decay 0, Adam betas 0.9/0.999, eps 1e-8, gradient clipping at 1.0, gradient checkpointing on).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from psrl.config import ConfigError, check_range, load_config
from psrl.rl.run_config import RunSection
from psrl.rl.training_config import TrainingConfig

LR_SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


# alike on purpose: typed field lists (one per config section, as grpo_config.py and sft_config.py) look alike to
# a scanner; the knobs BaseTrainer reads keep TrainConfig's names (one vocabulary in every train: section)
@dataclass
class JudgeLoraConfig:
    """The LoRA trained on the judge.

    Attributes:
        rank: LoRA rank (PaCo-Reward: 32).
        alpha: LoRA alpha; empty = 2 x rank (LLaMA-Factory's default).
        dropout: dropout on the LoRA input (LLaMA-Factory's default 0).
        targets: ``all`` (every Linear of the language model, not lm_head or the vision tower: LLaMA-Factory's
            ``lora_target: all``) or a list of module names.
    """

    rank: int = 32
    alpha: float | None = None
    dropout: float = 0.0
    targets: str | list[str] = "all"

    def __post_init__(self):
        check_range(self, "rank", 1, section="model.lora")
        check_range(self, "dropout", 0, 1, hi_open=True, section="model.lora")
        if isinstance(self.targets, str) and self.targets != "all":
            raise ValueError(f"model.lora.targets must be 'all' or a list of module names, got {self.targets!r}")


@dataclass
class JudgeModelConfig:
    """The judge being trained.

    Attributes:
        path: a Qwen2.5-VL folder or hub id (loaded with from_pretrained), or ``tiny`` (random, tests).
        dtype: dtype of the frozen base weights (auto: bf16 on CUDA, fp32 on the CPU); LoRA weights stay fp32.
        image_max_pixels: images larger than this are shrunk (keeping the aspect) before the processor.
        image_min_pixels: images smaller than this are enlarged.
        gradient_checkpointing: recompute activations in the backward pass (less memory, ~30% more time).
        lora: the LoRA.
    """

    path: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    image_max_pixels: int = 2097152
    image_min_pixels: int = 1024
    gradient_checkpointing: bool = True
    lora: JudgeLoraConfig = field(default_factory=JudgeLoraConfig)

    def __post_init__(self):
        if not self.path:
            raise ValueError("model.path is required (a Qwen2.5-VL folder or hub id, or 'tiny')")
        if self.image_max_pixels < 1 or self.image_min_pixels < 0 or self.image_min_pixels > self.image_max_pixels:
            raise ValueError(f"model.image_min_pixels ({self.image_min_pixels}) must be in [0, image_max_pixels "
                             f"({self.image_max_pixels})]")


@dataclass
class RewardModelConfig(TrainingConfig):
    """Loss, optimisation and schedule of the reward-model SFT (and the optimizer, checkpoint and logging keys of
    :class:`~psrl.rl.training_config.TrainingConfig`, with ``lr`` 2e-4, ``weight_decay`` 0).

    Attributes:
        first_token_weight: alpha, the weight of the answer token; each other reply token gets n(1-alpha)/(n-1)
            for a reply of n tokens (PaCo-Reward: 0.1). Empty = plain token-mean cross-entropy.
        num_train_epochs: passes over the training pairs; sets max_steps when that is 0.
        max_steps: optimizer updates (0 = num_train_epochs worth).
        batch_size: pairs per micro-batch on one process (per_device_train_batch_size).
        gradient_accumulation: micro-batches per update.
        cutoff_len: longest example in tokens (prompt with image tokens plus reply); longer ones are refused,
            never truncated.
        lr_scheduler: cosine, linear or constant after the warm-up (transformers' schedules).
        warmup_ratio: share of max_steps spent warming up linearly from 0.
        lr_warmup_steps: warm-up steps; set, it replaces warmup_ratio.
        eval_every: evaluate on the held-out pairs every this many steps (0 = once per epoch); always at the end.
        eval_batch_size: pairs per evaluation forward pass.
        save_merged: at the end also write merged/, the LoRA merged into the base (what vLLM and sglang serve).
    """

    # alike on purpose: a typed field list (every config section has one; a scanner sees their shape alike)
    first_token_weight: float | None = 0.1
    num_train_epochs: float = 2.0
    max_steps: int = 0
    batch_size: int = 8
    gradient_accumulation: int = 4
    cutoff_len: int = 16384
    lr: float = 2.0e-4
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = 0.1
    lr_warmup_steps: int | None = None
    weight_decay: float = 0.0
    eval_every: int = 0
    eval_batch_size: int = 8
    save_merged: bool = True

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "first_token_weight", 0, 1, section="train")
        check_range(self, ("batch_size", "gradient_accumulation", "cutoff_len", "eval_batch_size"), 1, section="train")
        check_range(self, ("max_steps", "eval_every"), 0, section="train")
        if self.max_steps == 0 and self.num_train_epochs <= 0:
            raise ValueError(f"train.num_train_epochs must be > 0 when train.max_steps is 0, got "
                             f"{self.num_train_epochs}")
        check_range(self, "warmup_ratio", 0, 1, hi_open=True, section="train")


@dataclass
class PairDataConfig:
    """The pairwise examples. A file ending in ``.jsonl`` is pairs JSONL (``psrl reward-model pairs`` writes it),
    one ending in ``.json`` is ShareGPT-style JSON (LLaMA-Factory, the released PaCo-Dataset). Every example is
    checked before the run starts (both images decode, the reply starts with Yes or No, it fits cutoff_len).

    Attributes:
        train: the training file(s) (relative paths resolve against the config's folder).
        eval: held-out file(s) for the first-token accuracy; empty = no evaluation.
        data_root: folder the image paths are relative to (default: each file's own folder).
        skip_invalid: train on the valid examples and list the others in skipped_examples.jsonl, instead of
            stopping.
        num_workers: threads that decode the images in the start-up check.
    """

    train: str | list[str] | None = None
    eval: str | list[str] | None = None
    data_root: str | None = None
    skip_invalid: bool = False
    num_workers: int = 4

    def __post_init__(self):
        check_range(self, "num_workers", 1, section="data")

    @staticmethod
    def files(value: str | list[str] | None) -> list[str]:
        return [] if not value else [value] if isinstance(value, str) else list(value)


@dataclass
class RewardModelRunConfig:
    """A ``psrl reward-model train`` run.

    Attributes:
        model: the judge (base VLM and LoRA).
        train: loss, optimisation, schedule and evaluation.
        data: the training and held-out pairs.
        run: where the run goes and how it is tracked.
    """

    model: JudgeModelConfig = field(default_factory=JudgeModelConfig)
    train: RewardModelConfig = field(default_factory=RewardModelConfig)
    data: PairDataConfig = field(default_factory=PairDataConfig)
    run: RunSection = field(default_factory=RunSection)

    def __post_init__(self):
        if not self.data.train:
            raise ValueError("data.train is required: a pairs JSONL or ShareGPT JSON file (or a list of them)")


def load_reward_model_config(path: str | Path, overrides: list[str] | None = None) -> RewardModelRunConfig:
    """Load a reward-model config from YAML with dotted ``--set`` overrides. Relative ``data.train``, ``data.eval``
    and ``data.data_root`` resolve against the file's folder when they do not exist relative to the working
    directory.

    Raises:
        ConfigError: a missing file, an unknown key or a bad value, naming the key and where it came from.
    """
    return load_config(RewardModelRunConfig, path, overrides, paths=("data.train", "data.eval", "data.data_root"))


__all__ = ["ConfigError", "JudgeLoraConfig", "JudgeModelConfig", "LR_SCHEDULERS", "PairDataConfig",
           "RewardModelConfig", "RewardModelRunConfig", "load_reward_model_config"]
