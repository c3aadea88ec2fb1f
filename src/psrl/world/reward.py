"""``pocket_subjects``: the pocket world's reward and PocketBench's metric, read from the world's known rendering.

Per sample (images ``[B, 3, H, W]`` in [0, 1], drawn at 64x64; records whose subject phrases name pocket-world
subjects, e.g. ``"red striped star"``):

- ``identity`` in [0, 1]: subjects are found by :func:`psrl.world.detect.detect_subjects` (no learned detector);
  each record subject is matched to one detection by an optimal one-to-one assignment
  (:func:`psrl.rewards.matching.assign`, as psrl's ``subject_consistency`` reward matches boxes) on the share of
  its three attributes (shape, colour, texture) the detection has; a subject left without a detection scores 0
  and is listed in ``details["missing_subjects"]``. The sample's identity is the mean over its subjects.
- ``semantic`` in [0, 1]: the instruction's constraints (:func:`psrl.world.scenes.parse_instruction`) checked on
  the matched detections: a relation by PSRBench's box-centre rule (:func:`psrl.rewards.position.position_score`),
  ``bigger`` by box area, an action by the shadow under the subject, the background by the nearest world
  background to the image's frame (within ``BACKGROUND_TOLERANCE``), an order by box centres left to right (share of
  neighbouring pairs in order). A constraint on a missing subject scores 0. The mean over constraints; an
  instruction with none the world can check is NaN with that reason.
- ``identity_dense`` in [0, 1]: the same matching, each subject scored by the graded evidence for its attributes
  (:meth:`psrl.world.detect.Detection.evidence`: its shape template's IoU, its colour's vote share, its texture's
  evidence) instead of 0/1 agreement, for a reward with more than four levels per subject; ~0.95 on clean renders.
- ``identity_gain`` in [-1, 1]: ``identity`` minus ``identity_control``, the identity the same image scores against
  ``CONTROL_DRAWS`` sets of *other* subjects (a reference-swap control: for each sample, sets of as many subjects
  drawn without the record's own from the same split, held-out or training, seeded by the record's phrases, so the
  control is deterministic and independent of the batch). A generator that ignores its references scores ~0 however
  much clutter the detector can match by chance (best-of-many-blobs matching gives a fresh transformer decoded by
  the pocket VAE ~0.3 identity); ground-truth scenes score ~0.7. This is the identity a reference carries.
  ``details["attributes"]`` splits both by attribute (``shape``, ``colour``, ``texture`` and each ``*_control``),
  which says which attribute a generator carries.
- ``fidelity`` in [0, 1]: the share of pixels the world's palette explains: within ``FIDELITY_TOLERANCE`` (0-255
  units) of a blend the renderer makes (background with a subject colour, the texture or the shadow; a subject
  colour with the texture). Clean renders score ~1, muddy or noisy images less.

``score`` picks which one is the reward (``mean``: the mean of identity, semantic and fidelity, semantic left out
where NaN); all of them are always in ``details``. A record subject that is not a pocket-world subject makes the
sample NaN with the reason.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

from psrl.data.records import Record
from psrl.rewards.base import RewardOutput
from psrl.rewards.images import scorable_images
from psrl.rewards.matching import assign
from psrl.rewards.position import position_score
from psrl.world.detect import Detection, background_colour, detect_subjects
from psrl.world.scenes import Constraint, parse_instruction
from psrl.world.subjects import (BACKGROUNDS, COLOURS, SHADOW_RGB, TEXTURE_RGB, Subject, split_subjects,
                                 subjects_by_phrase)

Score = Literal["identity", "identity_dense", "identity_gain", "semantic", "fidelity", "mean"]
CONTROL_DRAWS = 8  # control subject sets per sample: the control's standard error over a 70-entry bench is ~0.01
BACKGROUND_TOLERANCE = 30.0  # 0-255 Euclidean distance from the named background to the image's frame colour
FIDELITY_TOLERANCE = 24.0  # 0-255 Euclidean distance from a pixel to the nearest rendered blend


@lru_cache(maxsize=512)
def _detections(data: bytes, shape: tuple[int, int, int]) -> tuple[Detection, ...]:
    """:func:`detect_subjects` memoised on the pixels: PocketBench's three dimensions are three instances of this
    reward scoring the same image, and a GRPO group repeats nothing, so a small cache pays only on the former."""
    return tuple(detect_subjects(np.frombuffer(data, np.uint8).reshape(shape)))


def match_subjects(subjects, detections: list[Detection]) -> list[int | None]:
    """For each subject, the index of its detection under the optimal one-to-one assignment maximising attribute
    agreement (ties broken by the silhouette's IoU with the subject's shape), or ``None`` when none is left."""
    if not detections or not subjects:
        return [None] * len(subjects)
    return assign([[d.matches(s) + 1e-3 * d.shape_iou[s.shape] for d in detections] for s in subjects])


def control_subjects(subjects: Sequence[Subject], draws: int = CONTROL_DRAWS) -> list[tuple[Subject, ...]]:
    """``draws`` sets of ``len(subjects)`` distinct *other* subjects for the reference-swap control: drawn without
    ``subjects`` from their split (the held-out subjects when all are held out, the training subjects when all are
    training ones, else every subject), with a generator seeded by the phrases (CRC-32), so the same record always
    gets the same control. Raises ``ValueError`` when the pool has too few other subjects."""
    train, held = split_subjects()
    pool = held if set(subjects) <= set(held) else train if set(subjects) <= set(train) else train + held
    pool = [s for s in pool if s not in subjects]
    if len(pool) < len(subjects):
        raise ValueError(f"control: {len(subjects)} subjects but only {len(pool)} others to draw from")
    rng = np.random.default_rng(zlib.crc32("|".join(s.phrase for s in subjects).encode()))
    return [tuple(pool[int(i)] for i in rng.choice(len(pool), size=len(subjects), replace=False))
            for _ in range(draws)]


ATTRIBUTES = ("shape", "colour", "texture")


def agreement(subjects: Sequence[Subject], matched: Sequence[Detection | None]) -> np.ndarray:
    """``[len(subjects), 3]`` float 0/1: whether each subject's matched detection (``None``: missing, all 0) has its
    shape, colour and texture (:data:`ATTRIBUTES`); a row's mean is :meth:`Detection.matches`."""
    return np.array([[0.0] * 3 if d is None else [float(getattr(d, a) == getattr(s, a)) for a in ATTRIBUTES]
                     for s, d in zip(subjects, matched)]).reshape(len(subjects), 3)


