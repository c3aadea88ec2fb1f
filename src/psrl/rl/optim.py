"""Optimizers shared by the GRPO and SFT trainers."""
from __future__ import annotations

import math

import torch

from psrl.errors import PsrlError

OPTIMIZERS = ("adamw", "adamw8bit")


def clip_gradients(params, max_norm: float) -> float:
    """The total gradient L2 norm before clipping (0.0 when no parameter has a gradient, e.g. a step in which every
    advantage was 0); clips to ``max_norm`` when it is > 0 (torch's ``clip_grad_norm_``; an infinite bound only
    measures)."""
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else math.inf))


def make_optimizer(params, name: str, *, lr: float, betas, weight_decay: float, eps: float):
    """AdamW, or bitsandbytes' 8-bit AdamW (optimizer states in 8 bits: ~75% less optimizer memory, CUDA only)."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, eps=eps)
    if name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise PsrlError("optimizer adamw8bit needs bitsandbytes: pip install 'psrl[bnb]' (CUDA only)") from e
        return bnb.optim.AdamW8bit(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, eps=eps)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
