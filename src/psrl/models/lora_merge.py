"""Fusing and combining saved LoRAs: the hand-over between training stages, exact in both directions.

* :func:`fuse_lora_weights` adds a saved LoRA into a model's base weights for good (PSR's rank-512 SFT LoRA under a
  fresh rank-64 RL LoRA, ``model.lora.fuse``); equivalent to diffusers' ``load_lora_weights`` + ``fuse_lora``.
* :func:`combine_lora_files` writes one diffusers-format LoRA whose update is the sum of several (the SFT LoRA and
  the RL LoRA trained on top of it) by stacking their ranks, so the two-stage result loads with a single
  ``load_lora_weights``. Exact: each file's ``alpha / r`` scale is folded into its ``B`` rows and the output acts
  with scale 1.
* :func:`prepare_lora` applies a ``model.lora`` config: fuse, add the trainable adapter, load a saved one.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from torch import nn

from psrl.errors import ModelLoadError
from psrl.models.config import LoraConfig
from psrl.models.lora import (
    FUSED_METADATA_KEY,
    add_lora,
    describe_fused,
    fused_lists_match,
    has_lora,
    load_lora_weights,
    lora_fingerprint,
    lora_header,
    read_lora_file,
    same_lora_entry,
    write_lora_file,
)

logger = logging.getLogger(__name__)


def lora_delta(lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float) -> torch.Tensor:
    """The weight update ``scale * B @ A`` (``[out, in]``, fp32) a LoRA adds to its base linear. Pure function."""
    return scale * (lora_b.float() @ lora_a.float())


def file_scale(meta: dict, prefix: str, file: Path, rank: int) -> float:
    """``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA) from a file's peft header; a header-less file acts with
    scale 1, as diffusers loads it."""
    own = {k[len(prefix) + 1:]: v for k, v in meta.items() if k.startswith(prefix + ".")}
    for key in ("rank_pattern", "alpha_pattern"):
        if own.get(key):
            raise ModelLoadError(f"LoRA file {str(file)!r}: per-module {key} is not supported for fusing")
    if own.get("use_dora"):
        raise ModelLoadError(f"LoRA file {str(file)!r} is a DoRA adapter; only plain LoRA can be fused")
    if not own:
        return 1.0
    r, alpha = float(own.get("r", rank)), float(own.get("lora_alpha", own.get("r", rank)))
    return alpha / (r ** 0.5) if own.get("use_rslora") else alpha / r


@torch.no_grad()
def fuse_lora_weights(module: nn.Module, path: str | os.PathLike, *, prefix: str = "transformer",
                      scale: float = 1.0) -> Path:
    """Add a saved LoRA's update ``scale * (alpha / r) * B @ A`` into ``module``'s base linear weights, for good.

    This is how a stage-1 LoRA (PSR's rank-512 SFT) becomes the frozen starting point of a stage-2 run with a new,
    smaller adapter (rank 64): the fused model is also what ``disable_lora`` returns, i.e. the KL reference.
    Equivalent to diffusers' ``load_lora_weights(path)`` followed by ``fuse_lora(lora_scale=scale)``.
    Call it before :func:`add_lora` (peft renames adapted layers).

    Raises:
        ModelLoadError: the file is missing or unreadable, names a layer ``module`` does not have, has mismatched
            shapes or LoRA biases, or ``module`` already carries an adapter.
    """
    if has_lora(module):
        raise ModelLoadError(f"cannot fuse {str(path)!r}: fuse LoRAs before the trainable adapter is added")
    file, tensors, meta = read_lora_file(path)
    pairs = _plain_lora_pairs(file, tensors, prefix)
    linears = {n: m for n, m in module.named_modules() if isinstance(m, nn.Linear)}
    missing = sorted(n for n in pairs if n not in linears)
    if missing:
        raise ModelLoadError(f"LoRA file {str(file)!r} adapts {len(missing)} layers this model does not have "
                             f"(e.g. {missing[0]}); is it for another model?")
    for name, (a, b) in sorted(pairs.items()):
        weight = linears[name].weight
        if (b.shape[0], a.shape[1]) != tuple(weight.shape):
            raise ModelLoadError(f"LoRA file {str(file)!r}: {name} has A {tuple(a.shape)} and B {tuple(b.shape)}, "
                                 f"which do not fit the layer's weight {tuple(weight.shape)}")
        s = scale * file_scale(meta, prefix, file, a.shape[0])
        delta = lora_delta(a.to(weight.device), b.to(weight.device), s)
        weight.copy_((weight.float() + delta).to(weight.dtype))
    fused = getattr(module, "_psrl_fused_loras", [])
    # recorded by content (and real path, for people): `psrl lora combine` and `psrl generate` recognise the file
    # after a move or copy, and tell another SFT checkpoint of the same name apart
    module._psrl_fused_loras = fused + [{"path": os.path.realpath(file), "scale": scale,
                                         "sha256": lora_fingerprint(file)}]
    logger.info("fused LoRA %s into %d layers (scale %g)", file, len(pairs), scale)
    return file


def _plain_lora_pairs(file: Path, tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, tuple]:
    """``{module name: (A [r, in], B [out, r])}`` of a file's ``prefix`` weights; anything else is an error."""
    head = prefix + "."
    own = {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}
    if not own:
        raise ModelLoadError(f"LoRA file {str(file)!r} has no {prefix!r} weights")
    bad = sorted(k for k in own if not k.endswith((".lora_A.weight", ".lora_B.weight")))
    if bad:
        raise ModelLoadError(f"LoRA file {str(file)!r}: {len(bad)} tensors are not plain LoRA A/B weights "
                             f"(e.g. {bad[0]})")
    pairs = {}
    for key, a in own.items():
        if key.endswith(".lora_A.weight"):
            name = key[: -len(".lora_A.weight")]
            b = own.get(f"{name}.lora_B.weight")
            if b is None or a.shape[0] != b.shape[1]:
                raise ModelLoadError(f"LoRA file {str(file)!r}: {name} has A {tuple(a.shape)} and B "
                                     f"{None if b is None else tuple(b.shape)}")
            pairs[name] = (a, b)
    return pairs


def fused_mismatch(inputs: list[dict], recorded: list[list[dict]]) -> str | None:
    """Why the LoRAs described by ``inputs`` (``{path, scale, sha256}`` each) cannot be summed, or ``None``.

    ``recorded[i]`` is what input ``i`` was trained on (its ``psrl_fused_loras``). A sum is one policy only when
    every input sits on the same base once the inputs themselves are accounted for: what input ``i`` records minus
    the other inputs must be the same for all (SFT + the RL LoRA trained on it leaves nothing; two RL LoRAs trained
    on one SFT LoRA leave that SFT LoRA). Pure function.
    """
    def rest(i: int) -> list[dict]:
        others = [inp for j, inp in enumerate(inputs) if j != i]
        return [e for e in recorded[i] if not any(same_lora_entry(e, o) for o in others)]

    leftovers = [rest(i) for i in range(len(inputs))]
    first = leftovers[0]
    if all(fused_lists_match(left, first) for left in leftovers[1:]):
        return None
    trained_on = "; ".join(f"{inp['path']} was trained with {describe_fused(left)} fused into its base"
                           for inp, left in zip(inputs, leftovers) if left)
    return (f"{trained_on}, which is not among the inputs ({', '.join(i['path'] for i in inputs)}), so their sum is "
            f"not the trained policy; combine it with the LoRA it was trained on, or pass --force")


def combine_lora_files(paths, out: str | os.PathLike, *, prefix: str = "transformer",
                       scales=None, force: bool = False) -> Path:
    """Write one LoRA equal to the sum of the LoRAs at ``paths`` (each times ``scales[i]``, default 1); each path
    is resolved by :func:`psrl.models.lora.resolve_lora_path` (a file, a LoRA folder, a checkpoint or run folder).

    Ranks stack (``r = sum r_i``); a layer missing from a file gets zero rows there. ``A = [A_1; ...; A_k]`` and
    ``B = [s_1 B_1, ..., s_k B_k]`` with ``s_i = scales[i] * alpha_i / r_i``, saved with ``lora_alpha = r`` (scale
    1), so ``B @ A = sum_i s_i B_i A_i`` exactly. The ``psrl_fused_loras`` record of the output lists what the
    inputs were trained on minus the inputs themselves (combining the SFT LoRA with the RL LoRA trained on it
    leaves nothing fused). ``out`` is a directory or a ``.safetensors`` path.

    Raises:
        ModelLoadError: an unreadable file, non-LoRA tensors, a layer whose shapes differ between files, or (unless
            ``force``) inputs trained on different fused bases (:func:`fused_mismatch`: e.g. an RL LoRA with an SFT
            LoRA it was not trained on), naming the recorded bases.
    """
    from peft import LoraConfig as PeftLoraConfig

    paths = list(paths)
    if len(paths) < 2:
        raise ValueError("combine_lora_files needs at least two LoRA files")
    scales = [1.0] * len(paths) if scales is None else [float(s) for s in scales]
    if len(scales) != len(paths):
        raise ValueError(f"got {len(scales)} scales for {len(paths)} LoRA files")
    loaded = []
    for path, scale in zip(paths, scales):
        file, tensors, meta = read_lora_file(path)
        pairs = _plain_lora_pairs(file, tensors, prefix)
        rank = max(a.shape[0] for a, _ in pairs.values())
        loaded.append((file, pairs, rank, scale * file_scale(meta, prefix, file, rank), meta))
    recorded = [meta.get(FUSED_METADATA_KEY, []) for *_, meta in loaded]
    # an input's own identity is only needed when some input records what it was trained on (hashing costs ~1 s/GB)
    inputs = [{"path": os.path.realpath(file), "scale": scale,
               **({"sha256": lora_fingerprint(file)} if any(recorded) else {})}
              for (file, *_), scale in zip(loaded, scales)]
    problem = fused_mismatch(inputs, recorded) if any(recorded) else None
    if problem and not force:
        raise ModelLoadError(f"refusing to combine: {problem}")
    if problem:
        logger.warning("combining anyway (--force): %s", problem)
    names = sorted(set().union(*(pairs for _, pairs, _, _, _ in loaded)))
    total = sum(rank for _, _, rank, _, _ in loaded)
    tensors = {}
    for name in names:
        shapes = {(a.shape[1], b.shape[0]) for _, pairs, _, _, _ in loaded if name in pairs
                  for a, b in [pairs[name]]}
        if len(shapes) != 1:
            raise ModelLoadError(f"layer {name} has different (in, out) shapes across the LoRA files: "
                                 f"{sorted(shapes)}")
        (n_in, n_out), = shapes
        a_rows, b_cols = [], []
        for _, pairs, rank, s, _ in loaded:
            if name in pairs and pairs[name][0].shape[0] == rank:
                a, b = pairs[name]
                a_rows.append(a.float())
                b_cols.append(b.float() * s)
            elif name in pairs:
                raise ModelLoadError(f"layer {name} has rank {pairs[name][0].shape[0]}, other layers of its file "
                                     f"{rank}; per-layer ranks are not supported")
            else:
                a_rows.append(torch.zeros(rank, n_in))
                b_cols.append(torch.zeros(n_out, rank))
        tensors[f"{prefix}.{name}.lora_A.weight"] = torch.cat(a_rows).contiguous()
        tensors[f"{prefix}.{name}.lora_B.weight"] = torch.cat(b_cols, dim=1).contiguous()
    header = lora_header(PeftLoraConfig(r=total, lora_alpha=total, target_modules=names), prefix)
    fused: list[dict] = []
    for entry in (e for rec in recorded for e in rec):
        if not any(same_lora_entry(entry, i) for i in inputs) and not any(same_lora_entry(entry, f) for f in fused):
            fused.append(entry)
    if fused:
        header[FUSED_METADATA_KEY] = json.dumps(fused)
    target = write_lora_file(tensors, header, out)
    logger.info("combined %d LoRAs into %s (rank %d, %d layers)", len(paths), target, total, len(names))
    return target


def prepare_lora(module: nn.Module, cfg: LoraConfig, *, prefix: str = "transformer") -> list[str]:
    """Everything ``model.lora`` asks for, in order: fuse ``cfg.fuse`` into the base weights, add the trainable
    adapter, then load ``cfg.path`` into it. Returns the adapted module names. Lives here, above
    :mod:`psrl.models.lora`, because it is the one place that needs both fusing and the adapter."""
    for entry in cfg.fuse:
        fuse_lora_weights(module, entry["path"], prefix=prefix, scale=float(entry.get("scale", 1.0)))
    targets = add_lora(module, cfg)
    if cfg.path:
        load_lora_weights(module, cfg.path, prefix=prefix)
    return targets


__all__ = ["combine_lora_files", "file_scale", "fuse_lora_weights", "fused_mismatch", "lora_delta", "prepare_lora"]
