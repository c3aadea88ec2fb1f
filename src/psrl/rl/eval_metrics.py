"""What one evaluation measures besides the images: the trained rewards, the held-out rewards (``eval.rewards``,
never trained on), the image statistics of :mod:`psrl.rl.image_stats`, within-group diversity, and the subject
rates a subject-consistency reward exposes. The keys are the ones :mod:`psrl.rl.monitor` watches:

=============================================  ==========================================================
``eval/<reward>/mean``                         a trained reward's mean over the scorable eval images
``eval/heldout/<reward>``                      a held-out reward's mean over the scorable eval images
``eval[/heldout]/<reward>/failure_rate``       share of eval images the reward could not score (NaN)
``eval[/heldout]/<reward>/missing_subject_rate``  share of subjects not found (``details["missing_subjects"]``)
``eval[/heldout]/<reward>/identity_confusion_rate`` share of subjects matched to another subject's reference
                                               (``details["confused_subjects"]``, when the reward exposes it)
``eval/stats/<statistic>``                     mean of each :data:`psrl.rl.image_stats.IMAGE_STATS` entry
``eval/stats/diversity``                       mean within-group diversity (``eval.group_size >= 2``)
=============================================  ==========================================================

A reward mean over no scorable image is NaN and the failure rate says so; nothing defaults silently.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from psrl.rl.image_stats import image_statistics, nan_mean, within_group_diversity

logger = logging.getLogger(__name__)

PIXEL_EMBEDDER = "pixels"
_PIXEL_SIDE = 16


def pixel_embeddings(images: Tensor, side: int = _PIXEL_SIDE) -> Tensor:
    """The model-free embedding behind ``eval.embedder: pixels``: each image area-averaged to ``side x side`` and
    flattened, centred on its own mean (so two flat images of different brightness are not "similar" by cosine
    only because both are positive): ``[B, 3 * side * side]`` float32. Cheap and offline; DINO or CLIP (``eval
    .embedder: {kind: dinov2}``) measure semantic rather than pixel diversity."""
    x = torch.nn.functional.adaptive_avg_pool2d(images.detach().float().cpu(), side).flatten(1)
    return x - x.mean(dim=1, keepdim=True)


def build_eval_embedder(spec, device="cpu"):
    """``eval.embedder`` -> ``fn(images [B, 3, H, W]) -> [B, D]``: ``pixels`` or a :func:`psrl.rewards.embedding
    .build_embedder` spec (``{kind: dinov2 | dino_vit | clip, path: ...}``)."""
    if spec == PIXEL_EMBEDDER:
        return pixel_embeddings
    from psrl.images import tensor_to_pil
    from psrl.rewards.embedding import build_embedder

    embedder = build_embedder(spec, device=device)
    return lambda images: embedder.embed([tensor_to_pil(im) for im in images.float().cpu()])


def _subject_rate(details: dict, key: str, records: Sequence, scored: Sequence[bool]) -> float | None:
    """Share of the subjects of the scored samples listed in ``details[key]`` (a list of phrases per sample)."""
    lists = details.get(key)
    if not isinstance(lists, (list, tuple)) or len(lists) != len(records):
        return None
    total = sum(len(getattr(r, "subjects", ()) or ()) for r, ok in zip(records, scored) if ok)
    hit = sum(len(v or ()) for v, ok in zip(lists, scored) if ok)
    return hit / total if total else math.nan


def reward_scores(reward, images: Tensor, records: Sequence) -> tuple[Tensor, dict | None]:
    """One reward on the eval images: ``(scores, details)``, ``scores`` ``[B]`` float32 on the CPU with NaN for an
    image it could not score. A reward that raises (or returns the wrong number of scores) is logged and gives NaN
    for every image and ``details`` None, so one broken metric does not end a run; out-of-memory is re-raised."""
    try:
        out = reward(images, records)
        if out.scores.numel() != len(records):
            raise ValueError(f"returned {out.scores.numel()} scores for {len(records)} images")
    except torch.OutOfMemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - an eval metric must not kill the run; the NaN and the log say why
        logger.warning("eval reward %s raised %s: %s; reported as NaN", reward.name, type(e).__name__, e)
        return torch.full((len(records),), math.nan), None
    return out.scores.detach().float().cpu().reshape(-1), out.details


def reward_metrics(reward, images: Tensor, records: Sequence, prefix: str, mean_suffix: str,
                   scored: tuple[Tensor, dict | None] | None = None) -> dict[str, float]:
    """One reward on the eval images: ``{prefix + name + mean_suffix: mean, .../failure_rate, subject rates}``
    (a reward that raised: the mean NaN, its failure rate 1). ``scored``: its :func:`reward_scores` when already
    computed."""
    name = reward.name
    scores, details = scored if scored is not None else reward_scores(reward, images, records)
    if details is None:
        return {f"{prefix}{name}{mean_suffix}": math.nan, f"{prefix}{name}/failure_rate": 1.0}
    ok = torch.isfinite(scores)
    metrics = {f"{prefix}{name}{mean_suffix}": float(scores[ok].mean()) if bool(ok.any()) else math.nan,
               f"{prefix}{name}/failure_rate": float((~ok).float().mean())}
    # samples with details: scored ones, and under missing: nan the ones NaN for a missing subject
    has_details = [bool(o) or bool(m) for o, m in zip(ok.tolist(), details.get("missing_subjects") or
                                                      [None] * len(records))]
    for key, metric in (("missing_subjects", "missing_subject_rate"), ("confused_subjects",
                                                                        "identity_confusion_rate")):
        rate = _subject_rate(details, key, records, has_details)
        if rate is not None:
            metrics[f"{prefix}{name}/{metric}"] = rate
    return metrics


HELDOUT_PREFIX = "held-out reward "  # the key of a held-out (eval.rewards) reward's scores, beside the trained ones


def eval_metrics(images: Tensor, records: Sequence, group_ids: Sequence[int], *, trained: Sequence = (),
                 heldout: Sequence = (), statistics: bool = True, embed=None) -> dict[str, float]:
    """Every metric of one evaluation (the keys in the module docstring); :func:`eval_scores_and_metrics` without
    the per-image scores."""
    return eval_scores_and_metrics(images, records, group_ids, trained=trained, heldout=heldout,
                                   statistics=statistics, embed=embed)[0]


def eval_scores_and_metrics(images: Tensor, records: Sequence, group_ids: Sequence[int], *, trained: Sequence = (),
                            heldout: Sequence = (), statistics: bool = True,
                            embed=None) -> tuple[dict[str, float], dict[str, Tensor]]:
    """Every metric of one evaluation (the keys in the module docstring) and each trained reward's per-image scores.

    Args:
        images (`Tensor` of shape `[B, 3, H, W]`): the eval images in ``[0, 1]``.
        records: the eval record of each image (a record repeated ``eval.group_size`` times).
        group_ids (sequence of `int`, length `B`): the eval group (record) of each image.
        trained, heldout: built rewards (the trained ones, the ``eval.rewards``).
        statistics: compute the image statistics and, with ``embed`` and groups of two or more, the diversity.
        embed: ``fn(images) -> [B, D]`` (:func:`build_eval_embedder`).

    Returns:
        ``(metrics, scores)``: ``scores`` maps each trained reward's name, and each held-out reward's name after
        :data:`HELDOUT_PREFIX`, to its ``[B]`` float32 CPU scores (NaN: unscorable; every image NaN when the reward
        raised).
    """
    out: dict[str, float] = {}
    scores: dict[str, Tensor] = {}
    kinds = ((trained, "", "eval/", "/mean"), (heldout, HELDOUT_PREFIX, "eval/heldout/", ""))
    for rewards, key, prefix, suffix in kinds:  # key: of the scores; prefix, suffix: of the metrics
        for reward in rewards:
            scored = reward_scores(reward, images, records)
            scores[key + reward.name] = scored[0]
            out.update(reward_metrics(reward, images, records, prefix, suffix, scored))
    if statistics:
        stats, _ = image_statistics(images)
        out.update({f"eval/stats/{k}": nan_mean(v) for k, v in stats.items()})
        if embed is not None and len(group_ids) > len(set(group_ids)):
            _, diversity = within_group_diversity(embed(images), list(group_ids))
            out["eval/stats/diversity"] = nan_mean(diversity)
    return out, scores


__all__ = ["HELDOUT_PREFIX", "PIXEL_EMBEDDER", "build_eval_embedder", "eval_metrics", "eval_scores_and_metrics",
           "pixel_embeddings", "reward_metrics", "reward_scores"]
