"""What travels between the reward server and its client: PNG images (base64 in JSON), records as their JSON, and
RewardOutputs with NaN as ``null`` (strict JSON has no NaN) and tensors as lists."""
from __future__ import annotations

import base64
import io
import math
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from psrl.rewards.base import RewardOutput


def encode_png(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_png(data: str, where: str) -> Image.Image:
    try:
        raw = base64.b64decode(data, validate=True)
        img = Image.open(io.BytesIO(raw))
        img.load()
    except (ValueError, UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{where}: not a base64-encoded image ({type(e).__name__}: {e})") from e
    return img.convert("RGB")


def to_jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().tolist()
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


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
