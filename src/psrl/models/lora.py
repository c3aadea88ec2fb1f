"""LoRA on a denoiser through peft: documented target presets, add, save and load in the diffusers format.

Saved files are what ``diffusers`` writes and reads: ``pytorch_lora_weights.safetensors`` with keys
``transformer.<module path>.lora_A.weight`` / ``.lora_B.weight`` and the peft ``LoraConfig`` (rank, alpha, targets)
in the ``lora_adapter_metadata`` header, so ``FluxPipeline.load_lora_weights(path)`` (and the other pipelines'
loaders) reproduce the trained policy exactly, alpha/rank scaling included.
"""
from __future__ import annotations

import fnmatch
import json
import logging
import os
import types
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from psrl.errors import ModelLoadError
from psrl.fileio import atomic_path, step_dirs
from psrl.models.config import LoraConfig

logger = logging.getLogger(__name__)

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
LORA_METADATA_KEY = "lora_adapter_metadata"  # diffusers' header key for the serialized peft LoraConfig
FUSED_METADATA_KEY = "psrl_fused_loras"  # LoRAs fused into the base before this adapter was trained

_ATTN = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
_FF = ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
       # Qwen-Image names its two streams' feed-forwards img_mlp / txt_mlp
       "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2")
_SINGLE = ("proj_mlp", "single_transformer_blocks.*.proj_out")

#: Target-module presets. Each entry matches a module whose full name equals it or ends with ``"." + entry``;
#: entries with ``*`` are glob patterns over full names. Entries of a preset that a model lacks are skipped.
#:
#: * ``attn``: the attention projections of both streams, ``to_q/k/v``, ``to_out.0``, ``add_q/k/v_proj``,
#:   ``to_add_out`` (Flow-GRPO's SD3/FLUX LoRA). In FLUX this also adapts the single blocks' ``to_q/k/v``.
#: * ``attn_ff``: ``attn`` plus the feed-forward layers of both streams, ``ff.net.0.proj``, ``ff.net.2``,
#:   ``ff_context.net.0.proj``, ``ff_context.net.2`` (PaCo's FLUX / Kontext LoRA; ``img_mlp``/``txt_mlp`` in
#:   Qwen-Image).
#: * ``attn_ff_single``: ``attn_ff`` plus FLUX's single-stream blocks' MLP input ``proj_mlp`` and their fused
#:   output projection ``single_transformer_blocks.*.proj_out`` (not the model's final ``proj_out``), so every
#:   feature-computing linear of every block is adapted.
LORA_TARGET_PRESETS: dict[str, tuple[str, ...]] = {
    "attn": _ATTN,
    "attn_ff": _ATTN + _FF,
    "attn_ff_single": _ATTN + _FF + _SINGLE,
}


def _matches(name: str, entry: str) -> bool:
    if any(ch in entry for ch in "*?["):
        return fnmatch.fnmatchcase(name, entry)
    return name == entry or name.endswith("." + entry)


def resolve_target_modules(module: nn.Module, targets) -> list[str]:
    """Full names of the ``nn.Linear`` modules of ``module`` that ``targets`` (a preset name or a list) selects.

    Raises:
        ValueError: an unknown preset name, an explicit entry that matches nothing, or nothing matched at all.
    """
    if isinstance(targets, str):
        if targets not in LORA_TARGET_PRESETS:
            raise ValueError(f"lora.targets {targets!r} is not a preset; expected one of "
                             f"{sorted(LORA_TARGET_PRESETS)} or a list of module names")
        entries, explicit = LORA_TARGET_PRESETS[targets], False
    else:
        entries, explicit = tuple(str(t) for t in targets), True
    linear_names = [n for n, m in module.named_modules() if isinstance(m, nn.Linear) and n]
    chosen: list[str] = []
    for entry in entries:
        hits = [n for n in linear_names if _matches(n, entry)]
        if explicit and not hits:
            raise ValueError(f"lora.targets entry {entry!r} matches no linear layer of {type(module).__name__}")
        chosen.extend(h for h in hits if h not in chosen)
    if not chosen:
        raise ValueError(f"lora.targets {targets!r} matches no linear layer of {type(module).__name__}")
    return sorted(chosen)


