"""The one image loader of psrl: policy references, reward references, SFT targets, bench evaluation, the CLI and
the reward server all open files through :func:`load_image`, so an image means the same thing everywhere.

What it does to a file, in order (each step matches what users' files really hold):

1. ``Image.open`` + ``load()`` (a truncated file fails here, not later), with PIL's decompression-bomb guard;
2. EXIF orientation applied (``ImageOps.exif_transpose``), as diffusers' ``load_image`` does: a phone JPEG with
   Orientation=6 stored 60x30 loads 30x60;
3. 16-bit and 32-bit greyscale (``I;16``, ``I;16B``, ``I``) scaled to 8 bits by their bit depth (32768 -> 128),
   never clipped (PIL's plain ``convert("L")`` clips them to white);
4. transparency (RGBA, LA, P with a transparent index, ``PA``) composited onto ``background`` (white by default:
   the data pipeline draws references on white), never dropped to black;
5. everything else converted to RGB.

:data:`MIN_SIDE` is the smallest side and :data:`MAX_ASPECT` the largest long/short side ratio any reference or
generated image may have; policies and rewards agree on both (:func:`size_problem` is the one rule). 200 is the
limit of the Qwen2-VL image processor (``smart_resize`` raises beyond it), which the VLM judges, HPSv3 and the
Qwen-Image-Edit policy share; applying it to every model keeps "scorable" the same for every reward.

The other direction lives here too: :func:`tensor_to_pil` / :func:`pil_to_tensor` are the one conversion between
psrl's image tensors (``[3, H, W]`` float in [0, 1]) and PIL images, and :func:`save_image` the one atomic image
writer (benchmark images, data-pipeline images, training samples, ``psrl generate``).
"""
from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Callable, Hashable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from psrl.fileio import write_bytes_atomic

MIN_SIDE = 8  # pixels; below this no detector, embedder or VAE input makes sense
MAX_ASPECT = 200.0  # long side / short side; the Qwen2-VL processor refuses anything more elongated
# file suffixes (lower case) psrl looks for when it finds images by name; ordered, the first found wins
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

ImageSource = str | Path | bytes | BinaryIO

_Color = str | tuple
_T = TypeVar("_T")


class ImageLoadError(ValueError):
    """An image file is missing, unreadable, truncated, too small, too elongated or too large. The message says
    which and why; ``kind`` says it for code (``"missing"``, ``"unreadable"``, ``"too_small"``,
    ``"too_elongated"``, ``"too_large"``), so callers can word their own errors without parsing the message."""

    def __init__(self, message: str, kind: str = "unreadable"):
        super().__init__(message)
        self.kind = kind


def size_problem(width: int, height: int, *, min_side: int = MIN_SIDE,
                 max_aspect: float | None = MAX_ASPECT) -> tuple[str, str] | None:
    """``None`` when a ``width x height`` image is usable by every psrl model, else ``(kind, reason)`` with kind
    ``"too_small"`` (a side under ``min_side``; 0 disables) or ``"too_elongated"`` (long/short side over
    ``max_aspect``; ``None`` disables). Pure: the same rule for files, tensors and PIL images."""
    if min_side and min(width, height) < min_side:
        return "too_small", f"image is {width}x{height}, too small (smaller than the minimum side {min_side})"
    if max_aspect is not None and max(width, height) > max_aspect * max(min(width, height), 1):
        ratio = max(width, height) / max(min(width, height), 1)
        return "too_elongated", (f"image is {width}x{height}, too elongated (aspect ratio {ratio:.0f} exceeds the "
                                 f"maximum {max_aspect:g})")
    return None


@contextlib.contextmanager
def _opened(source: ImageSource) -> Iterator[tuple[Image.Image, str]]:
    """``(lazily opened image, how messages name it)``; every failure, in the block too, is an ImageLoadError."""
    where = str(source) if isinstance(source, (str, Path)) else "image data"
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise ImageLoadError(f"{where}: file not found", "missing")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as im:
            yield im, where
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageLoadError(f"{where}: too many pixels ({e})", "too_large") from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageLoadError(f"{where}: unreadable image ({type(e).__name__}: {e})") from e


