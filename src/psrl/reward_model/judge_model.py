"""The trainable judge: a Qwen2.5-VL model with a peft LoRA, in the shape :class:`psrl.rl.base_trainer.BaseTrainer`
expects of a policy (``module``, ``trainable_parameters()``, ``train(mode)``, ``save_lora(path)``).

``save_lora`` writes a peft adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``), which is what
psrl's judge loads as ``adapter_path`` (``PeftModel.from_pretrained`` then merged) and what the released
PaCo-Reward-7B-Lora is; :meth:`PairwiseJudgeModel.save_merged` writes a plain transformers folder (weights, config,
processor, chat template) that vLLM or sglang serve and psrl's judge loads as ``path``.

LoRA targets (``targets: all``) are LLaMA-Factory's ``lora_target: all`` for a vision-language model with the vision
tower and projector frozen (its defaults): every ``Linear`` of the language model, not ``lm_head``, nothing under
``visual`` (X-GenGroup/PaCo-RL@08caac6 ``PaCo-Reward/LLaMA-Factory/src/llamafactory/model/model_utils/misc.py``
``find_all_linear_modules`` and ``visual.py`` ``patch_target_modules``); its default alpha is twice the rank
(``hparams/finetuning_args.py``).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)


def language_model_linears(model: nn.Module) -> list[str]:
    """Full names of the language model's ``Linear`` layers of a Qwen-VL model (no ``lm_head``, nothing under
    ``visual``): LLaMA-Factory's ``lora_target: all`` with the vision tower frozen."""
    names = [n for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and n and n != "lm_head" and not n.endswith(".lm_head")
             and "visual" not in n.split(".")]
    if not names:
        raise ValueError(f"{type(model).__name__} has no language-model Linear layers to adapt")
    return sorted(names)


def load_base(path: str, device, dtype: torch.dtype):
    """``(model, processor)`` of a Qwen-VL judge on ``device`` in eval mode, loaded by psrl's judge loader
    (:func:`psrl.rewards.vlm.transports.load_vlm`: ``tiny`` or ``from_pretrained``). Raises ModelLoadError naming
    the path."""
    from psrl.rewards.vlm.transports import load_vlm

    model, processor = load_vlm(path, dtype, "reward model")
    return model.to(device, dtype).eval(), processor


def save_processor(processor, path: str | Path) -> None:
    """``processor.save_pretrained(path)`` under the name of its transformers class: psrl's image-only Qwen
    processors (:mod:`psrl.models.qwen_processor`, used when torchvision is missing) are subclasses that
    ``AutoProcessor``, vLLM and sglang do not know, and ``AutoProcessor`` given an unknown ``processor_class``
    silently returns the bare tokenizer."""
    import json

    processor.save_pretrained(str(path))
    stock = next(c.__name__ for c in type(processor).__mro__ if c.__module__.startswith("transformers."))
    for name in ("processor_config.json", "tokenizer_config.json"):
        f = Path(path) / name
        if f.is_file():
            data = json.loads(f.read_text())
            if data.get("processor_class") not in (None, stock):
                data["processor_class"] = stock
                f.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


