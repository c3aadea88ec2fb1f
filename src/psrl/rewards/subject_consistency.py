"""Pairwise subject-consistency reward (PSR): detect each subject in the generated image and in its reference,
crop, embed, cosine; reward = mean over subjects.

Modes
-----
``honest`` (default)
    Candidate boxes are sorted by detector confidence. Subjects that share a phrase (two dogs) are matched to the
    detected boxes by an optimal one-to-one assignment (Hungarian, :func:`psrl.rewards.matching.assign` on the
    cosine matrix between reference embeddings and the top ``k + extra_candidates`` boxes), so each detection
    serves at most one subject. A subject with no box is *missing*: it scores 0 (``missing: zero``, the training
    default) or makes the sample NaN (``missing: nan``); either way it is listed in ``details["missing_subjects"]``.
    A reference in which the phrase is not found is embedded whole (a reference photo usually *is* the subject);
    this is flagged in ``details["reference_whole_image"]``.
``psrbench_compat``
    Reproduces the PSRBench scorer (wang-shulei/PSR@c719168 ``eval/suject-consistency/eval-{2,3,4}-subject-sc.py``)
    for comparability with published numbers: the *first*
    box over the threshold in detector query order, coordinates truncated with ``int()``; when there is no box the
    whole image (generated or reference) is embedded instead, so a missing subject still gets a (lower, non-zero)
    similarity; for 2-subject records whose phrases are equal, subject 1 takes box 0 and subject 2 box 1 (no
    identity matching); samples that raise are NaN with the reason (the reference drops them from the mean,
    which ``nanmean`` does too). Use ``embedder: {kind: dino_vit}`` (the default) and Grounding DINO to match it.

Reference crops and their embeddings are cached by (reference file, mtime, phrase, mode), so a group of G images
of one record costs one reference pass.
"""
from __future__ import annotations

import math
import os
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from psrl.data.records import Record
from psrl.rewards.base import RewardOutput
from psrl.cache import BoundedCache
from psrl.rewards.detection import Detections, build_detector, detect_phrases
from psrl.rewards.embedding import build_embedder
from psrl.rewards.images import ReferenceImageError, ReferenceImages, crop_box, scorable_images
from psrl.rewards.isolation import Failed, per_item
from psrl.rewards.loading import TINY, with_default_path
from psrl.rewards.matching import assign

MODES = ("honest", "psrbench_compat")


