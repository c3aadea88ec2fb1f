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

:data:`MIN_SIDE` is the smallest side any reference or generated image may have (policies and rewards agree on it).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIN_SIDE = 8  # pixels; below this no detector, embedder or VAE input makes sense

ImageSource = Union[str, Path, bytes, BinaryIO]

_Color = Union[str, tuple]


class ImageLoadError(ValueError):
    """An image file is missing, unreadable, truncated, too small or too large. The message says which and why."""


def _open(source: ImageSource) -> Image.Image:
    if isinstance(source, (bytes, bytearray)):
        return Image.open(io.BytesIO(source))
    return Image.open(source)


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
               max_pixels: int | None = None) -> Image.Image:
    """Decode an image file (path, bytes or binary file) to an RGB ``PIL.Image`` (uint8, H x W x 3).

    Args:
        source: a path, the file's bytes, or an open binary file.
        background: colour transparent pixels are composited onto (PIL colour name or RGB tuple).
        min_side: smallest allowed side in pixels (0 disables the check).
        max_pixels: largest allowed ``width * height``, checked from the header *before* decoding the pixels
            (the reward server's guard against decompression bombs); ``None`` keeps PIL's own bomb limit.

    Raises:
        ImageLoadError: missing file, not an image, truncated or corrupt data, smaller than ``min_side`` or larger
            than ``max_pixels`` (the message names the file and the reason).
    """
    where = str(source) if isinstance(source, (str, Path)) else "image data"
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise ImageLoadError(f"{where}: file not found")
    try:
        with _open(source) as im:
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageLoadError(f"{where}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
            im.load()
            img = ImageOps.exif_transpose(im)
            img = to_rgb(img, background=background)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageLoadError(f"{where}: too many pixels ({e})") from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageLoadError(f"{where}: unreadable image ({type(e).__name__}: {e})") from e
    if min_side and min(img.size) < min_side:
        raise ImageLoadError(f"{where}: image is {img.size[0]}x{img.size[1]}, smaller than the minimum side "
                             f"{min_side}")
    return img


def check_image(path: str | Path, *, min_side: int = MIN_SIDE) -> str | None:
    """``None`` when ``path`` decodes fully (the same rules as :func:`load_image`), else the reason."""
    try:
        load_image(path, min_side=min_side)
    except ImageLoadError as e:
        return str(e)
    return None


__all__ = ["ImageLoadError", "MIN_SIDE", "check_image", "load_image", "to_rgb"]
