"""Position reward: the PSRBench / T2I-CompBench (arXiv 2307.06350) box-centre rule, as in
wang-shulei/PSR@c719168 ``eval/semantic-alignment/position-alignment.py``.

``parse_relation`` takes the first phrase of the fixed vocabulary found in the instruction (list order matters:
"to the left of" before "above", ...). ``position_score(box_a, box_b, relation)`` scores "subject A <relation>
subject B" from xyxy boxes in image coordinates (y grows downward):

* dx = cx_b - cx_a, dy = cy_b - cy_a, IoU of the two boxes; iou_threshold 0.1, distance_threshold 150 px.
* left of: dx > 0 and |dx| > |dy| -> 1 if IoU < 0.1 else 0.1 / IoU; otherwise 0. Right of: dx < 0, same rule.
* above / on top of: dy > 0 -> 1 if IoU < 0.1 else 0.1 / IoU (no dominance check); below / under: dy < 0.
* next to / near / on side of (kept from the original rule; not reachable through the PSRBench vocabulary):
  1 if |dx| < 150 or |dy| < 150 else 150 / max(|dx|, |dy|).
* anything else, or a degenerate union: 0.

The reward detects subject 1 and subject 2 of the record in the generated image; an undetected subject scores 0
(reason in ``details["missing_subjects"]``). No relation in the instruction (and none in ``tags["relation"]``) ->
NaN with the reason (PSRBench silently drops such samples). ``mode: honest`` takes each phrase's most confident
box; when both subjects share a phrase it takes the two most confident boxes and scores the better of the two
orderings. ``mode: psrbench_compat`` takes box 0 in detector order for both (equal phrases then score 0).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from psrl.data.records import Record
from psrl.rewards.base import RewardOutput
from psrl.rewards.detection import build_detector, detect_phrases
from psrl.rewards.images import scorable_images
from psrl.rewards.loading import TINY, with_default_path
from psrl.rewards.subject_consistency import MODES

SPATIAL_VOCAB = ("to the left of", "to the right of", "on the left of", "on the right of", "above", "on top of",
                 "below", "under")
IOU_THRESHOLD = 0.1
DISTANCE_THRESHOLD = 150.0


def parse_relation(instruction: str) -> str | None:
    """The first phrase of :data:`SPATIAL_VOCAB` (in list order) that occurs in ``instruction``, else ``None``."""
    for phrase in SPATIAL_VOCAB:
        if phrase in instruction:
            return phrase
    return None


def box_iou(box_a, box_b) -> float:
    ax1, ay1, ax2, ay2 = (float(v) for v in box_a)
    bx1, by1, bx2, by2 = (float(v) for v in box_b)
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    if union <= 0:
        raise ZeroDivisionError("degenerate boxes: union area is 0")
    return inter / union


def position_score(box_a, box_b, relation: str) -> float:
    """Score of "A <relation> B" for xyxy boxes; see the module docstring for the rule."""
    try:
        iou = box_iou(box_a, box_b)
    except ZeroDivisionError:
        return 0.0
    cax, cay = (float(box_a[0]) + float(box_a[2])) / 2, (float(box_a[1]) + float(box_a[3])) / 2
    cbx, cby = (float(box_b[0]) + float(box_b[2])) / 2, (float(box_b[1]) + float(box_b[3])) / 2
    dx, dy = cbx - cax, cby - cay

    def overlap_rule() -> float:
        return 1.0 if iou < IOU_THRESHOLD else IOU_THRESHOLD / iou

    if relation in ("to the left of", "on the left of", "left"):
        return overlap_rule() if dx > 0 and abs(dx) > abs(dy) else 0.0
    if relation in ("to the right of", "on the right of", "right"):
        return overlap_rule() if dx < 0 and abs(dx) > abs(dy) else 0.0
    if relation in ("above", "on top of"):
        return overlap_rule() if dy > 0 else 0.0
    if relation in ("below", "under"):
        return overlap_rule() if dy < 0 else 0.0
    if relation in ("next to", "near", "on side of"):
        if abs(dx) < DISTANCE_THRESHOLD or abs(dy) < DISTANCE_THRESHOLD:
            return 1.0
        return DISTANCE_THRESHOLD / max(abs(dx), abs(dy))
    return 0.0


class PositionReward:
    """PSRBench's position score (the T2I-CompBench box-centre rule, arXiv 2307.06350): detect subject 1 and
    subject 2 and score "subject 1 <relation> subject 2" from their box centres and overlap.

    Args:
        device: torch device of the detector.
        detector: ``{kind: grounding_dino | owlv2, path, box_threshold, ...}``, a kind name or a built detector
            (default Grounding DINO).
        mode: ``honest`` (most confident box per phrase; equal phrases take the better ordering of the two best
            boxes) or ``psrbench_compat`` (box 0 in detector order, wang-shulei/PSR@c719168).
        path: only ``tiny`` (a tiny random detector, offline); real weights go in detector.path.
        dtype: dtype of the detector weights.

    Score range: [0, 1]; 1 when the relation holds with IoU < 0.1, 0.1 / IoU when the boxes overlap more, 0 when it
        does not hold or a subject is not detected.
    NaN policy: a sample whose image has NaN pixels or breaks the shared size rule (psrl.rewards.images); a record
        with fewer than 2 subjects or an empty phrase; no spatial relation in the instruction or tags["relation"]
        (PSRBench drops such samples silently); a detector error on that sample.
    """

    name = "position"

    def __init__(self, device="cpu", *, detector=None, mode: str = "honest", path: str | None = None, dtype=None):
        if mode not in MODES:
            raise ValueError(f"position: mode must be one of {MODES}, got {mode!r}")
        if path not in (None, TINY):
            raise ValueError("position: top-level 'path' may only be 'tiny'; give detector.path for real weights")
        self.mode = mode
        self.detector = build_detector(with_default_path(detector or {"kind": "grounding_dino"}, path),
                                       device=device, dtype=dtype)

    def __call__(self, images: Tensor | Sequence, records: Sequence[Record]) -> RewardOutput:
        pils, failures, _ = scorable_images(images, records, "position")
        B = len(records)
        relations: list[str | None] = [None] * B
        for b, rec in enumerate(records):
            if failures[b]:
                continue
            relations[b] = rec.tags.get("relation") or parse_relation(rec.prompt)
            if len(rec.subjects) < 2:
                failures[b] = f"position needs 2 subjects, record {rec.id!r} has {len(rec.subjects)}"
            elif any(not s.phrase.strip() for s in rec.subjects[:2]):
                failures[b] = "subject phrase is empty"
            elif relations[b] is None:
                failures[b] = "no spatial relation found in the instruction"
        phrases = {b: [s.phrase for s in records[b].subjects[:2]] for b in range(B) if not failures[b]}
        det_of = detect_phrases(self.detector, pils, phrases, failures, "position detector")
        scores = torch.full((B,), float("nan"))
        missing: list[list[str]] = [[] for _ in range(B)]
        boxes_out: list[list | None] = [None] * B
        for b in range(B):
            if failures[b]:
                continue
            s1, s2 = (s.phrase.strip().lower() for s in records[b].subjects[:2])
            d1, d2 = det_of[(b, s1)], det_of[(b, s2)]
            if self.mode == "honest":
                d1, d2 = d1.by_score(), d2.by_score()
            same = s1 == s2
            if len(d1) == 0:
                missing[b].append(s1)
            if len(d2) == 0 or (same and len(d2) < 2 and self.mode == "honest"):
                missing[b].append(s2)
            if missing[b]:
                scores[b] = 0.0
                continue
            if same and self.mode == "honest":
                a, c = d1.boxes[0], d1.boxes[1]
                scores[b] = max(position_score(a, c, relations[b]), position_score(c, a, relations[b]))
            else:
                a, c = d1.boxes[0], d2.boxes[0]
                if self.mode == "psrbench_compat":
                    a, c = a.trunc(), c.trunc()
                scores[b] = position_score(a, c, relations[b])
            boxes_out[b] = [a.tolist(), c.tolist()]
        details = {"relation": relations, "missing_subjects": missing, "boxes": boxes_out}
        return RewardOutput(scores=scores, details=details, failures=failures)