def control_agreement(subjects: Sequence[Subject], detections: list[Detection]) -> np.ndarray:
    """``[3]``: the reference-swap control's share of shape, colour and texture agreement, averaged over the
    subjects of every :func:`control_subjects` draw, each matched to ``detections`` on its own."""
    rows = [agreement(c, [None if j is None else detections[j] for j in match_subjects(c, detections)]).mean(0)
            for c in control_subjects(subjects)]
    return np.mean(rows, axis=0)


def constraint_score(c: Constraint, dets: list[Detection | None], arr: np.ndarray) -> float:
    """One constraint in [0, 1] on the detections matched to the record's subjects (``None``: missing -> 0)."""
    if c.kind == "background":
        name, dist, _ = background_colour(arr)
        return float(name == c.value and dist <= BACKGROUND_TOLERANCE)
    involved = [dets[i] for i in c.subjects]
    if any(d is None for d in involved):
        return 0.0
    if c.kind == "bigger":
        return float(involved[0].area > involved[1].area)
    if c.kind == "action":
        return float(involved[0].shadow == (c.value == "jumping"))
    if c.kind == "relation":
        return float(position_score(involved[0].box, involved[1].box, c.value))
    if c.kind == "order":
        xs = [(d.box[0] + d.box[2]) / 2 for d in involved]
        return float(np.mean([a < b for a, b in zip(xs, xs[1:])]))
    raise ValueError(f"unknown constraint kind {c.kind!r}")


def _blend_segments(background: str) -> tuple[np.ndarray, np.ndarray]:
    """Start and end points ``[S, 3]`` of every colour blend the renderer can produce on ``background``."""
    from_background = [*COLOURS.values(), TEXTURE_RGB, SHADOW_RGB]  # background to each, then colour to texture
    starts = [BACKGROUNDS[background]] * len(from_background) + list(COLOURS.values())
    ends = from_background + [TEXTURE_RGB] * len(COLOURS)
    return np.array(starts, dtype=np.float32), np.array(ends, dtype=np.float32)


FIDELITY_BIN = 8  # the fidelity lookup table's bin width per channel (0-255 units); bins are judged by their centre


@lru_cache(maxsize=len(BACKGROUNDS))
def _fidelity_table(background: str) -> np.ndarray:
    """``[32, 32, 32]`` booleans: whether the centre of each RGB bin lies within ``FIDELITY_TOLERANCE`` of a blend
    the renderer makes on ``background`` (built once per background; a lookup then costs one index per pixel)."""
    a, b = _blend_segments(background)
    levels = np.arange(0, 256, FIDELITY_BIN, dtype=np.float32) + (FIDELITY_BIN - 1) / 2
    p = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 1, 3)
    ab = b - a
    t = np.clip(((p - a) * ab).sum(-1) / (ab * ab).sum(-1), 0.0, 1.0)
    dist = np.linalg.norm(p - (a + t[..., None] * ab), axis=-1).min(axis=1)
    return (dist <= FIDELITY_TOLERANCE).reshape(len(levels), len(levels), len(levels))