def _to_8bit(img: Image.Image) -> Image.Image:
    """High-bit-depth greyscale -> ``L`` by the mode's bit depth."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.uint16).astype(np.float64)
        return Image.fromarray(np.round(arr / 257.0).clip(0, 255).astype(np.uint8), "L")
    if img.mode == "I":
        arr = np.asarray(img, dtype=np.int64)
        # mode I holds 16-bit PNGs too (PIL opens many of them as I); scale by the range the values use
        peak = int(arr.max()) if arr.size else 0
        scale = 257.0 if peak <= 65535 else 16843009.0  # 16-bit or full 32-bit
        return Image.fromarray(np.round(arr.clip(0) / scale).clip(0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        peak = float(np.nanmax(arr)) if arr.size else 0.0
        arr = arr * 255.0 if peak <= 1.0 else arr
        return Image.fromarray(np.nan_to_num(arr).clip(0, 255).round().astype(np.uint8), "L")
    return img


def to_rgb(img: Image.Image, *, background: _Color = "white") -> Image.Image:
    """Any PIL image -> RGB: high bit depths scaled, transparency composited onto ``background``."""
    img = _to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background)
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(source: ImageSource, *, background: _Color = "white", min_side: int = MIN_SIDE,
               max_pixels: int | None = None, max_aspect: float | None = MAX_ASPECT) -> Image.Image:
    """Decode an image file (path, bytes or binary file) to an RGB ``PIL.Image`` (uint8, H x W x 3).

    Args:
        source: a path, the file's bytes, or an open binary file.
        background: colour transparent pixels are composited onto (PIL colour name or RGB tuple).
        min_side: smallest allowed side in pixels (0 disables the check).
        max_pixels: largest allowed ``width * height``, checked from the header *before* decoding the pixels
            (the reward server's guard against decompression bombs); ``None`` keeps PIL's own bomb limit.
        max_aspect: largest allowed long/short side ratio after EXIF orientation (``None`` disables).

    Raises:
        ImageLoadError: missing file, not an image, truncated or corrupt data, smaller than ``min_side``, more
            elongated than ``max_aspect`` or larger than ``max_pixels`` (the message names the file and the
            reason; ``kind`` classifies it).
    """
    with _opened(source) as (im, where):
        w, h = im.size
        if max_pixels is not None and w * h > max_pixels:
            raise ImageLoadError(f"{where}: {w}x{h} = {w * h} pixels exceeds max_pixels={max_pixels}", "too_large")
        im.load()
        img = to_rgb(ImageOps.exif_transpose(im), background=background)
    problem = size_problem(*img.size, min_side=min_side, max_aspect=max_aspect)
    if problem:
        raise ImageLoadError(f"{where}: {problem[1]}", problem[0])
    return img


class CachedImages:
    """:func:`load_image` behind a small LRU cache keyed by the path: the reference loaders of the policies and of
    the rewards use it, because the G members of a group (and every step that draws the record again) share their
    reference files, which are decoded once.

    Args:
        max_cached: how many decoded images are kept (least recently used dropped first), >= 1.
        background: what transparent pixels are composited onto (:func:`to_rgb`).
    """

    def __init__(self, max_cached: int, background: _Color = "white"):
        if max_cached < 1:
            raise ValueError(f"max_cached must be >= 1, got {max_cached}")
        self.max_cached = max_cached
        self.background = background
        # lru_cache keeps no exceptions, so a failure is not cached: a file fixed on disk loads at the next call
        self._load = functools.lru_cache(maxsize=max_cached)(functools.partial(load_image, background=background))

    def load(self, path: str | Path) -> Image.Image:
        """The RGB image at ``path``. Raises :class:`ImageLoadError` as :func:`load_image` does."""
        return self._load(str(path))


def image_size(source: ImageSource) -> tuple[int, int]:
    """``(width, height)`` of an image as :func:`load_image` will return it (EXIF orientation applied), read from
    the header without decoding the pixels.

    Raises:
        ImageLoadError: missing file or not an image.
    """
    with _opened(source) as (im, _):
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1)  # EXIF Orientation; 5-8 turn the image by 90 degrees
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def check_image(path: str | Path, *, min_side: int = MIN_SIDE, max_aspect: float | None = MAX_ASPECT) -> str | None:
    """``None`` when ``path`` decodes fully (the same rules as :func:`load_image`), else the reason."""
    try:
        load_image(path, min_side=min_side, max_aspect=max_aspect)
    except ImageLoadError as e:
        return str(e)
    return None


def group_by_size(items: Iterable[_T], size: Callable[[_T], Hashable]) -> list[list[_T]]:
    """``items`` split by ``size(item)`` (a PIL ``.size``, a tensor's ``tuple(shape)``), the groups in the order
    their first item comes, each keeping the items' order. Every batched model call over images goes one group at a
    time: tensors of different sizes cannot be stacked, and a processor that pads mixed sizes changes the features.
    """
    groups: dict[Hashable, list[_T]] = {}
    for item in items:
        groups.setdefault(size(item), []).append(item)
    return list(groups.values())


def tensor_to_pil(image) -> Image.Image:
    """``[3, H, W]`` float tensor in [0, 1] (any device or dtype) -> RGB ``PIL.Image``: clamped to [0, 1], scaled by
    255 and rounded half to even to uint8. Values are not range-checked here (a reward that must refuse [-1, 1]
    or [0, 255] input checks before converting).

    Raises:
        ValueError: not a ``[3, H, W]`` tensor.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an RGB image tensor [3, H, W], got shape {tuple(image.shape)}")
    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(arr)


def pil_to_tensor(img: Image.Image):
    """A PIL image (converted to RGB with :func:`to_rgb`) -> ``[3, H, W]`` float32 tensor in [0, 1] on the CPU."""
    import torch

    arr = np.asarray(to_rgb(img), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def save_image(image, path: str | Path) -> Path:
    """Write a PIL image or a ``[3, H, W]`` tensor in [0, 1] (:func:`tensor_to_pil`) atomically
    (:func:`psrl.fileio.write_bytes_atomic`: a killed run never leaves a truncated image). The format follows the
    suffix (``.png``, ``.jpg``, ``.webp``, ...; PNG when PIL does not know it). Returns ``path``.

    Raises:
        ValueError: a tensor that is not ``[3, H, W]``.
    """
    pil = image if isinstance(image, Image.Image) else tensor_to_pil(image)
    fmt = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    buf = io.BytesIO()
    pil.save(buf, format=fmt)
    return write_bytes_atomic(path, buf.getvalue())


__all__ = ["IMAGE_SUFFIXES", "MAX_ASPECT", "MIN_SIDE", "CachedImages", "ImageLoadError", "check_image",
           "group_by_size", "image_size", "load_image", "pil_to_tensor", "save_image", "size_problem", "tensor_to_pil",
           "to_rgb"]
