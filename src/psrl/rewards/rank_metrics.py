"""How well a reward's scores agree with human judgements: ranking metrics (ConsistencyRank-Bench) and pairwise
accuracy (EditReward-Bench). Pure numpy; any psrl reward's scores can be evaluated with them.

Ranking (ConsistencyRank-Bench of PaCo-RL, arXiv 2512.04784; X-GenGroup/PaCo-RL@08caac6
``PaCo-Reward/evaluation/Consistency_Rank/eval.py``): each item has ``C`` candidates with a human ranking; the
predicted ranking sorts the candidates by score, best first, ``np.argsort(scores)[::-1]`` as the released script
does (so among tied scores the later candidate ranks first). Per item:

* accuracy: the fraction of candidates whose predicted rank equals the human rank;
* Kendall tau and Spearman rho between the predicted and the human ranking (``scipy.stats.kendalltau`` /
  ``spearmanr``; both tie-free here);
* T1-B1: the mean of top-1 correct (the human's best is predicted best) and bottom-1 correct;

each averaged over the items. ``convention`` says what tau and rho correlate. ``"ranks"`` (default, the textbook
definition): the two vectors of per-candidate ranks. ``"paco"``: the two candidate orderings (candidate indices
best first), which is what ``eval.py`` passes to scipy (``kendalltau(pred_rank, gt_rank)`` on orderings) and so what
the published table measures; for ``C >= 3`` the two conventions differ in general. Accuracy and T1-B1 are the
same under both.

An item with a NaN score is unscorable: it is left out of every average and counted in ``n_unscorable``; a
metric of zero scorable items is NaN, never a default.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import kendalltau, spearmanr

CONVENTIONS = ("ranks", "paco")


def _check_human_rank(human_rank: np.ndarray) -> None:
    c = human_rank.shape[1]
    bad = np.flatnonzero((np.sort(human_rank, axis=1) != np.arange(c)[None, :]).any(axis=1))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"human_rank row {i} is {human_rank[i].tolist()}, not a permutation of 0..{c - 1} "
                         "(rank 0 = best, no ties)")


def predicted_order(scores) -> np.ndarray:
    """Candidate indices best first, per row: ``np.argsort(scores)[::-1]`` (the released tie rule: the later of two
    equal scores ranks first). ``scores [N, C]`` -> ``[N, C]`` int."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.argsort(scores, axis=1, kind="stable")[:, ::-1]


def _ranks_from_order(order: np.ndarray) -> np.ndarray:
    ranks = np.empty_like(order)
    rows = np.arange(order.shape[0])[:, None]
    ranks[rows, order] = np.arange(order.shape[1])[None, :]
    return ranks


