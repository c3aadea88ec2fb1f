"""What travels between the reward server and its client: PNG images (base64 in JSON), records as their JSON, and
RewardOutputs with NaN as ``null`` (strict JSON has no NaN) and tensors as lists."""
from __future__ import annotations

import base64
import io
from typing import Any

import torch
from PIL import Image

from psrl.images import ImageLoadError, load_image
from psrl.rewards.base import RewardOutput, to_jsonable


class TooLarge(ValueError):
    """A request or one of its images is over a configured limit (the server answers 413)."""


def encode_png(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_png(data: str, where: str, *, max_pixels: int | None = None) -> Image.Image:
    """A base64-encoded image (PNG, or any format PIL reads) -> RGB ``PIL.Image`` through
    :func:`psrl.images.load_image` (EXIF orientation, 16-bit scaling, alpha onto white, minimum side).

    Raises:
        TooLarge: ``width * height`` (read from the header, before any pixel is decoded) exceeds ``max_pixels``, or
            PIL's decompression-bomb guard fired.
        ValueError: not base64, not an image, truncated, or smaller than :data:`psrl.images.MIN_SIDE`.
    """
    if not isinstance(data, str):
        raise TypeError(f"{where}: expected a base64 string, got {type(data).__name__}")
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError as e:
        raise ValueError(f"{where}: not base64 ({e})") from e
    try:
        # load_image reads the size from the header before decoding: an 81 KiB PNG can hold 8000x8000 pixels
        return load_image(raw, max_pixels=max_pixels)
    except ImageLoadError as e:
        raise (TooLarge if e.kind == "too_large" else ValueError)(f"{where}: {e}") from e


def output_to_json(out: RewardOutput) -> dict:
    return {"scores": to_jsonable(out.scores), "failures": list(out.failures), "details": to_jsonable(out.details)}


def output_from_json(data: dict, n: int) -> RewardOutput:
    scores = data.get("scores")
    if not isinstance(scores, list) or len(scores) != n:
        raise ValueError(f"reply has {len(scores) if isinstance(scores, list) else 'no'} scores for {n} images")
    values = [float("nan") if s is None else float(s) for s in scores]
    failures = data.get("failures") or [None] * n
    details = data.get("details") or {}
    return RewardOutput(scores=torch.tensor(values), details=details, failures=list(failures))


def join_outputs(parts: list[RewardOutput | None], reasons: list[str | None]) -> RewardOutput:
    """One output from single-sample outputs (``parts[i]`` scores sample ``i``); a ``None`` part is a sample the
    reward failed on: NaN with ``reasons[i]``. Per-sample details become lists (``None`` for failed samples); other
    details are taken from the first scored sample."""
    n = len(parts)
    scores = torch.full((n,), float("nan"))
    failures: list[str | None] = list(reasons)
    details: dict[str, Any] = {}
    for i, part in enumerate(parts):
        if part is None:
            continue
        scores[i] = part.scores[0]
        failures[i] = part.failures[0]
        for k, v in part.details.items():
            if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == 1:
                details.setdefault(k, [None] * n)[i] = v[0].tolist()
            elif isinstance(v, (list, tuple)) and len(v) == 1:
                details.setdefault(k, [None] * n)[i] = v[0]
            else:
                details.setdefault(k, v)
    return RewardOutput(scores=scores, details=details, failures=failures)


def slice_output(out: RewardOutput, start: int, stop: int) -> RewardOutput:
    """The rows ``start:stop`` of a batched output; per-sample detail entries are sliced, others copied."""
    n = len(out.scores)
    details = {}
    for k, v in out.details.items():
        if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == n:
            details[k] = v[start:stop]
        elif isinstance(v, (list, tuple)) and len(v) == n:
            details[k] = list(v[start:stop])
        else:
            details[k] = v
    return RewardOutput(scores=out.scores[start:stop], details=details, failures=out.failures[start:stop])