class SubjectConsistencyReward:
    """Pairwise subject consistency (PSR, arXiv 2512.01236): each subject is detected in the generated image and
    in its reference, both crops are embedded, and the reward is the mean cosine similarity over the subjects.

    Args:
        device: torch device of the detector and the embedder.
        detector: ``{kind: grounding_dino | owlv2, path, box_threshold, ...}``, a kind name or a built detector
            (default Grounding DINO).
        embedder: ``{kind: dino_vit | dinov2 | clip, path, ...}``, a kind name or a built embedder (default DINO
            ViT, as PSRBench).
        mode: ``honest`` (identity matching by Hungarian assignment) or ``psrbench_compat`` (the released
            PSRBench scorer, wang-shulei/PSR@c719168); see the module docstring.
        missing: a subject found nowhere in the image scores ``zero`` (training default) or makes the sample
            ``nan``.
        extra_candidates: boxes beyond the subject count considered in the assignment (honest mode).
        path: only ``tiny`` (tiny random detector and embedder, offline); real weights go in detector.path and
            embedder.path.
        dtype: dtype of the detector and embedder weights (default float32 on CPU).
        cache_size: reference embeddings kept (keyed by file, mtime, phrase and mode).
        background: colour transparent reference pixels are composited onto.

    Records arrive resolved (absolute reference paths, :func:`psrl.data.records.load_records`); the reward takes no
    data root.

    Score range: [-1, 1], a mean of cosine similarities; a missing subject counts 0 with ``missing: zero``.
    NaN policy: a sample whose image has NaN pixels or breaks the shared size rule (psrl.rewards.images); a
        reference that cannot be loaded; a detector or embedder error on that sample; with ``missing: nan`` a
        subject not found. The reason is in the output's failures.
    """

    name = "subject_consistency"

    def __init__(self, device="cpu", *, detector=None, embedder=None, mode: str = "honest", missing: str = "zero",
                 extra_candidates: int = 0, path: str | None = None, dtype=None, cache_size: int = 4096,
                 background: str | tuple = "white"):
        if mode not in MODES:
            raise ValueError(f"subject_consistency: mode must be one of {MODES}, got {mode!r}")
        if missing not in ("zero", "nan"):
            raise ValueError(f"subject_consistency: missing must be 'zero' or 'nan', got {missing!r}")
        if extra_candidates < 0:
            raise ValueError(f"subject_consistency: extra_candidates must be >= 0, got {extra_candidates}")
        if path not in (None, TINY):
            raise ValueError("subject_consistency: top-level 'path' may only be 'tiny'; give detector.path and "
                             "embedder.path for real weights")
        self.mode, self.missing, self.extra_candidates = mode, missing, extra_candidates
        self.detector = build_detector(with_default_path(detector or {"kind": "grounding_dino"}, path),
                                       device=device, dtype=dtype)
        self.embedder = build_embedder(with_default_path(embedder or {"kind": "dino_vit"}, path),
                                       device=device, dtype=dtype)
        self.refs = ReferenceImages(background=background)
        self.cache_size = cache_size
        self._ref_cache = BoundedCache(cache_size, eviction="lru")  # key -> (embedding, whole_image_used)
        self.stats = {"reference_passes": 0, "reference_cache_hits": 0}

    # ------------------------------------------------------------------ references
    def _ref_key(self, image: str | None, phrase: str) -> tuple:
        p = self.refs.path(image)
        try:
            mtime = os.stat(p).st_mtime_ns
        except OSError as e:
            raise ReferenceImageError(f"reference image not found: {p}") from e
        return (str(p), mtime, phrase.lower(), self.mode)

    def reference_embeddings(self, wanted: dict[tuple, tuple[str, str]]) -> dict[tuple, tuple[Tensor, bool] | str]:
        """``{key: (image path, phrase)}`` -> ``{key: (embedding, whole_image_used) | failure reason}``; one batched
        detection and one batched embedding pass over the uncached references."""
        out: dict[tuple, tuple[Tensor, bool] | str] = {}
        todo_keys, todo_imgs, todo_phrases = [], [], []
        for key, (image, phrase) in wanted.items():
            cached = self._ref_cache.get(key)
            if cached is not None:
                out[key] = cached
                self.stats["reference_cache_hits"] += 1
                continue
            try:
                img = self.refs.load(image)
            except ReferenceImageError as e:
                out[key] = str(e)
                continue
            todo_keys.append(key)
            todo_imgs.append(img)
            todo_phrases.append(phrase)
        if not todo_keys:
            return out
        self.stats["reference_passes"] += 1
        n = range(len(todo_keys))
        dets = per_item(lambda ix: self.detector.detect([todo_imgs[i] for i in ix], [todo_phrases[i] for i in ix]),
                        n, "subject_consistency detector on the reference")
        crops, whole = [], []
        for img, det in zip(todo_imgs, dets):
            crop = None if isinstance(det, Failed) else self._first_crop(img, det)
            whole.append(crop is None)
            crops.append(img if crop is None else crop)
        ok = [i for i in n if not isinstance(dets[i], Failed)]
        embs = dict(zip(ok, per_item(lambda ix: self.embedder.embed([crops[i] for i in ix]), ok,
                                     "subject_consistency embedder on the reference")))
        for i, key, w in zip(n, todo_keys, whole):
            got = dets[i] if isinstance(dets[i], Failed) else embs[i]
            if isinstance(got, Failed):  # not cached: a transient failure (out of memory) may pass next time
                out[key] = got.reason
                continue
            entry = (got, w)
            out[key] = entry
            self._ref_cache.put(key, entry)
        return out

    def _first_crop(self, img: Image.Image, det: Detections, index: int = 0) -> Image.Image | None:
        """Honest: the ``index``-th most confident box; compat: the ``index``-th box in raw order, int-truncated."""
        d = det if self.mode == "psrbench_compat" else det.by_score()
        if len(d) <= index:
            return None
        return crop_box(img, d.boxes[index], truncate=self.mode == "psrbench_compat")

    # ------------------------------------------------------------------ scoring
    def __call__(self, images: Tensor | Sequence, records: Sequence[Record]) -> RewardOutput:
        pils, failures, _ = scorable_images(images, records, self.name)
        B = len(records)
        # 1. validate records, collect reference keys
        ref_keys: list[list[tuple] | None] = [None] * B
        wanted: dict[tuple, tuple[str, str]] = {}
        for b, rec in enumerate(records):
            if failures[b]:
                continue
            try:
                if not rec.subjects:
                    raise ReferenceImageError("record has no subjects")
                keys = []
                for i, s in enumerate(rec.subjects):
                    if not s.phrase or not s.phrase.strip():
                        raise ReferenceImageError(f"subject {i} has an empty phrase")
                    key = self._ref_key(s.image, s.phrase.strip())
                    wanted[key] = (s.image, s.phrase.strip())
                    keys.append(key)
                ref_keys[b] = keys
            except ReferenceImageError as e:
                failures[b] = str(e)
        ref_embs = self.reference_embeddings(wanted)
        for b in range(B):
            if ref_keys[b] is not None and not failures[b]:
                bad = [ref_embs[k] for k in ref_keys[b] if isinstance(ref_embs[k], str)]
                if bad:
                    failures[b] = bad[0]
        # 2. one detection per (sample, distinct phrase), batched over the whole batch
        phrases = {b: [s.phrase for s in records[b].subjects] for b in range(B) if not failures[b]}
        det_of = detect_phrases(self.detector, pils, phrases, failures, "subject_consistency detector")
        # 3. candidate crops per (sample, phrase), embedded in one pass
        cand_crops: list[Image.Image] = []
        crop_owner: list[int] = []  # the sample each candidate crop belongs to
        cand_index: dict[tuple[int, str], list[int]] = {}
        compat_index: dict[tuple[int, int], int | None] = {}
        for b in range(B):
            if failures[b]:
                continue
            subjects = records[b].subjects
            if self.mode == "psrbench_compat":
                phrases = [s.phrase.strip().lower() for s in subjects]
                same_pair = len(phrases) == 2 and phrases[0] == phrases[1]
                for i, s in enumerate(subjects):
                    det = det_of[(b, s.phrase.strip().lower())]
                    crop = self._first_crop(pils[b], det, index=i if same_pair else 0)
                    compat_index[(b, i)] = len(cand_crops)
                    cand_crops.append(pils[b] if crop is None else crop)
                    crop_owner.append(b)
                continue
            for p, k in Counter(s.phrase.strip().lower() for s in subjects).items():
                d = det_of[(b, p)].by_score()
                idx = []
                for box in d.boxes[: k + self.extra_candidates]:
                    crop = crop_box(pils[b], box)
                    if crop is not None:
                        idx.append(len(cand_crops))
                        cand_crops.append(crop)
                        crop_owner.append(b)
                cand_index[(b, p)] = idx
        cand_embs = per_item(self.embedder.embed, cand_crops, "subject_consistency embedder")
        for b, emb in zip(crop_owner, cand_embs):  # a sample whose crop failed to embed fails alone
            if isinstance(emb, Failed) and not failures[b]:
                failures[b] = emb.reason
        # 4. similarities, assignment, aggregation
        scores = torch.full((B,), float("nan"))
        per_subject: list[list[float]] = [[] for _ in range(B)]
        missing: list[list[str]] = [[] for _ in range(B)]
        ref_whole: list[list[bool]] = [[] for _ in range(B)]
        weakest: list[str | None] = [None] * B
        weakest_score = torch.full((B,), float("nan"))
        for b in range(B):
            if failures[b]:
                continue
            subjects = records[b].subjects
            refs = [ref_embs[k] for k in ref_keys[b]]
            ref_whole[b] = [bool(w) for _, w in refs]
            sims = [float("nan")] * len(subjects)
            if self.mode == "psrbench_compat":
                for i in range(len(subjects)):
                    sims[i] = float(cand_embs[compat_index[(b, i)]] @ refs[i][0])
            else:
                groups = defaultdict(list)
                for i, s in enumerate(subjects):
                    groups[s.phrase.strip().lower()].append(i)
                for p, members in groups.items():
                    idx = cand_index[(b, p)]
                    if idx:
                        ref_mat = torch.stack([refs[i][0] for i in members])           # [k, d]
                        cands = torch.stack([cand_embs[i] for i in idx])                 # [m, d]
                        sim = (ref_mat @ cands.T).numpy().astype(np.float64)             # [k, m]
                        for r, c in enumerate(assign(sim)):
                            if c is not None:
                                sims[members[r]] = float(sim[r, c])
                    for i in members:
                        if math.isnan(sims[i]):
                            missing[b].append(subjects[i].phrase)
            if missing[b] and self.missing == "nan":
                failures[b] = "subject(s) not detected in the generated image: " + ", ".join(missing[b])
                per_subject[b] = sims
                continue
            sims = [0.0 if math.isnan(v) else v for v in sims]
            per_subject[b] = sims
            j = int(np.argmin(sims))
            weakest[b], weakest_score[b] = subjects[j].phrase, sims[j]
            scores[b] = float(np.mean(sims))
        details = {"per_subject": per_subject, "weakest_subject": weakest, "weakest_score": weakest_score,
                   "missing_subjects": missing, "reference_whole_image": ref_whole}
        return RewardOutput(scores=scores, details=details, failures=failures)