def per_item_ranking_metrics(scores, human_rank, *, convention: str = "ranks") -> dict[str, np.ndarray]:
    """The per-item values behind :func:`ranking_metrics`: ``accuracy``, ``kendall_tau``, ``spearman_rho``,
    ``top1``, ``bottom1``, ``t1b1`` (each ``[N]`` float, NaN for an unscorable item) and ``pred_rank [N, C]``
    (-1 for an unscorable item)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    scores = np.asarray(scores, dtype=np.float64)
    human_rank = np.asarray(human_rank)
    if scores.ndim != 2 or scores.shape != human_rank.shape:
        raise ValueError(f"scores and human_rank must both be [N, C]; got {scores.shape} and {human_rank.shape}")
    if scores.shape[1] < 2:
        raise ValueError(f"a ranking needs at least 2 candidates per item, got {scores.shape[1]}")
    if not np.issubdtype(human_rank.dtype, np.integer):
        if not np.all(np.isfinite(human_rank)) or not np.all(human_rank == np.round(human_rank)):
            raise ValueError("human_rank must hold integer ranks (0 = best)")
        human_rank = human_rank.astype(np.int64)
    _check_human_rank(human_rank)
    n = scores.shape[0]
    ok = np.isfinite(scores).all(axis=1) if n else np.zeros(0, dtype=bool)
    out = {k: np.full(n, np.nan) for k in ("accuracy", "kendall_tau", "spearman_rho", "top1", "bottom1", "t1b1")}
    pred_rank = np.full(scores.shape, -1, dtype=np.int64)
    if ok.any():
        order = predicted_order(scores[ok])
        ranks = _ranks_from_order(order)
        human = human_rank[ok]
        human_order = np.argsort(human, axis=1)
        a, b = (ranks, human) if convention == "ranks" else (order, human_order)
        out["accuracy"][ok] = (ranks == human).mean(axis=1)
        out["kendall_tau"][ok] = [kendalltau(x, y).statistic for x, y in zip(a, b)]
        out["spearman_rho"][ok] = [spearmanr(x, y).statistic for x, y in zip(a, b)]
        out["top1"][ok] = (order[:, 0] == human_order[:, 0]).astype(np.float64)
        out["bottom1"][ok] = (order[:, -1] == human_order[:, -1]).astype(np.float64)
        out["t1b1"][ok] = (out["top1"][ok] + out["bottom1"][ok]) / 2
        pred_rank[ok] = ranks
    out["pred_rank"] = pred_rank
    return out


def ranking_metrics(scores, human_rank, *, convention: str = "ranks") -> dict[str, float]:
    """Agreement of predicted rankings with human rankings, averaged over items.

    Args:
        scores: ``[N, C]`` float, higher = better; a NaN anywhere in a row makes that item unscorable.
        human_rank: ``[N, C]`` int, the human rank of each candidate, 0 = best (each row a permutation of
            ``0..C-1``).
        convention: ``"ranks"`` (tau and rho between per-candidate rank vectors) or ``"paco"`` (between the
            orderings, as the released ConsistencyRank script computes them); see the module docstring.

    Returns:
        ``{"accuracy", "kendall_tau", "spearman_rho", "t1b1", "top1", "bottom1"}`` in [0, 1] ([-1, 1] for tau
        and rho), NaN when no item is scorable, plus ``n_items`` and ``n_unscorable``.

    Raises:
        ValueError: shapes differ, fewer than 2 candidates, a human rank row that is not a permutation, an unknown
            convention.
    """
    per = per_item_ranking_metrics(scores, human_rank, convention=convention)
    ok = ~np.isnan(per["accuracy"])
    out: dict[str, float] = {}
    for key in ("accuracy", "kendall_tau", "spearman_rho", "t1b1", "top1", "bottom1"):
        out[key] = float(per[key][ok].mean()) if ok.any() else float("nan")
    out["n_items"] = int(ok.size)
    out["n_unscorable"] = int((~ok).sum())
    return out


def pairwise_accuracy(chosen: Sequence[float], rejected: Sequence[float], groups: Sequence[str] | None = None, *,
                      ties: str = "strict") -> dict[str, float]:
    """Accuracy on preference pairs (EditReward-Bench style): a pair is correct when the human-preferred image
    scores higher. ``ties``: ``"strict"`` (``chosen > rejected``) or ``"geq"`` (``>=``); the released statistics
    script reports both (X-GenGroup/PaCo-RL@08caac6 ``PaCo-Reward/evaluation/Edit-Bench/calculate_statistics.py``).
    With ``groups`` (task types) the headline ``accuracy`` is the mean of the per-group accuracies, as that script
    averages, and ``group/<name>`` holds each; without, it is the plain mean over pairs. A pair with a NaN score
    is left out and counted in ``n_unscorable``."""
    if ties not in ("strict", "geq"):
        raise ValueError(f"ties must be 'strict' or 'geq', got {ties!r}")
    c, r = np.asarray(chosen, dtype=np.float64), np.asarray(rejected, dtype=np.float64)
    if c.shape != r.shape or c.ndim != 1:
        raise ValueError(f"chosen and rejected must be 1-D of equal length, got {c.shape} and {r.shape}")
    g = np.asarray(list(groups) if groups is not None else ["all"] * len(c), dtype=object)
    if g.shape != c.shape:
        raise ValueError(f"groups has {len(g)} entries for {len(c)} pairs")
    ok = np.isfinite(c) & np.isfinite(r)
    correct = (c > r) if ties == "strict" else (c >= r)
    out: dict[str, float] = {}
    per_group = []
    for name in sorted(set(g[ok].tolist())):
        sel = ok & (g == name)
        acc = float(correct[sel].mean())
        per_group.append(acc)
        if groups is not None:
            out[f"group/{name}"] = acc
    if groups is None:
        out["accuracy"] = float(correct[ok].mean()) if ok.any() else float("nan")
    else:
        out["accuracy"] = float(np.mean(per_group)) if per_group else float("nan")
    out["n_items"] = int(len(c))
    out["n_unscorable"] = int((~ok).sum())
    return out


__all__ = ["CONVENTIONS", "pairwise_accuracy", "per_item_ranking_metrics", "predicted_order", "ranking_metrics"]