def add_lora(module: nn.Module, cfg: LoraConfig) -> list[str]:
    """Freeze ``module`` and add a peft LoRA adapter (diffusers ``add_adapter``). LoRA weights are kept in fp32
    whatever the base dtype, so optimizer updates are not lost to bf16 rounding. Returns the adapted module names."""
    from peft import LoraConfig as PeftLoraConfig

    module.requires_grad_(False)
    targets = resolve_target_modules(module, cfg.targets)
    peft_cfg = PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights=cfg.init,
                              target_modules=targets, lora_dropout=cfg.dropout)
    module.add_adapter(peft_cfg)
    _make_lora_trainable_fp32(module)
    logger.info("LoRA rank %d alpha %g on %d modules (%d trainable parameters)", cfg.rank, cfg.alpha, len(targets),
                sum(p.numel() for p in module.parameters() if p.requires_grad))
    return targets


def _linear_in_input_dtype(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    bias = None if self.bias is None else self.bias.to(x.dtype)
    return nn.functional.linear(x, self.weight.to(x.dtype), bias)


def compute_lora_in_input_dtype(module: nn.Module) -> None:
    """Make the LoRA matmuls run in the activations' dtype (bf16 next to a bf16 base) while the LoRA weights stay
    fp32 master weights: each ``lora_A``/``lora_B`` linear casts its (small) weight to the input dtype, and peft's
    own cast of the (large) input to the weight dtype is switched off. Without this a bf16 model upcasts every
    adapted activation to fp32 (measured ~2x the LoRA cost of diffusers' bf16 LoRA on an H100). Gradients still
    reach the fp32 weights; for an fp32 base nothing changes. Autocast is avoided on purpose: it would also move the
    base model's norms to fp32 and make rollouts differ from the diffusers pipeline."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for layer in module.modules():
        if not isinstance(layer, BaseTunerLayer):
            continue
        layer.cast_input_dtype_enabled = False
        for attr in ("lora_A", "lora_B"):
            for linear in getattr(layer, attr, {}).values():
                if isinstance(linear, nn.Linear):
                    linear.forward = types.MethodType(_linear_in_input_dtype, linear)


def _make_lora_trainable_fp32(module: nn.Module) -> None:
    for name, param in module.named_parameters():
        if "lora_" in name:
            param.data = param.data.float()
            param.requires_grad_(True)
    compute_lora_in_input_dtype(module)


def has_lora(module: nn.Module) -> bool:
    return bool(getattr(module, "peft_config", None))


def tuner_layers(module: nn.Module) -> list[nn.Module]:
    """The peft tuner (LoRA) layers inside ``module``, found at first use and cached on it: policies add their LoRA
    layers during set-up only, before the first reference pass."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    cached = module.__dict__.get("_psrl_tuner_layers")
    if cached is None:
        cached = [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
        if any(not hasattr(m, "_disable_adapters") for m in cached):
            raise RuntimeError("this peft version's tuner layers have no _disable_adapters switch; pin peft>=0.17")
        module.__dict__["_psrl_tuner_layers"] = cached
    return cached


def lora_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights with peft's adapter-free names (``blocks.0.attn.to_q.lora_A.weight``), detached, CPU."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().to("cpu").contiguous() for k, v in get_peft_model_state_dict(module).items()}


def lora_header(peft_config, prefix: str) -> dict[str, str]:
    """The safetensors header diffusers writes with a LoRA: ``format`` and the peft ``LoraConfig`` (rank, alpha,
    targets, ...) as JSON under ``lora_adapter_metadata``, each key prefixed ``<prefix>.``."""
    meta = {f"{prefix}.{k}": sorted(v) if isinstance(v, set) else v for k, v in peft_config.to_dict().items()}
    return {"format": "pt", LORA_METADATA_KEY: json.dumps(meta, indent=2, sort_keys=True, default=str)}


def lora_file(path: str | os.PathLike) -> Path:
    """Where to *write* a LoRA given ``path``: the file itself, or ``<dir>/pytorch_lora_weights.safetensors``.
    To *read* one, use :func:`resolve_lora_path` (which also understands checkpoint and run folders)."""
    p = Path(path)
    return p / LORA_WEIGHT_NAME if p.is_dir() or not p.suffix else p


#: inside a checkpoint ``step-N/``, the LoRA folders in the order a reader prefers them: the EMA weights are what
#: evaluation during training used (and what a run reports), the raw weights when no EMA was kept
CHECKPOINT_LORA_DIRS = ("lora_ema", "lora")
def _checkpoint_lora(step_dir: Path) -> Path | None:
    """The preferred LoRA weights file of a checkpoint ``step-N/`` folder, or ``None``."""
    for sub in CHECKPOINT_LORA_DIRS:
        f = step_dir / sub / LORA_WEIGHT_NAME
        if f.is_file():
            return f
    return None


def _newest_checkpoint_lora(checkpoints: Path) -> Path | None:
    """The LoRA of the newest *complete* ``step-N`` under ``checkpoints/`` (``state.json`` is written last, so a
    folder without it, or without LoRA weights, was cut short by a crash or a prune); skipped ones are logged."""
    for _, d in reversed(step_dirs(checkpoints)):
        f = _checkpoint_lora(d)
        if f is not None and (d / "state.json").is_file():
            return f
        logger.warning("skipping incomplete checkpoint %s (%s)", d,
                       "no state.json" if f is not None else "no LoRA weights")
    return None


def resolve_lora_path(path: str | os.PathLike) -> Path:
    """The one rule by which every command (``psrl generate``, ``psrl bench generate``, ``psrl lora``,
    ``model.lora.path`` and ``model.lora.fuse``) turns a LoRA argument into its weights file, in this order:

    1. a file: itself (``.../pytorch_lora_weights.safetensors`` or any diffusers-format ``.safetensors``);
    2. a folder holding ``pytorch_lora_weights.safetensors`` (a checkpoint's ``lora/``, ``psrl lora combine``'s
       output, a diffusers LoRA folder): that file;
    3. a checkpoint folder ``runs/<run>/checkpoints/step-N``: its ``lora_ema/`` when the run kept an EMA (the
       weights its evaluation used), else its ``lora/``;
    4. a run folder ``runs/<run>`` or its ``checkpoints/`` folder: the newest complete checkpoint, as in 3.

    Raises:
        ModelLoadError: nothing above matches; the message names the path and what was looked for.
    """
    p = Path(path)
    if p.is_file():
        return p
    if not p.exists():
        raise ModelLoadError(f"cannot load LoRA: {str(path)!r} does not exist")
    if not p.is_dir():
        raise ModelLoadError(f"cannot load LoRA: {str(path)!r} is neither a file nor a folder")
    if (p / LORA_WEIGHT_NAME).is_file():
        return p / LORA_WEIGHT_NAME
    found = _checkpoint_lora(p)
    if found is not None:
        return found
    for checkpoints in (p / "checkpoints", p):
        if step_dirs(checkpoints):
            found = _newest_checkpoint_lora(checkpoints)
            if found is None:
                raise ModelLoadError(f"cannot load LoRA: {str(path)!r} has no complete checkpoint (step-N with "
                                     f"state.json and {'/ or '.join(CHECKPOINT_LORA_DIRS)}/{LORA_WEIGHT_NAME})")
            logger.info("LoRA %s -> %s", path, found)
            return found
    raise ModelLoadError(f"cannot load LoRA: folder {str(path)!r} has no {LORA_WEIGHT_NAME}, no "
                         f"{'/ or '.join(CHECKPOINT_LORA_DIRS)}/ (a checkpoint step-N) and no checkpoints/step-N "
                         f"(a run folder)")


def lora_fingerprint(file: str | os.PathLike) -> str:
    """SHA-256 of a LoRA file's bytes: the identity under which a fused LoRA is recorded, so a copied or moved
    file is still recognised and another file with the same name is not (streamed; ~1 s per GB)."""
    import hashlib

    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_fused(entries: list[dict]) -> str:
    return ", ".join(f"{e['path']} (scale {e.get('scale', 1.0):g})" for e in entries) if entries else "nothing"


def save_lora_weights(module: nn.Module, path: str | os.PathLike, *, prefix: str = "transformer") -> Path:
    """Write the adapter of ``module`` in the diffusers format, atomically (temp file then rename).

    ``path`` is a directory (``pytorch_lora_weights.safetensors`` is written inside) or a ``.safetensors`` file.
    """
    if not has_lora(module):
        raise ValueError("the module has no LoRA adapter to save")
    tensors = {f"{prefix}.{k}": v for k, v in lora_state_dict(module).items()}
    header = lora_header(module.peft_config[next(iter(module.peft_config))], prefix)
    if getattr(module, "_psrl_fused_loras", None):
        # the adapter is relative to a base with these LoRAs fused in; diffusers ignores this key
        header[FUSED_METADATA_KEY] = json.dumps(module._psrl_fused_loras)
    return write_lora_file(tensors, header, path)


def write_lora_file(tensors: dict[str, torch.Tensor], header: dict[str, str], path: str | os.PathLike) -> Path:
    """Write a safetensors LoRA file atomically (temp file then rename) to ``path`` (a directory or a file)."""
    from safetensors.torch import save_file

    target = lora_file(path)
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return target


def read_lora_file(path: str | os.PathLike, *, shapes_only: bool = False) -> tuple[Path, dict, dict]:
    """``(file, tensors, adapter metadata)`` of the LoRA that ``path`` names (see :func:`resolve_lora_path`);
    ``shapes_only``: each tensor's shape (a tuple) instead of the tensor, read from the header alone.

    Raises:
        ModelLoadError: no LoRA at ``path``, or the file is not readable safetensors.
    """
    from safetensors import safe_open

    file = resolve_lora_path(path)
    try:
        with safe_open(str(file), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: tuple(f.get_slice(k).get_shape()) if shapes_only else f.get_tensor(k)
                       for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ModelLoadError(f"cannot read LoRA file {str(file)!r}: {exc}") from exc
    meta = json.loads(header[LORA_METADATA_KEY]) if LORA_METADATA_KEY in header else {}
    if FUSED_METADATA_KEY in header:
        meta[FUSED_METADATA_KEY] = json.loads(header[FUSED_METADATA_KEY])
    return file, tensors, meta


def lora_config_for_file(base: LoraConfig | None, path: str | os.PathLike, *,
                         prefix: str = "transformer") -> tuple[LoraConfig, Path]:
    """``(adapter config, weights file)`` that load the LoRA ``path`` names exactly, for commands that only
    generate with it (``psrl generate --lora``, ``psrl bench generate --lora``): whatever rank the run config says,
    a checkpoint of that run, an SFT LoRA or a ``psrl lora combine`` result (ranks stacked) all load. Rank and alpha
    come from the file's peft header (header-less files: rank from the shapes, alpha = rank, as diffusers loads
    them), the adapted layers from its keys; ``fuse`` is kept from ``base`` and ``path`` cleared (the caller loads
    the file). ``base`` None (a config with ``model.lora: null``, e.g. a base model's) starts from the defaults.
    Only the header is read.

    Raises:
        ModelLoadError: no LoRA at ``path``, no ``prefix`` weights, per-layer ranks, or a DoRA/rsLoRA adapter (which
            :class:`~psrl.models.config.LoraConfig` cannot express).
    """
    import dataclasses

    file, shapes, meta = read_lora_file(path, shapes_only=True)
    head, tail = prefix + ".", ".lora_A.weight"
    ranks = {k[len(head):-len(tail)]: shape[0] for k, shape in shapes.items()
             if k.startswith(head) and k.endswith(tail)}
    if not ranks:
        raise ModelLoadError(f"LoRA file {str(file)!r} has no {prefix!r} LoRA weights")
    own = {k[len(head):]: v for k, v in meta.items() if k.startswith(head)}
    for key in ("use_dora", "use_rslora", "rank_pattern", "alpha_pattern"):
        if own.get(key):
            raise ModelLoadError(f"LoRA file {str(file)!r} uses {key}, which psrl's model.lora cannot express")
    if len(set(ranks.values())) != 1:
        raise ModelLoadError(f"LoRA file {str(file)!r} has per-layer ranks {sorted(set(ranks.values()))}; only one "
                             f"rank per file is supported")
    rank = int(own.get("r", next(iter(ranks.values()))))
    alpha = float(own.get("lora_alpha", rank))
    cfg = dataclasses.replace(base if base is not None else LoraConfig(), rank=rank, alpha=alpha,
                              targets=sorted(ranks), path=None)
    return cfg, file


def _peft_config_from_metadata(meta: dict, prefix: str, tensors: dict[str, torch.Tensor]):
    from peft import LoraConfig as PeftLoraConfig

    own = {k[len(prefix) + 1:]: v for k, v in meta.items() if k.startswith(prefix + ".")}
    if own:
        allowed = set(PeftLoraConfig.__dataclass_fields__)
        return PeftLoraConfig(**{k: v for k, v in own.items() if k in allowed})
    # No header (a file written by other tools): rank from the shapes, alpha = rank (scale 1), as diffusers does.
    ranks = {v.shape[0] for k, v in tensors.items() if ".lora_A." in k}
    targets = sorted({k.split(".lora_A.")[0] for k in tensors if ".lora_A." in k})
    rank = max(ranks) if ranks else 1
    return PeftLoraConfig(r=rank, lora_alpha=rank, target_modules=targets)


def _check_scale(module: nn.Module, meta: dict, prefix: str, file: Path) -> None:
    """A file trained with another rank/alpha would load into matching shapes yet act with the wrong scale."""
    cfg = module.peft_config[next(iter(module.peft_config))]
    for key, ours, field in (("r", cfg.r, "rank"), ("lora_alpha", cfg.lora_alpha, "alpha")):
        theirs = meta.get(f"{prefix}.{key}")
        if theirs is not None and float(theirs) != float(ours):
            raise ModelLoadError(f"LoRA file {str(file)!r} was saved with {field} {theirs} but the policy's adapter "
                                 f"has {field} {ours}; set model.lora.{field} to {theirs}, or list the file under "
                                 f"model.lora.fuse to train a new adapter on top of it")


def same_lora_entry(a: dict, b: dict) -> bool:
    """Whether two fused-LoRA records name the same file at the same scale: by SHA-256 when both carry one, else by
    real path (records written before fingerprints existed)."""
    if float(a.get("scale", 1.0)) != float(b.get("scale", 1.0)):
        return False
    if a.get("sha256") and b.get("sha256"):
        return a["sha256"] == b["sha256"]
    return os.path.realpath(a["path"]) == os.path.realpath(b["path"])


def fused_lists_match(theirs: list[dict], ours: list[dict]) -> bool:
    return len(theirs) == len(ours) and all(same_lora_entry(a, b) for a, b in zip(theirs, ours))


def _check_fused(module: nn.Module, meta: dict, file: Path) -> None:
    """An adapter trained on a base with LoRAs fused in only reproduces its policy on that same base."""
    theirs = meta.get(FUSED_METADATA_KEY, [])
    ours = getattr(module, "_psrl_fused_loras", [])
    if not fused_lists_match(theirs, ours):
        hint = ("--set 'model.lora.fuse=[" + ", ".join(e["path"] for e in theirs) + "]'") if theirs else \
            "model.lora.fuse: []"
        logger.warning("LoRA file %s was trained on a base with %s fused in, but this policy fuses %s; its images "
                       "will not be the trained policy's (use %s)", file, describe_fused(theirs),
                       describe_fused(ours), hint)


def load_lora_weights(module: nn.Module, path: str | os.PathLike, *, prefix: str = "transformer") -> Path:
    """Load a diffusers-format LoRA into ``module``'s adapter (adding one from the file's config if it has none).

    Raises:
        ModelLoadError: the file is missing or unreadable, or its keys or shapes do not match the adapter; the
            message names the file and the unmatched keys.
    """
    from peft.utils import set_peft_model_state_dict

    file, tensors, meta = read_lora_file(path)
    head = prefix + "."
    own = {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}
    foreign = sorted(k for k in tensors if not k.startswith(head))
    if not has_lora(module):
        module.requires_grad_(False)
        module.add_adapter(_peft_config_from_metadata(meta, prefix, own))
        _make_lora_trainable_fp32(module)
    _check_scale(module, meta, prefix, file)
    _check_fused(module, meta, file)
    expected = lora_state_dict(module)
    missing = sorted(set(expected) - set(own))
    unexpected = sorted(set(own) - set(expected)) + foreign
    wrong_shape = sorted(k for k in set(own) & set(expected) if own[k].shape != expected[k].shape)
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (("keys not in the file", missing), ("keys the policy does not have", unexpected)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:5])})")
        if wrong_shape:
            k = wrong_shape[0]
            parts.append(f"{len(wrong_shape)} shape mismatches (e.g. {k}: file {tuple(own[k].shape)} vs policy "
                         f"{tuple(expected[k].shape)}; a different rank? model.lora.fuse takes a LoRA of any rank)")
        raise ModelLoadError(f"LoRA file {str(file)!r} does not match the policy's adapter: " + "; ".join(parts))
    device = next(module.parameters()).device
    set_peft_model_state_dict(module, {k: v.to(device=device, dtype=torch.float32) for k, v in own.items()})
    logger.info("loaded LoRA %s (%d tensors)", file, len(own))
    return file


def lora_parameters(module: nn.Module) -> Iterable[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of the LoRA weights."""
    return ((n, p) for n, p in module.named_parameters() if "lora_" in n)


__all__ = [
    "CHECKPOINT_LORA_DIRS",
    "FUSED_METADATA_KEY",
    "LORA_METADATA_KEY",
    "LORA_TARGET_PRESETS",
    "LORA_WEIGHT_NAME",
    "add_lora",
    "compute_lora_in_input_dtype",
    "describe_fused",
    "fused_lists_match",
    "has_lora",
    "load_lora_weights",
    "lora_config_for_file",
    "lora_file",
    "lora_fingerprint",
    "lora_header",
    "lora_parameters",
    "lora_state_dict",
    "read_lora_file",
    "resolve_lora_path",
    "resolve_target_modules",
    "same_lora_entry",
    "save_lora_weights",
    "tuner_layers",
    "write_lora_file",
]
