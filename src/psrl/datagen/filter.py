"""Stage 8, ``filter``: keep samples whose references are consistent with their target, then drop near-duplicate
targets.

Pass 1 (per sample, sharded, resumable; manifest ``filter_scores``): the subject-consistency reward scores each
target against its references (detect, crop, embed, cosine, mean over subjects); rejected are unscorable samples
(``consistency_unscorable``, with the reward's reason), samples with a subject the reward cannot find in the target
(``subject_missing_in_target``), samples under ``filter.min_consistency`` (``low_consistency``) and, when
``filter.min_subject_consistency`` is set, samples with a subject under it (``weak_subject``). The target's
embedding is saved to ``embeddings/<id>.npy`` for pass 2.

Pass 2 (whole dataset, on the main process; manifest ``filter``): in input order, a kept target whose cosine
similarity to an earlier kept target exceeds ``filter.max_duplicate_cosine`` is dropped (``near_duplicate``).
Pass 2 is a pure function of pass 1's results, recomputed and written atomically on every run.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from psrl.datagen.config import DataPipelineConfig
from psrl.datagen.manifest import KEPT, read_manifest
from psrl.datagen.runner import BaseStage, kept, rejected
from psrl.fileio import atomic_path, write_jsonl_atomic
from psrl.images import load_image, pil_to_tensor
from psrl.data.records import Record, RecordError, SubjectRef, resolve_records

EMBED_DIR = "embeddings"

# (target images, records with reference subjects) -> per sample {"score": float (NaN = unscorable), "failure": reason
# or None, "per_subject": [float] or None, "missing": [phrase] (subjects the reward did not find in the target)}
ScoreFn = Callable[[Sequence[Image.Image], Sequence[Record]], list[dict]]
EmbedFn = Callable[[Sequence[Image.Image]], torch.Tensor]


def consistency_fn(cfg: DataPipelineConfig, dataset: Path, device) -> ScoreFn:
    """The configured subject-consistency reward as a :data:`ScoreFn`; each record's references are resolved under
    ``dataset`` first (a path that escapes it is that sample's failure, with the reason)."""
    from psrl.rewards.base import build_reward

    reward = build_reward(cfg.filter.reward, dict(cfg.filter.reward_args), device=device)

    def score(images, records):
        resolved, refused = [], {}
        for i, r in enumerate(records):
            try:
                resolved.append(resolve_records([r], dataset, source="filter")[0])
            except RecordError as e:
                resolved.append(r)
                refused[i] = str(e)
        out = reward([pil_to_tensor(im) for im in images], resolved)
        per_subject = out.details.get("per_subject") or [None] * len(records)
        missing = out.details.get("missing_subjects") or [[] for _ in records]
        rows = [{"score": s, "failure": f, "per_subject": p, "missing": list(m or [])}
                for s, f, p, m in zip(out.scores.tolist(), out.failures, per_subject, missing)]
        for i, why in refused.items():
            rows[i].update(score=math.nan, failure=why, per_subject=None)
        return rows

    return score


def save_array_atomic(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, array)


def near_duplicates(embeddings: np.ndarray, max_cosine: float) -> list[int | None]:
    """Greedy in order: ``result[i]`` is the index of the earlier *kept* row whose cosine with row ``i`` exceeds
    ``max_cosine`` (the most similar one), or ``None`` when row ``i`` is kept."""
    x = torch.as_tensor(embeddings, dtype=torch.float32)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    kept_rows: list[int] = []
    out: list[int | None] = []
    for i in range(len(x)):
        if kept_rows:
            sims = x[kept_rows] @ x[i]
            j = int(torch.argmax(sims))
            if float(sims[j]) > max_cosine:
                out.append(kept_rows[j])
                continue
        kept_rows.append(i)
        out.append(None)
    return out


class FilterScoresStage(BaseStage):
    name = "filter_scores"
    input_stage = "instructions"

    def __init__(self, cfg: DataPipelineConfig, dataset: str | Path, device="cpu", score: ScoreFn | None = None,
                 embed: EmbedFn | None = None):
        super().__init__(cfg, dataset, device)
        self.score, self.embed = score, embed
        self.batch_size = cfg.filter.batch_size

    def setup(self) -> None:
        if self.score is None:
            self.score = consistency_fn(self.cfg, self.dataset, self.device)
        if self.embed is None:
            from psrl.rewards.embedding import build_embedder

            embedder = build_embedder(dict(self.cfg.filter.embedder), device=self.device)
            self.embed = lambda images: embedder.embed(list(images))

    def process(self, batch: list[dict]) -> list[dict]:
        images = [load_image(self.dataset / e["target"]) for e in batch]
        records = [Record(id=e["id"], prompt=e["instruction"],
                          subjects=tuple(SubjectRef(image=r, phrase=p) for r, p in zip(e["references"], e["phrases"])))
                   for e in batch]
        results = self.score(images, records)
        embeddings = self.embed(images).float().cpu().numpy()
        floor = self.cfg.filter.min_subject_consistency
        out = []
        for e, r, emb in zip(batch, results, embeddings):
            s = r["score"]
            if s is None or math.isnan(s):
                out.append(rejected(e, "consistency_unscorable", r.get("failure") or "the reward returned NaN"))
                continue
            per_subject = [round(float(v), 6) for v in r["per_subject"]] if r.get("per_subject") else None
            scores = {"consistency": round(float(s), 6), "consistency_per_subject": per_subject}
            if r.get("missing"):
                out.append(rejected(e, "subject_missing_in_target", f"not found by the reward: {r['missing']}",
                                    **scores))
            elif s < self.cfg.filter.min_consistency:
                out.append(rejected(e, "low_consistency", f"{s:.4f} < {self.cfg.filter.min_consistency}", **scores))
            elif floor is not None and per_subject and min(per_subject) < floor:
                out.append(rejected(e, "weak_subject", f"a subject scores {min(per_subject):.4f} < {floor}", **scores))
            else:
                rel = f"{EMBED_DIR}/{e['id']}.npy"
                save_array_atomic(emb, self.dataset / rel)
                out.append(kept(e, **scores, embedding=rel))
        return out

    def extra_stats(self, entries: list[dict]) -> dict:
        vals = [e["consistency"] for e in entries if "consistency" in e]
        return {"mean_consistency": float(np.mean(vals))} if vals else {}


def dedup_pass(dataset: str | Path, cfg: DataPipelineConfig) -> list[dict]:
    """Pass 2: write ``filter.jsonl`` from ``filter_scores.jsonl`` (see the module docstring); returns its entries."""
    dataset = Path(dataset)
    scored = read_manifest(dataset, "filter_scores")
    keep = [e for e in scored if e["status"] == KEPT]
    dup_of: dict[str, str] = {}
    if keep:
        emb = np.stack([np.load(dataset / e["embedding"]) for e in keep])
        for e, j in zip(keep, near_duplicates(emb, cfg.filter.max_duplicate_cosine)):
            if j is not None:
                dup_of[e["id"]] = keep[j]["id"]
    out = []
    for e in scored:
        if e["status"] == KEPT and e["id"] in dup_of:
            out.append(rejected(e, "near_duplicate", f"of {dup_of[e['id']]}"))
        else:
            out.append(e)
    write_jsonl_atomic(dataset / "filter.jsonl", out)
    return out
