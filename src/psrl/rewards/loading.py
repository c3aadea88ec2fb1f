"""Model loading shared by the rewards: ``path: tiny`` builds random-weight stand-ins, anything else is a local
directory or hub id loaded with transformers; failures become :class:`psrl.errors.ModelLoadError` naming the path."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import torch

from psrl.errors import ModelLoadError

logger = logging.getLogger(__name__)

TINY = "tiny"

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device = "cpu") -> torch.dtype:
    """``None``/"auto" -> bf16 on CUDA, fp32 on CPU; otherwise the named dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)} or 'auto'")
    return _DTYPES[dtype]


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


def check_tokenizer(tokenizer, path: str, what: str, min_vocab: int = 100) -> None:
    """transformers 5 can return an almost empty tokenizer for a bad path without raising (research gotcha G1)."""
    if len(tokenizer) < min_vocab:
        raise ModelLoadError(f"{what}: tokenizer loaded from {path!r} has only {len(tokenizer)} tokens; "
                             f"the path is probably wrong or incomplete")
