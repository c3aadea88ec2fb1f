"""``psrl reward-model eval``: how well any psrl reward agrees with human judgements, on ranking benchmarks in the
ConsistencyRank-Bench format and on EditReward-Bench-style preference pairs, with a report next to the published
numbers (:mod:`psrl.reward_model.published`).

Benchmarks (image paths relative to the benchmark's folder, never escaping it):

* the released ConsistencyRank-Bench folder (``consistency_full_rank.jsonl`` with ``folder``, ``ref_image``,
  ``comp_images``, ``rank_images`` best first; ``prompt_data.jsonl`` with ``idx`` and ``prompt``;
  ``images/<folder>/``), read as X-GenGroup/PaCo-RL@08caac6
  ``PaCo-Reward/evaluation/Consistency_Rank/eval.py`` reads it;
* a ranking JSONL: ``{"id", "reference"?, "prompt"?, "candidates": [paths], "human_rank": [0 = best, ...]}``;
* a pairwise JSONL: ``{"id", "reference"?, "prompt"?, "chosen": path, "rejected": path, "group"?}``.

Each item is scored by one reward call: the candidates are the images, every record carries the prompt and (when
given) the reference as its subject image, so ``vlm_consistency`` judges (reference, candidate) pairs and ``clip_i``
/ ``dino`` compare embeddings. Results are appended one JSON line per item to ``results.jsonl`` (a rerun skips the
items already there); an item with an unscorable candidate is kept as a failure with its reason and left out of the
metrics (:func:`psrl.rewards.rank_metrics.ranking_metrics`), never filled in.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from psrl.data.records import Record, RecordError, SubjectRef, resolve_records, resolve_under
from psrl.images import ImageLoadError, load_image
from psrl.fileio import jsonl_lines
from psrl.reward_model.pairs import keep_unique, not_json

RESULTS_FILE, SUMMARY_FILE, REPORT_FILE = "results.jsonl", "summary.json", "report.md"


@dataclass(frozen=True)
class BenchItem:
    """One benchmark item: ``images`` to score (the candidates, or ``(chosen, rejected)``), ``human_rank`` for a
    ranking item (0 = best) or None for a pair, the shared ``prompt`` and ``reference``, a ``group`` (task type)."""

    id: str
    images: tuple[str, ...]
    human_rank: tuple[int, ...] | None
    prompt: str = ""
    reference: str | None = None
    group: str = ""
    where: str = ""


@dataclass
class Benchmark:
    kind: str  # "ranking" | "pairwise"
    name: str
    root: Path
    items: list[BenchItem]
    problems: list[str]


def _item(d, where: str, kind: str) -> tuple[BenchItem | None, str | None]:
    if problem := not_json(where, d):
        return None, problem
    if not isinstance(d, dict) or not isinstance(d.get("id"), str) or not d["id"]:
        return None, f"{where}: an item needs a string 'id'"
    prompt, ref = d.get("prompt") or "", d.get("reference")
    if not isinstance(prompt, str) or (ref is not None and not isinstance(ref, str)):
        return None, f"{where}: 'prompt' and 'reference' must be strings"
    if kind == "ranking":
        cands, rank = d.get("candidates"), d.get("human_rank")
        if not isinstance(cands, list) or len(cands) < 2 or not all(isinstance(c, str) and c for c in cands):
            return None, f"{where}: 'candidates' must be a list of at least 2 image paths"
        if not isinstance(rank, list) or sorted(rank) != list(range(len(cands))):
            return None, f"{where}: 'human_rank' {rank!r} is not a permutation of 0..{len(cands) - 1} (0 = best)"
        return BenchItem(d["id"], tuple(cands), tuple(rank), prompt, ref, str(d.get("group") or ""), where), None
    chosen, rejected = d.get("chosen"), d.get("rejected")
    if not all(isinstance(x, str) and x for x in (chosen, rejected)):
        return None, f"{where}: a pair needs image paths 'chosen' and 'rejected'"
    return BenchItem(d["id"], (chosen, rejected), None, prompt, ref, str(d.get("group") or ""), where), None


def read_consistency_rank(folder: Path) -> Benchmark:
    """The released ConsistencyRank-Bench folder as ranking items (reference and candidates under
    ``images/<folder>/``, the prompt from ``prompt_data.jsonl``)."""
    prompts = {}
    if (folder / "prompt_data.jsonl").is_file():
        for _, d in jsonl_lines(folder / "prompt_data.jsonl"):
            if isinstance(d, dict) and "idx" in d:
                prompts[str(d["idx"])] = d.get("prompt") or ""
    items, problems, seen = [], [], set()
    for where, d in jsonl_lines(folder / "consistency_full_rank.jsonl"):
        if isinstance(d, Exception) or not isinstance(d, dict):
            problems.append(f"{where}: not a JSON object")
            continue
        ref = d.get("ref_image", d.get("ref_img"))
        comps = d.get("comp_images", d.get("comparison_images"))
        ranked, sub = d.get("rank_images"), str(d.get("folder", ""))
        if not (sub and isinstance(ref, str) and isinstance(comps, list) and isinstance(ranked, list)
                and sorted(ranked) == sorted(comps) and len(set(comps)) == len(comps) >= 2):
            problems.append(f"{where}: needs folder, ref_image, comp_images and rank_images (a reordering of "
                            "comp_images)")
            continue
        rid = f"{sub}/{ref}/{'+'.join(comps)}"
        if rid in seen:
            problems.append(f"{where}: duplicate item {rid!r}")
            continue
        seen.add(rid)
        items.append(BenchItem(rid, tuple(f"images/{sub}/{c}" for c in comps),
                               tuple(ranked.index(c) for c in comps), prompts.get(sub, ""),
                               f"images/{sub}/{ref}", sub, where))
    return Benchmark("ranking", "ConsistencyRank", folder, items, problems)


def load_benchmark(path: str | Path) -> Benchmark:
    """A benchmark from a ConsistencyRank-Bench folder or a ranking / pairwise JSONL (the kind is read from the
    first item: ``candidates`` or ``chosen``).

    Raises:
        RecordError: the path is missing, or the file has no usable item.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "consistency_full_rank.jsonl").is_file():
            raise RecordError(f"{path}: a benchmark folder must hold consistency_full_rank.jsonl "
                              "(ConsistencyRank-Bench)")
        bench = read_consistency_rank(path)
    elif path.is_file():
        rows = jsonl_lines(path)
        first = next((d for _, d in rows if isinstance(d, dict)), {})
        kind = "ranking" if "candidates" in first else "pairwise" if "chosen" in first else None
        if kind is None:
            raise RecordError(f"{path}: no item with 'candidates' (ranking) or 'chosen' (pairwise)")
        problems: list[str] = []
        items = keep_unique(((where, *_item(d, where, kind)) for where, d in rows), problems)
        bench = Benchmark(kind, path.stem, path.parent, items, problems)
    else:
        raise RecordError(f"benchmark not found: {path}")
    if not bench.items:
        raise RecordError(f"{path}: no usable item ({len(bench.problems)} problem(s): "
                          f"{'; '.join(bench.problems[:3])})")
    return bench