def palette_fidelity(arr: np.ndarray) -> float:
    """Share of the pixels of a uint8 ``[H, W, 3]`` image within ``FIDELITY_TOLERANCE`` of a rendered blend
    (segments in RGB between the palette colours the renderer mixes), on the world background nearest the frame;
    pixels are judged by the centre of their ``FIDELITY_BIN``-wide RGB bin (at most 3.5 units off per channel)."""
    q = arr.astype(np.intp) // FIDELITY_BIN
    return float(_fidelity_table(background_colour(arr)[0])[q[..., 0], q[..., 1], q[..., 2]].mean())


class PocketSubjectsReward:
    """The pocket world's reward; see the module docstring.

    Args:
        device: accepted for the reward signature; the reward runs on the CPU (no model).
        score: ``identity`` (default), ``identity_dense``, ``identity_gain``, ``semantic``, ``fidelity`` or ``mean``
            (identity, semantic, fidelity); another value raises ``ValueError``.

    Score range: [0, 1] for every ``score`` but ``identity_gain``, in [-1, 1].
    NaN policy: an unusable image; a record without subjects or with a subject phrase that is not a pocket-world
        subject; ``semantic``: an instruction with no constraint the world can check. The reason is in failures.
    """

    name = "pocket_subjects"

    def __init__(self, device="cpu", *, score: Score = "identity"):
        if score not in get_args(Score):
            raise ValueError(f"pocket_subjects: score must be one of {get_args(Score)}, got {score!r}")
        self.score = score

    def __call__(self, images: Tensor | Sequence, records: Sequence[Record]) -> RewardOutput:
        pils, failures, _ = scorable_images(images, records, self.name)
        B = len(records)
        parts = {k: torch.full((B,), float("nan"))
                 for k in ("identity", "identity_dense", "identity_control", "identity_gain", "semantic", "fidelity")}
        per_subject: list[list[float]] = [[] for _ in range(B)]
        attributes: list[dict] = [{} for _ in range(B)]
        missing: list[list[str]] = [[] for _ in range(B)]
        detected: list[list[str]] = [[] for _ in range(B)]
        constraints: list[list[dict]] = [[] for _ in range(B)]
        lookup = subjects_by_phrase()
        for b, rec in enumerate(records):
            if failures[b]:
                continue
            phrases = [s.phrase.strip().lower() for s in rec.subjects]
            unknown = [p for p in phrases if p not in lookup]
            if not phrases or unknown:
                failures[b] = (f"subject phrase {unknown[0]!r} is not a pocket-world subject (e.g. 'red striped star')"
                               if unknown else "record has no subjects")
                continue
            subjects = [lookup[p] for p in phrases]
            arr = np.asarray(pils[b])
            dets = list(_detections(arr.tobytes(), arr.shape))
            detected[b] = [f"{d.colour} {d.texture} {d.shape} at {list(d.box)}" for d in dets]
            matched = [None if j is None else dets[j] for j in match_subjects(subjects, dets)]
            agree, control = agreement(subjects, matched), control_agreement(subjects, dets)
            per_subject[b] = agree.mean(1).tolist()
            attributes[b] = {a: float(v) for a, v in zip(ATTRIBUTES, agree.mean(0))}
            attributes[b].update({f"{a}_control": float(v) for a, v in zip(ATTRIBUTES, control)})
            missing[b] = [p for p, d in zip(phrases, matched) if d is None]
            parts["identity"][b] = float(agree.mean())
            parts["identity_control"][b] = float(control.mean())
            parts["identity_gain"][b] = parts["identity"][b] - parts["identity_control"][b]
            parts["identity_dense"][b] = float(np.mean([0.0 if d is None else d.evidence(s)
                                                        for s, d in zip(subjects, matched)]))
            found = parse_instruction(rec.prompt, phrases)
            scored = [(c, constraint_score(c, matched, arr)) for c in found]
            constraints[b] = [{"kind": c.kind, "subjects": list(c.subjects), "value": c.value, "score": v}
                              for c, v in scored]
            if scored:
                parts["semantic"][b] = float(np.mean([v for _, v in scored]))
            parts["fidelity"][b] = palette_fidelity(arr)
        if self.score == "mean":
            scores = torch.stack([parts[k] for k in ("identity", "semantic", "fidelity")], dim=1).nanmean(dim=1)
        else:
            scores = parts[self.score].clone()
        for b in range(B):
            if math.isnan(float(scores[b])) and not failures[b]:
                failures[b] = ("the instruction states nothing the pocket world can check (no background, size, "
                               "action, relation or order from its templates)")
        details = {**parts, "per_subject": per_subject, "attributes": attributes, "missing_subjects": missing,
                   "constraints": constraints, "detected": detected}
        return RewardOutput(scores=scores, details=details, failures=failures)
