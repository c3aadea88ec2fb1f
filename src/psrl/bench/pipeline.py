"""The benchmark flows a user runs, as library functions (the CLI only parses arguments and calls these)."""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from psrl.bench.evaluate import EVAL_CONFIG, EvalStats, evaluate_samples, read_sample_rows
from psrl.bench.provenance import config_hash, package_versions
from psrl.bench.report import write_report
from psrl.bench.results import benchmark_subsets, load_result_samples, read_manifest
from psrl.sharding import Shard
from psrl.bench.summary import dimension_outcomes, summarize
from psrl.bench.tasks import (
    DREAMBENCH_DIMENSIONS,
    POCKET_DIMENSIONS,
    PSRBENCH_DIMENSIONS,
    DimensionSpec,
    dreambench_metrics,
    pocket_metrics,
    psrbench_metrics,
)
from psrl.errors import PsrlError

log = logging.getLogger(__name__)


def default_metrics(benchmark: str, *, compat: bool = False, judge_endpoint: str | None = None,
                    tiny: bool = False) -> dict[str, DimensionSpec]:
    if benchmark == "psrbench":
        return psrbench_metrics(compat=compat, judge_endpoint=judge_endpoint, tiny=tiny)
    if benchmark in ("dreambench", "pocket"):
        if compat or judge_endpoint:
            raise PsrlError("--psrbench-compat and --judge-endpoint apply to PSRBench only")
        return dreambench_metrics(tiny=tiny) if benchmark == "dreambench" else pocket_metrics()
    raise PsrlError(f"unknown benchmark {benchmark!r}")


def resolve_benchmark_and_root(results_dir: str | Path, benchmark: str | None,
                               data_root: str | Path | None) -> tuple[str, Path]:
    """``benchmark`` and ``data_root`` from the arguments, else from the result folder's manifest."""
    manifest = read_manifest(results_dir)
    benchmark = benchmark or manifest.get("benchmark") or "psrbench"
    root = data_root or manifest.get("data_root")
    if not root:
        raise PsrlError(f"{results_dir} has no bench.json naming the data root; pass --data-root")
    return benchmark, Path(root)


def eval_and_report(results_dir: str | Path, out_dir: str | Path, metrics: dict[str, DimensionSpec], *,
                    benchmark: str, data_root: str | Path, subsets: list[str] | None = None, batch_size: int = 8,
                    device: str = "cpu", shard: Shard | None = None, retry_failed: bool = False,
                    report: bool = True, title: str | None = None,
                    progress: Callable[[int, int], None] | None = None) -> tuple[EvalStats, dict | None]:
    """Evaluate a result folder into ``out_dir`` and (rank 0) write the summary and reports."""
    shard = shard or Shard()
    samples, issues = load_result_samples(results_dir, data_root, benchmark, subsets)
    if shard.is_main:
        for issue in issues:
            log.warning("result file issue: %s", issue)
    stats = evaluate_samples(samples, out_dir, metrics, benchmark=benchmark, batch_size=batch_size, device=device,
                             shard=shard, retry_failed=retry_failed, progress=progress, data_root=data_root)
    if shard.is_main:
        keys = {s.key for s in samples}
        rows = [r for k, r in read_sample_rows(Path(out_dir)).items() if k in keys]
        stats.outcomes = dimension_outcomes(rows, list(metrics))
    summary = None
    if shard.is_main and report:
        summary = report_from_dir(out_dir, data_root=data_root, title=title or f"{benchmark}: {Path(results_dir)}",
                                  results_dir=results_dir, keys={s.key for s in samples})
    return stats, summary


def report_from_dir(eval_dir: str | Path, *, data_root: str | Path | None = None, title: str | None = None,
                    results_dir: str | Path | None = None, keys: set[str] | None = None,
                    gallery_per_subset: int = 12) -> dict:
    """Summary and reports from an eval folder's ``samples.jsonl`` and ``eval_config.json``."""
    eval_dir = Path(eval_dir)
    cfg_path = eval_dir / EVAL_CONFIG
    if not cfg_path.is_file():
        raise PsrlError(f"{eval_dir} is not an evaluation folder (no {EVAL_CONFIG})")
    cfg = json.loads(cfg_path.read_text())
    previous = eval_dir / "summary.json"
    if data_root is None and previous.is_file():  # `psrl bench report DIR` reuses the data root of the eval
        data_root = json.loads(previous.read_text()).get("data_root")
    rows = list(read_sample_rows(eval_dir).values())
    if keys is not None:
        rows = [r for r in rows if r["key"] in keys]
    if not rows:
        raise PsrlError(f"{eval_dir} holds no scored samples")
    benchmark = cfg["config"]["benchmark"]
    known = list(dict.fromkeys([*PSRBENCH_DIMENSIONS, *DREAMBENCH_DIMENSIONS, *POCKET_DIMENSIONS]))
    dims = sorted(cfg["config"]["metrics"], key=lambda d: (known.index(d) if d in known else len(known), d))
    provenance = {"config_hash": config_hash(cfg["config"]), "config": cfg["config"], "versions": package_versions(),
                  "results": str(results_dir) if results_dir else None,
                  "data_root": str(data_root) if data_root else None}
    summary = summarize(rows, benchmark=benchmark, dimensions=dims, subsets=benchmark_subsets(benchmark),
                        provenance=provenance)
    write_report(summary, rows, eval_dir, data_root=data_root, title=title or f"{benchmark} report",
                 gallery_per_subset=gallery_per_subset)
    return summary
