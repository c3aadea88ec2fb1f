"""``BENCHMARKS``: every benchmark ``psrl bench`` knows, one :class:`BenchmarkSpec` each, looked up by name.

A spec names its functions as ``"module:attr"`` strings (imported on first use, so this module imports no loader,
model or reward), its subsets and dimensions in report order, and its published table (a JSON file under
``psrl/bench/assets/`` read by ``psrl bench compare --published``). The CLI, the result reader, the default metric
sets and the reports all dispatch through here; adding a benchmark is one ``BENCHMARKS.register`` line.

Loader contract: ``load(data_root, subsets, **options) -> LoadedSubsets`` (options the benchmark does not use are
ignored, e.g. DreamBench's ``reference_index``); ``parse_entry(subset, index, entry, data_root, **kw) ->
(Record | None, [ValidationIssue])`` reads one entry of a result file back; ``metrics(*, compat, judge_endpoint,
judge_model, tiny) -> {dimension: DimensionSpec}`` is the default metric set.
"""
from __future__ import annotations

from dataclasses import dataclass

from psrl.errors import PsrlError
from psrl.registry import Registry, import_object


@dataclass(frozen=True)
class BenchmarkSpec:
    """``subsets_ref`` / ``dimensions_ref``: the names, or a ``"module:attr"`` string naming them (kept lazy so
    that this module imports no benchmark module: they import the result reader, which imports this)."""

    name: str
    subsets_ref: tuple[str, ...] | str
    dimensions_ref: tuple[str, ...] | str
    load: str
    parse_entry: str
    metrics: str
    published: str | None = None
    description: str = ""
    overall_rule: str = "subset_mean"  # how the Overall row pools subsets (psrl.bench.summary.summarize)
    summary_extras: str | None = None  # "module:attr": rows -> dict merged into summary.json

    @property
    def subsets(self) -> tuple[str, ...]:
        ref = self.subsets_ref
        return tuple(import_object(ref) if isinstance(ref, str) else ref)

    @property
    def dimensions(self) -> tuple[str, ...]:
        ref = self.dimensions_ref
        return tuple(import_object(ref) if isinstance(ref, str) else ref)

    def call(self, which: str, *args, **kwargs):
        """Call the function named by field ``which`` (``load``, ``parse_entry``, ``metrics``)."""
        return import_object(getattr(self, which))(*args, **kwargs)


BENCHMARKS = Registry("benchmark")


def get_benchmark(name: str) -> BenchmarkSpec:
    """The spec of ``name``. Raises ``PsrlError`` naming the known benchmarks."""
    if name not in BENCHMARKS:
        raise PsrlError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS.names())}")
    return BENCHMARKS.get(name)


# adapters for the two benchmarks whose loaders predate the registry (their own signatures kept)
def _load_psrbench(data_root, subsets=None, **_):
    from psrl.bench.psrbench import load_psrbench

    return load_psrbench(data_root, subsets)


def _load_dreambench(data_root, subsets=None, *, reference_index=0, **_):
    from psrl.bench.dreambench import load_dreambench

    return load_dreambench(data_root, subjects=subsets, reference_index=reference_index)


def _parse_psrbench_like(subset, index, entry, data_root, **kw):
    from psrl.bench.psrbench import parse_entry

    return parse_entry(subset, index, entry, data_root, **kw)


def _psrbench_metrics(*, compat=False, judge_endpoint=None, judge_model=None, tiny=False):
    from psrl.bench.tasks import MetricSpec, psrbench_metrics

    metrics = psrbench_metrics(compat=compat, judge_endpoint=judge_endpoint, tiny=tiny)
    if judge_model:
        if not judge_endpoint:
            raise PsrlError("--judge-model needs --judge-endpoint")
        sa = metrics["semantic_alignment"]
        metrics["semantic_alignment"] = type(sa)(MetricSpec(sa.default.reward, {**sa.default.args,
                                                                                "model": judge_model}),
                                                 sa.per_subset)
    return metrics


def _dreambench_metrics(*, compat=False, judge_endpoint=None, judge_model=None, tiny=False):
    from psrl.bench.tasks import dreambench_metrics

    if compat or judge_endpoint or judge_model:
        raise PsrlError("--psrbench-compat, --judge-endpoint and --judge-model do not apply to DreamBench")
    return dreambench_metrics(tiny=tiny)


def _pocket_metrics(*, compat=False, judge_endpoint=None, judge_model=None, tiny=False):
    from psrl.bench.tasks import pocket_metrics

    if compat or judge_endpoint or judge_model:
        raise PsrlError("--psrbench-compat, --judge-endpoint and --judge-model do not apply to PocketBench")
    return pocket_metrics()


def _register_builtin() -> None:
    from psrl.bench.tasks import (
        DREAMBENCH_DIMENSIONS,
        DREAMBENCH_SUBSETS,
        POCKET_DIMENSIONS,
        PSRBENCH_DIMENSIONS,
        PSRBENCH_SUBSET_NAMES,
    )

    here = __name__
    BENCHMARKS.register("psrbench", BenchmarkSpec(
        "psrbench", PSRBENCH_SUBSET_NAMES, PSRBENCH_DIMENSIONS, f"{here}:_load_psrbench",
        f"{here}:_parse_psrbench_like", f"{here}:_psrbench_metrics", "psr_published.json",
        "PSRBench (arXiv 2512.01236): 7 subsets, subject consistency / semantic alignment / aesthetics"))
    BENCHMARKS.register("dreambench", BenchmarkSpec(
        "dreambench", DREAMBENCH_SUBSETS, DREAMBENCH_DIMENSIONS, f"{here}:_load_dreambench",
        f"{here}:_parse_psrbench_like", f"{here}:_dreambench_metrics", None,
        "DreamBench (arXiv 2208.12242): DINO / CLIP-I / CLIP-T"))
    BENCHMARKS.register("pocket", BenchmarkSpec(
        "pocket", PSRBENCH_SUBSET_NAMES, POCKET_DIMENSIONS, f"{here}:_load_psrbench",
        f"{here}:_parse_psrbench_like", f"{here}:_pocket_metrics", None,
        "PocketBench (psrl world make): PSRBench's format on the pocket world's held-out subjects, scored by "
        "pocket_subjects: subject consistency / semantic alignment / fidelity"))
    t2is = "psrl.bench.t2is"
    BENCHMARKS.register("t2is", BenchmarkSpec(
        "t2is", f"{t2is}:T2IS_SUBSETS", f"{t2is}:T2IS_DIMENSIONS", f"{t2is}:load", f"{t2is}:parse_entry",
        f"{t2is}:default_metrics", "t2is_published.json",
        "T2IS-Bench (arXiv 2506.23275): image sets from grid prompts",
        overall_rule="sample_mean"))  # T2IS-Eval averages over all cases
    gedit = "psrl.bench.gedit"
    for lang, name, table in (("en", "gedit", "gedit_published.json"), ("cn", "gedit-cn", "gedit_cn_published.json")):
        BENCHMARKS.register(name, BenchmarkSpec(
            name, f"{gedit}:GEDIT_GROUPS", f"{gedit}:GEDIT_DIMENSIONS", f"{gedit}:load_{lang}",
            f"{gedit}:parse_entry", f"{gedit}:default_metrics", table,
            f"GEdit-Bench (arXiv 2504.17761), {lang.upper()} instructions: VIEScore SC / PQ / O",
            summary_extras=f"{gedit}:summary_extras"))


_register_builtin()