class PairwiseJudgeModel:
    """A Qwen-VL judge with a trainable LoRA. Built empty from its config; :meth:`load` fills it on a device (the
    trainer calls it once the accelerator has chosen the device).

    Args:
        cfg: :class:`psrl.reward_model.reward_model_config.JudgeModelConfig`.
        components: ``(model, processor)`` already built (benchmarks with random real-size weights); they replace
            loading ``cfg.path`` and are moved to the device and dtype.
    """

    def __init__(self, cfg, components=None):
        self.cfg = cfg
        self.components = components
        self.module = None
        self.processor = None
        self.yes_id = self.no_id = None
        self.dtype = None

    @property
    def loaded(self) -> bool:
        return self.module is not None

    def load(self, device) -> "PairwiseJudgeModel":
        """Load the base model and processor, freeze it, add the LoRA (fp32 weights whatever the base dtype).

        Raises:
            ModelLoadError: the model cannot be loaded or its tokenizer has no single-token Yes / No.
            ValueError: a LoRA target that matches no layer.
        """
        from peft import LoraConfig, get_peft_model

        from psrl.models.lora import resolve_target_modules
        from psrl.rewards.loading import resolve_dtype
        from psrl.rewards.vlm.transports import single_token_id

        cfg = self.cfg
        dtype = self.dtype = resolve_dtype(cfg.dtype, device)
        if self.components is not None:
            model, processor = self.components
            model = model.to(device, dtype).eval()
            self.components = None
        else:
            model, processor = load_base(cfg.path, device, dtype)
        tok = processor.tokenizer
        self.yes_id = single_token_id(tok, "Yes", f"reward model {cfg.path!r}")
        self.no_id = single_token_id(tok, "No", f"reward model {cfg.path!r}")
        lora = cfg.lora
        targets = (language_model_linears(model) if lora.targets == "all"
                   else resolve_target_modules(model, list(lora.targets)))
        model.requires_grad_(False)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        peft_cfg = LoraConfig(r=lora.rank, lora_alpha=lora.alpha if lora.alpha is not None else 2 * lora.rank,
                              lora_dropout=lora.dropout, target_modules=targets)
        self.module = get_peft_model(model, peft_cfg)
        for name, p in self.module.named_parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()  # LoRA master weights in fp32: bf16 would lose small AdamW updates
        self.module.eval()
        tok.padding_side = "right"
        self.processor = processor
        n = sum(p.numel() for p in self.trainable_parameters())
        logger.info("reward model %s (%s): LoRA rank %d on %d layers, %d trainable parameters", cfg.path, dtype,
                    lora.rank, len(targets), n)
        return self

    # ------------------------------------------------------------------ BaseTrainer's policy interface
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> None:
        self.module.train(mode)

    def save_lora(self, path: str | Path) -> None:
        """The peft adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) for ``adapter_path``."""
        self.module.save_pretrained(str(path))

    # ------------------------------------------------------------------ forward and export
    def logits(self, encoded) -> torch.Tensor:
        """Logits ``[B, hi - lo + 1, V]`` of the positions ``encoded.lo .. encoded.hi`` only: the reply's window
        (the prompt's logits are never needed, and at 152k vocabulary entries they are most of the memory)."""
        keep = torch.arange(encoded.lo, encoded.hi + 1, device=encoded.labels.device)
        out = self.module(**encoded.inputs, logits_to_keep=keep, use_cache=False)
        return out.logits

    def save_merged(self, path: str | Path) -> Path:
        """Merge the LoRA into the base and write a transformers folder (safetensors weights, config, processor
        and chat template) that vLLM / sglang serve and psrl's judge loads as ``path``. Merges in place: call it
        last (the LoRA is gone from :attr:`module` afterwards)."""
        path = Path(path)
        merged = self.module.merge_and_unload()
        merged.config.use_cache = True  # switched off for gradient checkpointing; a served model wants its cache
        merged.save_pretrained(str(path), safe_serialization=True)
        save_processor(self.processor, path)
        self.module = None
        return path


def merge_adapter(base: str, adapter: str | Path, out: str | Path, *, dtype: str = "auto",
                  device: str = "cpu") -> Path:
    """Merge a peft adapter (a trained ``adapter/`` or a checkpoint's ``lora/``) into its base judge and write the
    transformers folder vLLM / sglang serve (``psrl reward-model merge``).

    Raises:
        ModelLoadError: the base or the adapter cannot be loaded.
    """
    from peft import PeftModel

    from psrl.rewards.loading import load_pretrained, resolve_dtype

    model, processor = load_base(base, device, resolve_dtype(dtype, device))
    merged = load_pretrained("reward model adapter", str(adapter),
                             lambda p: PeftModel.from_pretrained(model, p).merge_and_unload())
    out = Path(out)
    merged.save_pretrained(str(out), safe_serialization=True)
    save_processor(processor, out)
    return out


__all__ = ["PairwiseJudgeModel", "language_model_linears", "load_base", "merge_adapter", "save_processor"]
