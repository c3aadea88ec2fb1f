"""Model loading shared by the rewards: ``path: tiny`` builds random-weight stand-ins, anything else is a local
directory or hub id loaded with transformers; failures become :class:`psrl.errors.ModelLoadError` naming the path."""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from psrl.errors import ModelLoadError
from psrl.models.loading import torch_dtype_from_name

TINY = "tiny"

def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device = "cpu") -> torch.dtype:
    """``None``/"auto" -> bf16 on CUDA, fp32 on CPU; otherwise the named dtype
    (:func:`psrl.models.loading.torch_dtype_from_name`, which raises ``ValueError`` for an unknown name)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return torch_dtype_from_name(dtype)


def component_spec(spec: dict | str | None, default_kind: str, what: str) -> tuple[str, dict]:
    """``(kind, options)`` of a detector or embedder spec: ``None`` -> the default kind, a kind name, or a mapping
    with an optional ``kind`` (the mapping is copied, ``kind`` removed from the options).

    Raises:
        TypeError: anything else, naming ``what``.
    """
    if spec is None or isinstance(spec, str):
        return spec or default_kind, {}
    if not isinstance(spec, dict):
        raise TypeError(f"{what} must be a kind name, a mapping with 'kind' or a {what} object, "
                        f"got {type(spec).__name__}")
    options = dict(spec)
    return options.pop("kind", default_kind), options


def with_default_path(spec, path: str | None):
    """A sub-model spec (kind name, mapping or ``None``) as a mapping with ``path`` set unless it names its own (a
    reward-level ``path: tiny``, or the reward's default weights); ``path=None`` or a built component (a Detector or
    Embedder object) passes through unchanged."""
    if path is None or not (spec is None or isinstance(spec, (str, dict))):
        return spec
    spec = {"kind": spec} if isinstance(spec, str) else dict(spec or {})
    spec.setdefault("path", path)
    return spec


def looks_local(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or os.path.exists(path)


def load_pretrained(what: str, path: str, fn: Callable[[str], Any]) -> Any:
    """Call ``fn(path)`` and turn every loading failure into a ModelLoadError naming ``what`` and ``path``."""
    if not path:
        raise ModelLoadError(f"{what}: no model path given (use a local directory, a hub id, or 'tiny')")
    expanded = os.path.expanduser(path)
    if looks_local(path) and not os.path.exists(expanded):
        raise ModelLoadError(f"{what}: model path does not exist: {path}")
    try:
        return fn(expanded if looks_local(path) else path)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as e:
        raise ModelLoadError(f"{what}: could not load {path!r}: {type(e).__name__}: {e}") from e
