"""Per-subset x dimension means from the per-sample rows, with counts of scored and failed samples.

Subset mean = mean over the samples scored on that dimension (all seeds pooled); failures are counted next to it,
never hidden. Overall = mean of the subset means (the PSR paper's "Overall" is taken to be the mean over its seven
subsets, research notes psr.md §4.3/§9.1), plus the pooled per-sample mean and, with several seeds, the per-seed
overall means and their standard deviation.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Sequence


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarize(rows: Sequence[dict], *, benchmark: str, dimensions: Sequence[str], subsets: Sequence[str],
              provenance: dict | None = None) -> dict:
    present = {r["subset"] for r in rows}
    subset_order = [s for s in subsets if s in present] + sorted(present - set(subsets))
    seeds = sorted({int(r.get("seed", 0)) for r in rows})
    table: dict[str, dict] = {}
    for subset in subset_order:
        sub_rows = [r for r in rows if r["subset"] == subset]
        table[subset] = {}
        for dim in dimensions:
            vals = [r["scores"].get(dim) for r in sub_rows]
            scored = [v for v in vals if isinstance(v, (int, float)) and math.isfinite(v)]
            table[subset][dim] = {"mean": _mean(scored), "n": len(scored), "failed": len(vals) - len(scored),
                                  "total": len(vals)}
    overall: dict[str, dict] = {}
    for dim in dimensions:
        subset_means = [table[s][dim]["mean"] for s in subset_order if table[s][dim]["mean"] is not None]
        pooled = [r["scores"].get(dim) for r in rows]
        scored = [v for v in pooled if isinstance(v, (int, float)) and math.isfinite(v)]
        per_seed = {}
        for seed in seeds:
            means = []
            for subset in subset_order:
                vals = [r["scores"].get(dim) for r in rows if r["subset"] == subset and int(r.get("seed", 0)) == seed]
                vals = [v for v in vals if isinstance(v, (int, float)) and math.isfinite(v)]
                if vals:
                    means.append(sum(vals) / len(vals))
            per_seed[str(seed)] = _mean(means)
        seed_vals = [v for v in per_seed.values() if v is not None]
        overall[dim] = {
            "mean": _mean(subset_means),
            "sample_mean": _mean(scored),
            "n": len(scored),
            "failed": len(pooled) - len(scored),
            "subsets_scored": len(subset_means),
            "per_seed": per_seed,
            "seed_std": statistics.stdev(seed_vals) if len(seed_vals) > 1 else None,
        }
    failure_reasons: dict[str, dict[str, int]] = {}
    for r in rows:
        for dim, reason in (r.get("failures") or {}).items():
            if reason is not None:
                short = str(reason).split(":")[0][:80]
                failure_reasons.setdefault(dim, {}).setdefault(short, 0)
                failure_reasons[dim][short] += 1
    return {
        "benchmark": benchmark,
        "dimensions": list(dimensions),
        "subsets": subset_order,
        "seeds": seeds,
        "num_samples": len(rows),
        "table": table,
        "overall": overall,
        "failure_reasons": failure_reasons,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(provenance or {}),
    }
