"""Image plumbing shared by the rewards: batch validation (then :func:`psrl.images.tensor_to_pil`), reference
loading, crops.

Rewards take ``images`` as a float tensor ``[B, 3, H, W]`` in [0, 1] (what policies produce) or, where sizes differ
(CLI, reward server), a sequence of PIL images / ``[3, H, W]`` tensors. A batch of the wrong shape or range is a
caller bug and raises; a single unusable sample (NaN pixels, a side under :data:`psrl.images.MIN_SIDE`, an aspect
ratio over :data:`psrl.images.MAX_ASPECT`) becomes a per-sample failure reason. Reference files are decoded by
:func:`psrl.images.load_image`, the policies' loader, so a file the policy refuses the rewards refuse too.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from psrl.images import MAX_ASPECT, MIN_SIDE, CachedImages, ImageLoadError, size_problem, tensor_to_pil, to_rgb


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
    return tensor_to_pil(x), None


def to_pil_images(images: Tensor | Sequence, *, background: str | tuple = "white"
                  ) -> tuple[list[Image.Image | None], list[str | None]]:
    """``(pil images, failure reasons)``. Unusable samples are ``None`` with a reason (NaN pixels, or the shared
    size rule :func:`psrl.images.size_problem`); PIL inputs of another mode are converted to RGB as the loader
    does (:func:`psrl.images.to_rgb`: 16-bit scaled, transparency composited onto ``background``)."""
    if isinstance(images, Tensor) and (images.ndim != 4 or images.shape[1] != 3):
        raise ValueError(f"expected images [B, 3, H, W] (RGB), got shape {tuple(images.shape)}")
    pils: list[Image.Image | None] = []
    failures: list[str | None] = []
    for i, item in enumerate(images):
        if isinstance(item, Image.Image):
            pil, why = (item if item.mode == "RGB" else to_rgb(item, background=background)), None
        elif isinstance(item, Tensor):
            pil, why = _tensor_to_pil(item, f"images[{i}]")
        else:
            raise TypeError(f"images[{i}]: expected a PIL image or a tensor, got {type(item).__name__}")
        problem = size_problem(*pil.size) if pil is not None else None
        if problem:
            pil, why = None, problem[1]
        pils.append(pil)
        failures.append(why)
    return pils, failures


def scorable_images(images: Tensor | Sequence, records: Sequence, name: str
                    ) -> tuple[list[Image.Image | None], list[str | None], list[int]]:
    """:func:`to_pil_images` for a reward's batch: ``(pil images, failure reasons, indices of the scorable samples)``.

    Raises:
        ValueError: the number of images is not the number of records (a caller bug), naming the reward.
    """
    pils, failures = to_pil_images(images)
    if len(pils) != len(records):
        raise ValueError(f"{name}: {len(pils)} images for {len(records)} records")
    return pils, failures, [b for b in range(len(records)) if not failures[b]]


class ReferenceImageError(Exception):
    """A reference image is missing, unreadable or unusable; the message is the failure reason."""


class ReferenceImages:
    """Loads the reference images of resolved records (absolute paths: :func:`psrl.data.records.resolve_records`
    ran where the records were loaded) with :func:`psrl.images.load_image` (the policies' loader: EXIF orientation,
    16-bit scaling, transparency onto ``background``, the shared minimum side and aspect limit), RGB uint8, with a
    small LRU cache (:class:`psrl.images.CachedImages`). A relative path belongs to a record nobody resolved and is
    that sample's failure: rewards never take a data root."""

    def __init__(self, max_cached: int = 256, background: str | tuple = "white"):
        self.files = CachedImages(max_cached, background)

    def path(self, image: str | None) -> Path:
        if not image:
            raise ReferenceImageError("subject has no reference image")
        if not Path(image).is_absolute():
            raise ReferenceImageError(f"reference {image!r} is not resolved against a data root (records reach "
                                      "rewards resolved: psrl.data.records.load_records / resolve_records)")
        return Path(image)

    def load(self, image: str | None, what: str = "reference image") -> Image.Image:
        """The RGB image; raises :class:`ReferenceImageError` ("<what> <path>: <what is wrong>": file not found,
        unreadable image, too small, too elongated, too many pixels; or the path is not resolved)."""
        try:
            return self.files.load(self.path(image))
        except ImageLoadError as e:
            raise ReferenceImageError(f"{what} {e}") from e


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
    return img.crop((int(x1), int(y1), round(x2) if not truncate else int(x2),
                     round(y2) if not truncate else int(y2)))


__all__ = ["MAX_ASPECT", "MIN_SIDE", "ReferenceImageError", "ReferenceImages", "crop_box", "scorable_images",
           "to_pil_images"]
