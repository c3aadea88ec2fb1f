"""Config of a policy: which model family, where its weights are, LoRA and memory options."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class LoraConfig:
    """LoRA adapter on the denoiser.

    Attributes:
        rank: LoRA rank ``r``.
        alpha: ``lora_alpha`` (scale = alpha / rank).
        targets: a preset name (see ``psrl.models.lora.LORA_TARGET_PRESETS``) or an explicit module-name list.
        init: peft ``init_lora_weights`` (``"gaussian"`` as Flow-GRPO, or ``true`` for zero-B init).
        dropout: ``lora_dropout``.
        path: initialise the trainable adapter from a saved LoRA (a diffusers-format file or a checkpoint
            directory) of the same rank and alpha, e.g. to continue an SFT run with GRPO.
        fuse: LoRAs fused into the frozen base weights before the trainable adapter is added, each a path or
            ``{path, scale}``: PSR's stage 2 trains a fresh rank-64 adapter on the rank-512 SFT result. The fused
            model is also the KL reference. Saved adapters record what was fused under them.
    """

    rank: int = 32
    alpha: float = 64.0
    targets: Any = "attn"
    init: Any = "gaussian"
    dropout: float = 0.0
    path: str | None = None
    fuse: list = field(default_factory=list)

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
        entries = [self.fuse] if isinstance(self.fuse, (str, dict)) else list(self.fuse or [])
        normalised = []
        for i, entry in enumerate(entries):
            if isinstance(entry, str):
                entry = {"path": entry}
            if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or \
                    set(entry) - {"path", "scale"}:
                raise ValueError(f"lora.fuse[{i}] must be a path or {{path, scale}}, got {entry!r}")
            try:
                normalised.append({"path": entry["path"], "scale": float(entry.get("scale", 1.0))})
            except (TypeError, ValueError):
                raise ValueError(f"lora.fuse[{i}].scale must be a number, got {entry.get('scale')!r}") from None
        self.fuse = normalised


@dataclass
class ModelConfig:
    """Which policy to build.

    Attributes:
        name: policy registry name (``flux``, ``flux_kontext``, ``qwen_image_edit_plus``, ``sd3``) or ``module:Cls``.
        path: hub id or local directory loaded with ``from_pretrained``; ``"tiny"`` builds tiny random-weight
            components in code (offline, deterministic from ``tiny_seed``) for tests and CPU demos.
        revision: branch, tag or commit of a hub id ``path`` (``from_pretrained(revision=...)``); the commit it
            resolved to is recorded in the run's env.json. Not for local folders or ``tiny``.
        variant: weight-file variant, e.g. ``fp16`` loads ``diffusion_pytorch_model.fp16.safetensors``
            (``from_pretrained(variant=...)``, model components only). Not for ``tiny``.
        dtype: ``float32`` | ``bfloat16`` | ``float16`` for the frozen weights (SDE math is always fp32).
        gradient_checkpointing: recompute activations in the backward pass to save memory.
        max_sequence_length: T5/text-encoder token budget.
        offload_frozen: move text encoders and VAE off the accelerator after use (saves memory on big models).
        quantization: ``null`` | ``nf4`` | ``int8`` | ``fp8``: load the frozen denoiser (and the T5 / Qwen2.5-VL
            text encoder unless ``offload_frozen``) quantized (bitsandbytes for nf4 / int8, torchao for fp8; CUDA
            only, see ``psrl.models.quantization``); the LoRA stays fp32. Not with ``tiny`` or ``lora.fuse``.
        lora: the adapter; ``null`` for none. A training run (``psrl train`` / ``psrl sft``) with ``lora: null``
            trains every weight of the denoiser (full-parameter fine-tuning; float32 weights, and GRPO needs
            ``train.beta: 0`` since there is no frozen reference); ``psrl generate`` / ``bench`` use the base as is.
        args: policy-specific options (reference resizing, position-id scheme, ...), validated by the policy.
    """

    name: str = "flux"
    path: str = "tiny"
    revision: str | None = None
    variant: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    tiny_seed: int = 0
    gradient_checkpointing: bool = False
    max_sequence_length: int = 512
    offload_frozen: bool = False
    quantization: Literal["nf4", "int8", "fp8"] | None = None
    lora: LoraConfig | None = field(default_factory=LoraConfig)
    args: dict = field(default_factory=dict)

    def __post_init__(self):
        for key in ("revision", "variant"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"model.{key} must be a non-empty string or null, got {value!r}")
            if value is not None and self.path == "tiny":
                raise ValueError(f"model.{key}={value!r} pins Hub weights, but model.path is 'tiny' (built in code); "
                                 f"remove model.{key}")
        if self.quantization is not None and self.path == "tiny":
            raise ValueError(f"model.quantization={self.quantization!r} quantizes weights loaded with "
                             "from_pretrained, but model.path is 'tiny' (built in code); save the tiny pipeline "
                             "with save_pretrained and point model.path at it, or remove model.quantization")
        if self.quantization is not None and self.lora is not None and self.lora.fuse:
            raise ValueError(f"model.quantization={self.quantization!r} cannot be combined with model.lora.fuse "
                             "(fusing writes into the full-precision base weights); fuse into a saved "
                             "full-precision copy of the model and quantize that, or remove one of the two")
