"""Image-image similarity to the references (DreamBench DINO / CLIP-I): cosine between the embedding of the whole
generated image and of each whole reference image, averaged over the record's subjects.

* ``dino``: DINO v1 ViT-S/16 CLS, resize 256 bicubic / centre-crop 224 (``embedder: {kind: dinov2}`` for DINOv2).
* ``clip_i``: CLIP image features (ViT-B/32 by default, as the DreamBench evaluation of UNO/OmniGen).

Reference embeddings are cached by (file, mtime). ``scale`` multiplies the cosine (some papers report x100).
``background``: the colour transparent reference pixels are composited onto (white, as the policies load them).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

from psrl.data.records import Record
from psrl.rewards.base import RewardOutput
from psrl.cache import BoundedCache
from psrl.rewards.embedding import build_embedder
from psrl.rewards.images import ReferenceImageError, ReferenceImages, scorable_images
from psrl.rewards.isolation import Failed, per_item
from psrl.rewards.loading import with_default_path


class ImageSimilarityReward:
    """Image-image similarity to the references: the cosine between the embedding of the whole generated image
    and of each whole reference image, averaged over the record's subjects.

    Args:
        device: torch device of the embedder.
        path: the embedder weights (hub id or folder), or ``tiny``; the default depends on the reward.
        embedder: ``{kind: dino_vit | dinov2 | clip, path, ...}``, a kind name or a built embedder.
        scale: multiplies the cosine (some papers report x100).
        dtype: dtype of the weights.
        cache_size: reference embeddings kept (keyed by file and mtime).
        background: colour transparent reference pixels are composited onto.

    Records arrive resolved (absolute reference paths, :func:`psrl.data.records.load_records`); the reward takes no
    data root.

    Score range: [-scale, scale], a mean of cosines.
    NaN policy: a sample whose image has NaN pixels or breaks the shared size rule (psrl.rewards.images); a record
        without subjects or a reference that cannot be loaded; an embedder error on that sample.
    """

    name = "image_similarity"
    default_kind = "dino_vit"
    default_path = "facebook/dino-vits16"

    def __init__(self, device="cpu", *, path: str | None = None, embedder=None, scale: float = 1.0, dtype=None,
                 cache_size: int = 4096, background: str | tuple = "white"):
        self.embedder = build_embedder(with_default_path(embedder or {"kind": self.default_kind},
                                                         path or self.default_path), device=device, dtype=dtype)
        self.refs = ReferenceImages(background=background)
        self.scale, self.cache_size = scale, cache_size
        self._cache = BoundedCache(cache_size)  # (file, mtime) -> embedding

    def _ref_embeddings(self, paths: list[str]) -> dict[str, Tensor | str]:
        out, todo, imgs = {}, [], []
        for image in dict.fromkeys(paths):
            try:
                p = self.refs.path(image)
                key = (str(p), os.stat(p).st_mtime_ns) if p.is_file() else None
                cached = None if key is None else self._cache.get(key)
                if cached is not None:
                    out[image] = cached
                    continue
                imgs.append(self.refs.load(image))
                todo.append((image, key))
            except ReferenceImageError as e:
                out[image] = str(e)
        if imgs:
            embs = per_item(self.embedder.embed, imgs, f"{self.name} embedder on the reference")
            for (image, key), emb in zip(todo, embs):
                if isinstance(emb, Failed):
                    out[image] = emb.reason
                    continue
                out[image] = emb
                self._cache.put(key, emb)
        return out

    def __call__(self, images: Tensor | Sequence, records: Sequence[Record]) -> RewardOutput:
        pils, failures, _ = scorable_images(images, records, self.name)
        for b, rec in enumerate(records):
            if not failures[b] and not rec.subjects:
                failures[b] = "record has no reference subjects"
        refs = self._ref_embeddings([s.image for b, r in enumerate(records) if not failures[b] for s in r.subjects])
        for b, rec in enumerate(records):
            if not failures[b]:
                bad = [refs[s.image] for s in rec.subjects if isinstance(refs[s.image], str)]
                if bad:
                    failures[b] = bad[0]
        idx = [b for b in range(len(records)) if not failures[b]]
        scores = torch.full((len(records),), float("nan"))
        per_subject: list[list[float]] = [[] for _ in records]
        gen = per_item(lambda bs: self.embedder.embed([pils[b] for b in bs]), idx, f"{self.name} embedder")
        for emb, b in zip(gen, idx):
            if isinstance(emb, Failed):
                failures[b] = emb.reason
            else:
                sims = [float(emb @ refs[s.image]) * self.scale for s in records[b].subjects]
                per_subject[b] = sims
                scores[b] = sum(sims) / len(sims)
        return RewardOutput(scores=scores, failures=failures, details={"per_subject": per_subject})


class DinoReward(ImageSimilarityReward):
    """DreamBench DINO score (arXiv 2208.12242): :class:`ImageSimilarityReward` with DINO ViT-S/16 CLS
    embeddings (facebook/dino-vits16; ``embedder: dinov2`` for DINOv2).

    Score range: [-scale, scale], a mean of cosines.
    NaN policy: as ImageSimilarityReward: a sample whose image has NaN pixels or breaks the shared size rule
        (psrl.rewards.images); a reference that cannot be loaded; an embedder error.
    """

    name = "dino"


class ClipIReward(ImageSimilarityReward):
    """DreamBench CLIP-I score (arXiv 2208.12242): :class:`ImageSimilarityReward` with CLIP ViT-B/32 image
    features (openai/clip-vit-base-patch32).

    Score range: [-scale, scale], a mean of cosines.
    NaN policy: as ImageSimilarityReward: a sample whose image has NaN pixels or breaks the shared size rule
        (psrl.rewards.images); a reference that cannot be loaded; an embedder error.
    """

    name = "clip_i"
    default_kind = "clip"
    default_path = "openai/clip-vit-base-patch32"
