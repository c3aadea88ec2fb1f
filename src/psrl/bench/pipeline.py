"""The benchmark flows a user runs, as library functions (the CLI only parses arguments and calls these)."""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from psrl.bench.benchmarks import get_benchmark
from psrl.bench.evaluate import EVAL_CONFIG, EvalStats, evaluate_samples, read_sample_rows
from psrl.bench.provenance import config_hash, package_versions
from psrl.bench.report import write_report
from psrl.bench.results import ROOT_KEY, ResultSample
from psrl.sharding import Shard
from psrl.bench.summary import dimension_outcomes, summarize
from psrl.bench.tasks import DimensionSpec
from psrl.errors import PsrlError


def default_metrics(benchmark: str, *, compat: bool = False, judge_endpoint: str | None = None,
                    judge_model: str | None = None, tiny: bool = False) -> dict[str, DimensionSpec]:
    """The benchmark's default metric set (:mod:`psrl.bench.benchmarks`); ``PsrlError`` for an unknown name or an
    option the benchmark does not take."""
    return get_benchmark(benchmark).call("metrics", compat=compat, judge_endpoint=judge_endpoint,
                                         judge_model=judge_model, tiny=tiny)


def eval_and_report(samples: Sequence[ResultSample], out_dir: str | Path, metrics: dict[str, DimensionSpec], *,
                    benchmark: str, results_dir: str | Path, batch_size: int = 8,
                    device: str = "cpu", shard: Shard | None = None, retry_failed: bool = False,
                    report: bool = True, title: str | None = None,
                    progress: Callable[[int, int], None] | None = None) -> tuple[EvalStats, dict | None]:
    """Evaluate ``samples`` (:func:`psrl.bench.loading.load_results`: records resolved at load) into ``out_dir``
    and (rank 0) write the summary and reports, whose provenance names the root the records were resolved
    against (``Record.root``)."""
    shard = shard or Shard()
    stats = evaluate_samples(samples, out_dir, metrics, benchmark=benchmark, batch_size=batch_size, device=device,
                             shard=shard, retry_failed=retry_failed, progress=progress)
    keys = {s.key for s in samples}
    if shard.is_main:
        rows = [r for k, r in read_sample_rows(Path(out_dir)).items() if k in keys]
        stats.outcomes = dimension_outcomes(rows, list(metrics))
    summary = None
    if shard.is_main and report:
        source = next((s.item.record.root for s in samples if s.item.record is not None), None)
        summary = report_from_dir(out_dir, title=title or f"{benchmark}: {Path(results_dir)}",
                                  results_dir=results_dir, keys=keys, source=source)
    return stats, summary


def report_from_dir(eval_dir: str | Path, *, title: str | None = None, results_dir: str | Path | None = None,
                    keys: set[str] | None = None, gallery_per_subset: int = 12,
                    source: str | None = None) -> dict:
    """Summary and reports from an eval folder's ``samples.jsonl`` and ``eval_config.json``. ``source`` (where the
    scored records were loaded from) is provenance only; without it a rebuilt report keeps the previous
    summary's."""
    eval_dir = Path(eval_dir)
    cfg_path = eval_dir / EVAL_CONFIG
    if not cfg_path.is_file():
        raise PsrlError(f"{eval_dir} is not an evaluation folder (no {EVAL_CONFIG})")
    cfg = json.loads(cfg_path.read_text())
    previous = eval_dir / "summary.json"
    if source is None and previous.is_file():  # `psrl bench report DIR` keeps the eval's provenance
        source = json.loads(previous.read_text()).get(ROOT_KEY)
    rows = list(read_sample_rows(eval_dir).values())
    if keys is not None:
        rows = [r for r in rows if r["key"] in keys]
    if not rows:
        raise PsrlError(f"{eval_dir} holds no scored samples")
    benchmark = cfg["config"]["benchmark"]
    spec = get_benchmark(benchmark)
    known = list(spec.dimensions)
    dims = sorted(cfg["config"]["metrics"], key=lambda d: (known.index(d) if d in known else len(known), d))
    provenance = {"config_hash": config_hash(cfg["config"]), "config": cfg["config"], "versions": package_versions(),
                  "results": str(results_dir) if results_dir else None, ROOT_KEY: source}
    summary = summarize(rows, benchmark=benchmark, dimensions=dims, subsets=spec.subsets, provenance=provenance,
                        overall_rule=spec.overall_rule)
    if spec.summary_extras:  # benchmark-specific tables (GEdit-Bench's intersection columns)
        summary.update(spec.call("summary_extras", rows))
    write_report(summary, rows, eval_dir, title=title or f"{benchmark} report",
                 gallery_per_subset=gallery_per_subset)
    return summary
