"""Reference images for reference-conditioned policies (FLUX.1-Kontext, Qwen-Image-Edit-Plus): loading the resolved
paths of a record (:func:`psrl.data.records.resolve_records` ran where the records were loaded), mode conversion,
the UNO-style resize rule and conversion to model input tensors.

Every bad input is a :class:`psrl.data.records.RecordError` naming the record and the value: a record without
references, more references than the policy supports, a missing or unreadable file, an image under
:data:`psrl.images.MIN_SIDE` or more elongated than :data:`psrl.images.MAX_ASPECT` (the rewards refuse the same
files), an image too small for the model's latent grid. Files are decoded by :func:`psrl.images.load_image`, the
loader the rewards use too: EXIF orientation applied, 16-bit greyscale scaled to 8 bits, transparency composited
onto ``background`` (white by default).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from torch import Tensor

from psrl.data.records import Record, RecordError
from psrl.images import CachedImages, ImageLoadError, pil_to_tensor

@dataclass(frozen=True)
class ReferenceResize:
    """How references are sized before VAE encoding (UNO's rule, bytedance/UNO@d305981
    ``uno/flux/pipeline.py``):
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
    """Loads a record's reference images (RGB, uint8) through :func:`psrl.images.load_image`, with a small LRU cache
    of decoded files. ``background``: the colour transparent pixels are composited onto (a PIL colour name or an
    RGB tuple). Paths are the record's resolved (absolute) ones; a relative path belongs to a record nobody
    resolved and is an error naming it: policies never take a data root. Decoded files are kept in a
    :class:`psrl.images.CachedImages`."""

    def __init__(self, *, max_references: int, max_cached: int = 64, background: str | tuple = "white"):
        if max_references < 1:
            raise ValueError(f"max_references must be >= 1, got {max_references}")
        self.max_references = max_references
        self.files = CachedImages(max_cached, background)

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
        return [self.load_one(record, image) for image in self.paths(record)]

    def load_one(self, record: Record, image: str) -> Image.Image:
        """One of ``record``'s resolved reference paths as an RGB image; raises ``RecordError`` naming the record and
        the path (relative to its root) when it is unresolved, missing or unreadable."""
        if not Path(image).is_absolute():
            raise RecordError(f"record {record.id!r}: reference image {image!r} is not resolved against a data root "
                              "(records reach policies resolved: psrl.data.records.load_records / resolve_records)")
        try:
            return self.files.load(image)
        except ImageLoadError as e:
            # the loader's message names the file and says what is wrong (not found, unreadable, too small, ...)
            raise RecordError(f"record {record.id!r}: reference image {record.relative_path(image)!r}: {e}") from e


def pil_to_model_input(img: Image.Image) -> Tensor:
    """``[1, 3, H, W]`` float32 in [-1, 1], exactly as diffusers' ``VaeImageProcessor.preprocess`` for a PIL
    image already at its final size."""
    return pil_to_tensor(img).unsqueeze(0) * 2.0 - 1.0


def check_distinct_ids(records: Sequence[Record]) -> None:
    """Records sharing an id must be identical (group copies); otherwise caches keyed by id would mix them up."""
    seen: dict[str, Record] = {}
    for r in records:
        other = seen.setdefault(r.id, r)
        if other is not r and (other.prompt, other.subjects) != (r.prompt, r.subjects):
            raise RecordError(f"two different records share the id {r.id!r}; record ids must be unique")


__all__ = ["ReferenceLoader", "ReferenceResize", "check_distinct_ids", "pil_to_model_input"]
