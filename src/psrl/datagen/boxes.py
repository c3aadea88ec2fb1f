"""Pure box geometry for grounding and Position instructions. Boxes are ``[x1, y1, x2, y2]`` in pixels, y down."""
from __future__ import annotations

from collections.abc import Sequence

Box = Sequence[float]


def box_area(b: Box) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def box_iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


def clamp_box(b: Box, width: int, height: int) -> list[float]:
    return [min(max(b[0], 0.0), width), min(max(b[1], 0.0), height), min(max(b[2], 0.0), width),
            min(max(b[3], 0.0), height)]


def padded_crop_box(b: Box, width: int, height: int, padding: float) -> tuple[int, int, int, int]:
    """Integer crop rectangle: ``b`` grown by ``padding`` x its size on each side, clamped to the image."""
    w, h = b[2] - b[0], b[3] - b[1]
    x1, y1 = max(0, int(b[0] - padding * w)), max(0, int(b[1] - padding * h))
    # int(): boxes may hold numpy floats, whose round() stays a numpy float
    x2, y2 = min(width, int(round(b[2] + padding * w))), min(height, int(round(b[3] + padding * h)))  # noqa: RUF046
    return x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)


def relation_from_boxes(a: Box, b: Box, *, max_iou: float = 0.1) -> str | None:
    """The PSRBench relation that holds between subject ``a`` and subject ``b`` by the position metric's own rule
    (wang-shulei/PSR@c719168 ``eval/semantic-alignment/position-alignment.py``): along the dominant axis of the
    centre offset, and only when the boxes overlap less than ``max_iou`` (the metric scores 1 then). ``None``:
    ambiguous (overlapping boxes or identical centres)."""
    if box_iou(a, b) >= max_iou:
        return None
    dx = (b[0] + b[2]) / 2 - (a[0] + a[2]) / 2
    dy = (b[1] + b[3]) / 2 - (a[1] + a[3]) / 2
    if dx == 0 and dy == 0:
        return None
    if abs(dx) > abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    return "above" if dy > 0 else "below"
