"""Per-subset x dimension means from the per-sample rows, with counts of scored and failed samples.

Subset mean = mean over the samples scored on that dimension (all seeds pooled); failures are counted next to it,
never hidden. Overall = mean of the subset means by default (the "Overall" of PSR's tables, arXiv 2512.01236, is
taken to be the mean over its seven subsets: inferred, the paper's evaluation code does not compute it) or, for a
benchmark whose registry entry says ``sample_mean`` (T2IS-Bench), the pooled per-sample mean; both are kept and, with
several seeds, the per-seed overall means and their standard deviation.
"""
from __future__ import annotations

import math
import re
import statistics
import time
from collections.abc import Iterable, Sequence

# a file path inside a failure reason: a token with a "/" that ends in a file extension ("8/10" or a URL is not)
_PATH = re.compile(r"[^\s'\"()\[\],;]*/[^\s'\"()\[\],;]*\.[A-Za-z0-9]{2,5}(?![\w/])")


def failure_groups(reasons: Iterable[str | None]) -> list[tuple[int, str]]:
    """Group failure reasons for a summary: ``[(count, text)]``, most common first, ``None`` skipped.

    Reasons are kept whole (a judge's reply after "no parsable '[Score]':" is the useful part). Reasons that differ
    only in file paths (one missing image per sample) form one group, shown as its first reason followed by
    ``(and N more with other paths)``. Pure function.
    """
    groups: dict[str, list] = {}  # template -> [count, first reason, distinct reasons]
    for reason in reasons:
        if reason is None:
            continue
        text = str(reason)
        g = groups.setdefault(_PATH.sub("<path>", text), [0, text, set()])
        g[0] += 1
        g[2].add(text)
    out = []
    for count, first, distinct in groups.values():
        more = len(distinct) - 1
        out.append((count, first + (f" (and {more} more with other paths)" if more else "")))
    return sorted(out, key=lambda cg: -cg[0])


def finite_number(value) -> bool:
    """A real number that is not NaN or inf (a scored value; ``None`` and booleans are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def dimension_outcomes(rows: Sequence[dict], dimensions: Sequence[str]) -> dict[str, dict]:
    """Per dimension: ``{"failed", "total", "reasons": [(count, text)]}`` over ``rows`` (per-sample eval rows or
    ``psrl reward score`` lines reshaped the same way); a sample failed a dimension when it has no finite score."""
    out = {}
    for dim in dimensions:
        failed = [r for r in rows if not finite_number((r.get("scores") or {}).get(dim))]
        out[dim] = {"failed": len(failed), "total": len(rows),
                    "reasons": failure_groups((r.get("failures") or {}).get(dim) or "unscorable (no reason given)"
                                              for r in failed)}
    return out


def failure_problems(outcomes: dict[str, dict], max_failure_rate: float = 1.0, *, top: int = 3) -> list[str]:
    """One line per dimension that makes the run a failure, with its most common reasons; empty when fine.

    A dimension fails when no sample was scored on it (whatever ``max_failure_rate``: a run that scored nothing
    did nothing) or when its failed fraction exceeds ``max_failure_rate`` (in [0, 1]; the default 1.0 tolerates
    any partial failure). No sample at all is a failure too. Pure function.
    """
    if not outcomes or all(o["total"] == 0 for o in outcomes.values()):
        return ["no sample to score"]
    problems = []
    for dim, o in outcomes.items():
        failed, total = o["failed"], o["total"]
        if total and (failed == total or failed / total > max_failure_rate):
            limit = "every sample" if failed == total else f"more than --max-failure-rate {max_failure_rate:g}"
            reasons = "; ".join(f"{n} x {text}" for n, text in o["reasons"][:top])
            extra = len(o["reasons"]) - top
            problems.append(f"{dim}: {failed}/{total} samples failed ({limit}): {reasons}"
                            + (f"; and {extra} other reason(s)" if extra > 0 else ""))
    return problems


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


OVERALL_RULES = ("subset_mean", "sample_mean")


def summarize(rows: Sequence[dict], *, benchmark: str, dimensions: Sequence[str], subsets: Sequence[str],
              provenance: dict | None = None, overall_rule: str = "subset_mean") -> dict:
    """Per subset x dimension means and the Overall row. ``overall_rule``: ``subset_mean`` (mean of the subset
    means: PSRBench, GEdit-Bench's average over task groups) or ``sample_mean`` (mean over every scored sample:
    T2IS-Eval's final averages), per seed alike; the other one is kept as ``sample_mean`` / ``subset_mean``."""
    if overall_rule not in OVERALL_RULES:
        raise ValueError(f"overall_rule must be one of {OVERALL_RULES}, got {overall_rule!r}")
    present = {r["subset"] for r in rows}
    subset_order = [s for s in subsets if s in present] + sorted(present - set(subsets))
    seeds = sorted({int(r.get("seed", 0)) for r in rows})

    def scored(dim: str, subset: str | None = None, seed: int | None = None) -> list[float]:
        """The finite scores of ``dim`` (of one subset and/or seed)."""
        return [r["scores"][dim] for r in rows if finite_number(r["scores"].get(dim))
                and (subset is None or r["subset"] == subset) and (seed is None or int(r.get("seed", 0)) == seed)]

    table: dict[str, dict] = {}
    for subset in subset_order:
        total = sum(r["subset"] == subset for r in rows)
        table[subset] = {}
        for dim in dimensions:
            vals = scored(dim, subset)
            table[subset][dim] = {"mean": _mean(vals), "n": len(vals), "failed": total - len(vals), "total": total}
    overall: dict[str, dict] = {}
    for dim in dimensions:
        subset_means = [table[s][dim]["mean"] for s in subset_order if table[s][dim]["n"]]
        pooled = scored(dim)
        per_seed = {}
        for seed in seeds:
            by_subset = [scored(dim, s, seed) for s in subset_order]
            per_seed[str(seed)] = _mean([_mean(v) for v in by_subset if v] if overall_rule == "subset_mean"
                                        else [x for v in by_subset for x in v])
        seed_vals = [v for v in per_seed.values() if v is not None]
        overall[dim] = {
            "mean": _mean(subset_means if overall_rule == "subset_mean" else pooled),
            "subset_mean": _mean(subset_means),
            "sample_mean": _mean(pooled),
            "n": len(pooled),
            "failed": len(rows) - len(pooled),
            "subsets_scored": len(subset_means),
            "per_seed": per_seed,
            "seed_std": statistics.stdev(seed_vals) if len(seed_vals) > 1 else None,
        }
    failure_reasons: dict[str, dict[str, int]] = {}
    for dim in dimensions:
        groups = failure_groups((r.get("failures") or {}).get(dim) for r in rows)
        if groups:
            failure_reasons[dim] = {text: count for count, text in groups}
    return {
        "benchmark": benchmark,
        "dimensions": list(dimensions),
        "subsets": subset_order,
        "seeds": seeds,
        "num_samples": len(rows),
        "table": table,
        "overall": overall,
        "failure_reasons": failure_reasons,
        "overall_rule": overall_rule,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(provenance or {}),
    }
