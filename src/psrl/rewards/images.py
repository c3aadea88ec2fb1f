"""Image plumbing shared by the rewards: batch validation, tensor <-> PIL, reference loading, crops.

Rewards take ``images`` as a float tensor ``[B, 3, H, W]`` in [0, 1] (what policies produce) or, where sizes differ
(CLI, reward server), a sequence of PIL images / ``[3, H, W]`` tensors. A batch of the wrong shape or range is a
caller bug and raises; a single unusable sample (NaN pixels, too small) becomes a per-sample failure reason.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from psrl.data.records import RecordError, resolve_under

logger = logging.getLogger(__name__)

MIN_SIDE = 8  # below this no detector/embedder input makes sense


def _tensor_to_pil(x: Tensor, where: str) -> tuple[Image.Image | None, str | None]:
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"{where}: expected an RGB image tensor [3, H, W], got shape {tuple(x.shape)} "
                         f"(convert greyscale/RGBA to RGB first)")
    x = x.detach().float().cpu()
    if not torch.isfinite(x).all():
        return None, "image contains NaN or inf"
    lo, hi = float(x.min()), float(x.max())
    if lo < -0.02 or hi > 1.02:  # a little decoder overshoot is clamped; [-1, 1] or [0, 255] data is a bug
        raise ValueError(f"{where}: image values must be in [0, 1], got range [{lo:.3f}, {hi:.3f}]")
    arr = (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(arr), None


def to_pil_images(images: Tensor | Sequence) -> tuple[list[Image.Image | None], list[str | None]]:
    """``(pil images, failure reasons)``. Unusable samples are ``None`` with a reason; PIL inputs of another mode
    (L, RGBA, P) are converted to RGB (alpha dropped), which is what every model here expects."""
    if isinstance(images, Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W] (RGB), got shape {tuple(images.shape)}")
        items = list(images)
    else:
        items = list(images)
    pils: list[Image.Image | None] = []
    failures: list[str | None] = []
    for i, item in enumerate(items):
        if isinstance(item, Image.Image):
            pil, why = (item if item.mode == "RGB" else item.convert("RGB")), None
        elif isinstance(item, Tensor):
            pil, why = _tensor_to_pil(item, f"images[{i}]")
        else:
            raise TypeError(f"images[{i}]: expected a PIL image or a tensor, got {type(item).__name__}")
        if pil is not None and min(pil.size) < MIN_SIDE:
            pil, why = None, f"image too small ({pil.size[0]}x{pil.size[1]}, min side {MIN_SIDE})"
        pils.append(pil)
        failures.append(why)
    return pils, failures


def pil_to_tensor(img: Image.Image) -> Tensor:
    """``[3, H, W]`` float in [0, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


class ReferenceImageError(Exception):
    """A reference image is missing or unreadable; the message is the failure reason."""


class ReferenceImages:
    """Loads reference images under a data root (no escaping it), converted to RGB, with a small LRU cache."""

    def __init__(self, data_root: str | Path | None, max_cached: int = 256):
        self.data_root = Path(data_root) if data_root is not None else None
        self.max_cached = max_cached
        self._cache: OrderedDict[str, Image.Image] = OrderedDict()

    def path(self, rel: str | None) -> Path:
        if not rel:
            raise ReferenceImageError("subject has no reference image")
        if self.data_root is None:
            raise ReferenceImageError(f"reference {rel!r} given but the reward has no data_root")
        try:
            return resolve_under(self.data_root, rel, what="reference image")
        except RecordError as e:
            raise ReferenceImageError(str(e)) from e

    def load(self, rel: str | None) -> Image.Image:
        p = self.path(rel)
        key = str(p)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if not p.is_file():
            raise ReferenceImageError(f"reference image not found: {p}")
        try:
            with Image.open(p) as im:
                img = im.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise ReferenceImageError(f"reference image unreadable: {p} ({type(e).__name__}: {e})") from e
        if min(img.size) < MIN_SIDE:
            raise ReferenceImageError(f"reference image too small: {p} ({img.size[0]}x{img.size[1]})")
        self._cache[key] = img
        if len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        return img


def crop_box(img: Image.Image, box, *, truncate: bool = False) -> Image.Image | None:
    """Crop ``box`` (xyxy pixels). Honest mode clips to the image and rejects empty boxes (``None``);
    ``truncate=True`` reproduces the PSRBench scorer's ``int()`` truncation (negative coordinates become 0 here;
    the reference's wrap-around slicing on negative ints is a bug we do not copy)."""
    w, h = img.size
    x1, y1, x2, y2 = (float(v) for v in box)
    if truncate:
        x1, y1, x2, y2 = (int(v) for v in (x1, y1, x2, y2))
    x1, x2 = max(0.0, min(x1, w)), max(0.0, min(x2, w))
    y1, y2 = max(0.0, min(y1, h)), max(0.0, min(y2, h))
    if x2 - x1 < 1 or y2 - y1 < 1:
        return None
    return img.crop((int(x1), int(y1), int(round(x2)) if not truncate else int(x2),
                     int(round(y2)) if not truncate else int(y2)))
