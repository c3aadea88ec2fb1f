"""Config of a policy: which model family, where its weights are, LoRA and memory options."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoraConfig:
    """LoRA adapter on the denoiser.

    Attributes:
        rank: LoRA rank ``r``.
        alpha: ``lora_alpha`` (scale = alpha / rank).
        targets: a preset name (see ``psrl.models.lora.LORA_TARGET_PRESETS``) or an explicit module-name list.
        init: peft ``init_lora_weights`` (``"gaussian"`` as Flow-GRPO, or ``true`` for zero-B init).
        dropout: ``lora_dropout``.
        path: initialise from a saved LoRA (a diffusers-format file or a checkpoint directory), e.g. an SFT result.
    """

    rank: int = 32
    alpha: float = 64.0
    targets: Any = "attn"
    init: Any = "gaussian"
    dropout: float = 0.0
    path: str | None = None

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")


@dataclass
class ModelConfig:
    """Which policy to build.

    Attributes:
        name: policy registry name (``flux``, ``flux_kontext``, ``qwen_image_edit_plus``, ``sd3``) or ``module:Cls``.
        path: hub id or local directory loaded with ``from_pretrained``; ``"tiny"`` builds tiny random-weight
            components in code (offline, deterministic from ``tiny_seed``) for tests and CPU demos.
        dtype: ``float32`` | ``bfloat16`` | ``float16`` for the frozen weights (SDE math is always fp32).
        gradient_checkpointing: recompute activations in the backward pass to save memory.
        max_sequence_length: T5/text-encoder token budget.
        offload_frozen: move text encoders and VAE off the accelerator after use (saves memory on big models).
        lora: the adapter.
        args: policy-specific options (reference resizing, position-id scheme, ...), validated by the policy.
    """

    name: str = "flux"
    path: str = "tiny"
    dtype: str = "float32"
    tiny_seed: int = 0
    gradient_checkpointing: bool = False
    max_sequence_length: int = 512
    offload_frozen: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)
    args: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"model.dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
