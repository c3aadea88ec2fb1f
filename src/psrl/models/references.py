"""Reference images for reference-conditioned policies (FLUX.1-Kontext, Qwen-Image-Edit-Plus): loading under the
data root, mode conversion, the UNO-style resize rule and conversion to model input tensors.

Every bad input is a :class:`psrl.data.records.RecordError` naming the record and the value: a record without
references, more references than the policy supports, a missing or unreadable file, an image too small for the
model's latent grid. Images in another mode (RGBA, LA, L, P, CMYK, I;16) are converted to RGB (alpha dropped, as
the rewards do) and the conversion is logged with the record id.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from psrl.data.records import Record, RecordError, resolve_under

logger = logging.getLogger(__name__)


def takes_data_root(policy, model_cfg) -> bool:
    """Whether a run should point ``policy`` at its data root: the policy reads reference images
    (``policy.data_root`` exists) and the model config does not pin its own ``args.data_root``."""
    return hasattr(policy, "data_root") and not model_cfg.args.get("data_root")


@dataclass(frozen=True)
class ReferenceResize:
    """How references are sized before VAE encoding (UNO's rule, research note customized_uno_rewards.md §2.1):
    the long side is scaled to ``long_side_single`` when the record has one reference and to ``long_side_multi``
    when it has several (LANCZOS), then the image is centre-cropped to multiples of ``multiple`` (the VAE scale
    times the 2x2 packing: 16 for FLUX). ``long_side_*: null`` keeps the original size (only cropped)."""

    long_side_single: int | None = 512
    long_side_multi: int | None = 320
    multiple: int = 16

    def __post_init__(self):
        for name in ("long_side_single", "long_side_multi"):
            v = getattr(self, name)
            if v is not None and v < self.multiple:
                raise ValueError(f"reference resize: {name} must be >= multiple ({self.multiple}), got {v}")
        if self.multiple < 1:
            raise ValueError(f"reference resize: multiple must be >= 1, got {self.multiple}")

    def sizes(self, width: int, height: int, n_refs: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((resized_w, resized_h), (crop_w, crop_h))`` for a ``width x height`` image among ``n_refs``."""
        long_side = self.long_side_single if n_refs <= 1 else self.long_side_multi
        if long_side is None:
            rw, rh = width, height
        else:
            scale = long_side / max(width, height)
            rw, rh = max(1, round(width * scale)), max(1, round(height * scale))
        return (rw, rh), (rw // self.multiple * self.multiple, rh // self.multiple * self.multiple)

    def apply(self, img: Image.Image, n_refs: int, record_id: str) -> Image.Image:
        (rw, rh), (cw, ch) = self.sizes(img.width, img.height, n_refs)
        if cw == 0 or ch == 0:
            raise RecordError(f"record {record_id!r}: reference image of size {img.width}x{img.height} is too "
                              f"small or too elongated: resized to {rw}x{rh}, it has no {self.multiple}-pixel "
                              "multiple left after cropping")
        if (rw, rh) != img.size:
            img = img.resize((rw, rh), resample=Image.LANCZOS)
        if (cw, ch) != (rw, rh):
            left, top = (rw - cw) // 2, (rh - ch) // 2
            img = img.crop((left, top, left + cw, top + ch))
        return img


class ReferenceLoader:
    """Loads a record's reference images (RGB) under ``data_root``, with a small LRU cache of decoded files."""

    def __init__(self, data_root: str | Path | None, *, max_references: int, max_cached: int = 64):
        if max_references < 1:
            raise ValueError(f"max_references must be >= 1, got {max_references}")
        self.data_root = Path(data_root) if data_root is not None else Path(".")
        self.max_references = max_references
        self.max_cached = max_cached
        self._cache: OrderedDict[str, Image.Image] = OrderedDict()

    def paths(self, record: Record) -> list[str]:
        """The record's reference paths; raises for none, too many or a subject without an image."""
        if not record.subjects:
            raise RecordError(f"record {record.id!r} has no reference images (subjects is empty); this policy is "
                              "reference-conditioned and needs 1 to "
                              f"{self.max_references} subjects with an 'image'")
        if len(record.subjects) > self.max_references:
            raise RecordError(f"record {record.id!r} has {len(record.subjects)} references; this policy supports "
                              f"at most {self.max_references} (model.args.max_references)")
        out = []
        for i, s in enumerate(record.subjects):
            if not s.image:
                raise RecordError(f"record {record.id!r}: subject {i} ({s.phrase!r}) has no reference image")
            out.append(s.image)
        return out

    def load(self, record: Record) -> list[Image.Image]:
        return [self._load_one(record, rel) for rel in self.paths(record)]

    def _load_one(self, record: Record, rel: str) -> Image.Image:
        path = resolve_under(self.data_root, rel, what=f"record {record.id!r} reference image")
        key = str(path)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if not path.is_file():
            raise RecordError(f"record {record.id!r}: reference image {rel!r} not found (looked at {path})")
        try:
            with Image.open(path) as im:
                im.load()
                mode = im.mode
                img = im.convert("RGB") if mode != "RGB" else im.copy()
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise RecordError(f"record {record.id!r}: reference image {rel!r} is unreadable "
                              f"({type(e).__name__}: {e})") from e
        if mode != "RGB":
            logger.info("record %r: reference %s converted from %s to RGB", record.id, rel, mode)
        self._cache[key] = img
        if len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        return img


def pil_to_model_input(img: Image.Image) -> Tensor:
    """``[1, 3, H, W]`` float32 in [-1, 1], exactly as diffusers' ``VaeImageProcessor.preprocess`` for a PIL
    image already at its final size."""
    arr = np.array(img.convert("RGB")).astype(np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0) * 2.0 - 1.0


def check_distinct_ids(records: Sequence[Record]) -> None:
    """Records sharing an id must be identical (group copies); otherwise caches keyed by id would mix them up."""
    seen: dict[str, Record] = {}
    for r in records:
        other = seen.setdefault(r.id, r)
        if other is not r and (other.prompt, other.subjects) != (r.prompt, r.subjects):
            raise RecordError(f"two different records share the id {r.id!r}; record ids must be unique")


__all__ = ["takes_data_root", "ReferenceLoader", "ReferenceResize", "check_distinct_ids", "pil_to_model_input"]