def score_item(reward, item: BenchItem, root: Path) -> tuple[list[float] | None, str | None, list]:
    """``(scores of item.images, None, per-image failures)`` or ``(None, reason, per-image failures)``."""
    images = []
    for rel in item.images:
        try:
            images.append(load_image(resolve_under(root, rel, what=f"{item.where}: image")))
        except (ImageLoadError, RecordError) as e:
            return None, f"image {rel}: {e}", []
    subjects = (SubjectRef(image=item.reference, phrase="reference"),) if item.reference else ()
    try:  # the reference resolved under the benchmark's root here, as every record is where it is loaded
        record = resolve_records([Record(id=item.id, prompt=item.prompt, subjects=subjects)], root,
                                 source=item.where)[0]
    except RecordError as e:
        return None, f"reference {item.reference}: {e}", []
    out = reward(images, [record] * len(images))
    scores = [float(s) for s in out.scores.tolist()]
    bad = [f for f in out.failures if f]
    if bad or not all(math.isfinite(s) for s in scores):
        return None, bad[0] if bad else "non-finite score", list(out.failures)
    return scores, None, []


def evaluate(bench: Benchmark, reward, out_dir: str | Path, *, name: str = "reward", limit: int | None = None,
             progress=None) -> dict:
    """Score every item not yet in ``out_dir/results.jsonl`` (one line each, appended and flushed), then write
    ``summary.json`` and ``report.md`` (this reward as ``name``) from all the lines. Returns the summary.
    ``progress``: ``total -> object with update(n) / close()``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESULTS_FILE
    done = {r["id"] for r in read_results(path)}
    todo = [it for it in bench.items[:limit] if it.id not in done]
    bar = progress(len(todo)) if progress else None
    with path.open("a") as f:
        for it in todo:
            scores, why, failures = score_item(reward, it, bench.root)
            row = {"id": it.id, "group": it.group, "scores": scores, "failure": why}
            if it.human_rank is not None:
                row["human_rank"] = list(it.human_rank)
            f.write(json.dumps(row) + "\n")
            f.flush()
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    wanted = {it.id for it in bench.items[:limit]}
    summary = {"reward": name, **summarize(bench, [r for r in read_results(path) if r["id"] in wanted])}
    from psrl.fileio import write_json_atomic, write_text_atomic

    write_json_atomic(out_dir / SUMMARY_FILE, summary)
    write_text_atomic(out_dir / REPORT_FILE, report(summary))
    return summary


def read_results(path: Path) -> list[dict]:
    """The result lines of ``path`` (a torn last line from a killed run is dropped)."""
    if not path.is_file():
        return []
    return [row for _, row in jsonl_lines(path) if isinstance(row, dict) and "id" in row]


def summarize(bench: Benchmark, rows: list[dict]) -> dict:
    """Metrics over the result rows: for ranking both conventions (``paco``, comparable with the published table,
    and ``ranks``), for pairs strict and >= accuracy (macro over groups when items have groups)."""
    import numpy as np

    from psrl.rewards.rank_metrics import pairwise_accuracy, ranking_metrics

    failures = Counter((r["failure"] or "").split(":")[0] for r in rows if r.get("failure"))
    summary = {"benchmark": bench.name, "kind": bench.kind, "items": len(rows),
               "unscorable": sum(1 for r in rows if r.get("failure")), "unscorable_reasons": dict(failures),
               "input_problems": bench.problems[:50], "n_input_problems": len(bench.problems)}
    scored = [r for r in rows if not r.get("failure")]
    if bench.kind == "ranking":
        by_c = Counter(len(r["scores"]) for r in scored)
        c = by_c.most_common(1)[0][0] if by_c else 0
        use = [r for r in scored if len(r["scores"]) == c]
        scores = np.array([r["scores"] for r in use], dtype=np.float64).reshape(len(use), c)
        human = np.array([r["human_rank"] for r in use], dtype=np.int64).reshape(len(use), c)
        for conv in ("paco", "ranks"):
            summary[conv] = ranking_metrics(scores, human, convention=conv) if len(use) else {}
        summary["candidates"] = c
        summary["other_candidate_counts"] = sum(n for k, n in by_c.items() if k != c)
    else:
        chosen = [r["scores"][0] for r in scored]
        rejected = [r["scores"][1] for r in scored]
        groups = [r.get("group") or "" for r in scored]
        grouped = any(groups)
        for ties in ("strict", "geq"):
            summary[ties] = pairwise_accuracy(chosen, rejected, groups if grouped else None, ties=ties) \
                if scored else {}
    return summary


def report(summary: dict, name: str | None = None) -> str:
    """A markdown report: this reward's row beside the published rows of the same benchmark."""
    from psrl.reward_model import published

    name = name or summary.get("reward", "this reward")
    lines = [f"# {name} on {summary['benchmark']} ({summary['kind']})", "",
             f"{summary['items']} items, {summary['unscorable']} unscorable (left out of the metrics)"
             + (f": {summary['unscorable_reasons']}" if summary["unscorable"] else "") + ".", ""]
    if summary["kind"] == "ranking":
        lines += ["| method | accuracy | Kendall tau | Spearman rho | T1-B1 |", "|---|---|---|---|---|"]
        for conv, note in (("paco", "tau/rho over orderings, as published"), ("ranks", "tau/rho over rank vectors")):
            m = summary.get(conv) or {}
            if m:
                lines.append(f"| **{name}** ({note}) | {m['accuracy']:.3f} | {m['kendall_tau']:.3f} | "
                             f"{m['spearman_rho']:.3f} | {m['t1b1']:.3f} |")
        for method, m in published.CONSISTENCY_RANK.items():
            lines.append(f"| {method} (published) | {m['accuracy']:.3f} | {m['kendall_tau']:.3f} | "
                         f"{m['spearman_rho']:.3f} | {m['t1b1']:.3f} |")
    else:
        lines += ["| method | accuracy (>) | accuracy (>=) |", "|---|---|---|"]
        s, g = summary.get("strict") or {}, summary.get("geq") or {}
        if s:
            lines.append(f"| **{name}** | {s['accuracy']:.3f} | {g['accuracy']:.3f} |")
        lines += ["", "Published EditReward-Bench accuracy:", "",
                  "| method | prompt following | consistency | overall |", "|---|---|---|---|"]
        for method, m in published.EDIT_REWARD_BENCH.items():
            lines.append(f"| {method} | {m['prompt_following']:.3f} | {m['consistency']:.3f} | {m['overall']:.3f} |")
    lines += ["", f"Published rows: {published.SOURCE}. They were measured on the full released benchmark; compare "
                  "only a run over the same items."]
    return "\n".join(lines) + "\n"


__all__ = ["Benchmark", "BenchItem", "evaluate", "load_benchmark", "read_consistency_rank", "read_results",
           "report", "score_item", "summarize"]
