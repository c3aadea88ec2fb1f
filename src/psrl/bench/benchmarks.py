"""``BENCHMARKS``: every benchmark ``psrl bench`` knows, one :class:`BenchmarkSpec` each, looked up by name.

A spec names its functions as ``"module:attr"`` strings (imported on first use, so this module imports no loader,
model or reward), its subsets and dimensions in report order, and its published table (a JSON file under
``psrl/bench/assets/`` read by ``psrl bench compare --published``). The CLI, the result reader, the default metric
sets and the reports all dispatch through here; adding a benchmark is one ``BENCHMARKS.register`` line.

Loader contract (:mod:`psrl.bench.loading` calls both, the one place a root is read): ``load(root, subsets, out,
**options) -> {subset: [entry]}`` reads a data root's entries (options the benchmark does not use are ignored, e.g.
DreamBench's ``reference_index``; problems go to ``out.issues``); ``parse_entry(subset, index, entry, *, benchmark,
**context) -> (Record | None, [ValidationIssue])`` is a pure function of one entry (reference paths as written,
resolved by the loader from the entry's ``references`` key), ``context(root) -> dict`` what a parser needs from
the root beside the entries; ``metrics(*, compat, judge_endpoint, judge_model, tiny) -> {dimension:
DimensionSpec}`` is the default metric set.
"""
from __future__ import annotations

from dataclasses import dataclass

from psrl.bench.tasks import (DREAMBENCH_DIMENSIONS, DREAMBENCH_SUBSETS, POCKET_DIMENSIONS, PSRBENCH_DIMENSIONS,
                              PSRBENCH_SUBSET_NAMES)
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
    references: str | None = "input_path"  # the entry key of the reference paths (a list, or one path)
    context: str | None = None  # "module:attr": root -> extra keyword arguments of parse_entry

    @property
    def subsets(self) -> tuple[str, ...]:
        ref = self.subsets_ref
        return tuple(import_object(ref) if isinstance(ref, str) else ref)

    @property
    def dimensions(self) -> tuple[str, ...]:
        ref = self.dimensions_ref
        return tuple(import_object(ref) if isinstance(ref, str) else ref)

    def call(self, which: str, *args, **kwargs):
        """Call the function named by field ``which`` (``load``, ``parse_entry``, ``context``, ``metrics``)."""
        return import_object(getattr(self, which))(*args, **kwargs)


BENCHMARKS = Registry("benchmark")


def get_benchmark(name: str) -> BenchmarkSpec:
    """The spec of ``name``. Raises ``PsrlError`` naming the known benchmarks."""
    if name not in BENCHMARKS:
        raise PsrlError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS.names())}")
    return BENCHMARKS.get(name)


def _register_builtin() -> None:
    load, psr, tasks = "psrl.bench.loading", "psrl.bench.psrbench:parse_entry", "psrl.bench.tasks"
    BENCHMARKS.register("psrbench", BenchmarkSpec(
        "psrbench", PSRBENCH_SUBSET_NAMES, PSRBENCH_DIMENSIONS, f"{load}:read_psrbench", psr,
        f"{tasks}:psrbench_metrics", "psr_published.json",
        "PSRBench (arXiv 2512.01236): 7 subsets, subject consistency / semantic alignment / aesthetics"))
    BENCHMARKS.register("dreambench", BenchmarkSpec(
        "dreambench", DREAMBENCH_SUBSETS, DREAMBENCH_DIMENSIONS, f"{load}:read_dreambench", psr,
        f"{tasks}:dreambench_metrics", None,
        "DreamBench (arXiv 2208.12242): DINO / CLIP-I / CLIP-T"))
    BENCHMARKS.register("pocket", BenchmarkSpec(
        "pocket", PSRBENCH_SUBSET_NAMES, POCKET_DIMENSIONS, f"{load}:read_psrbench", psr,
        f"{tasks}:pocket_metrics", None,
        "PocketBench (psrl world make): PSRBench's format on the pocket world's held-out subjects, scored by "
        "pocket_subjects: subject consistency / semantic alignment / fidelity"))
    t2is = "psrl.bench.t2is"
    BENCHMARKS.register("t2is", BenchmarkSpec(
        "t2is", f"{t2is}:T2IS_SUBSETS", f"{t2is}:T2IS_DIMENSIONS", f"{load}:read_t2is", f"{t2is}:parse_entry",
        f"{t2is}:default_metrics", "t2is_published.json",
        "T2IS-Bench (arXiv 2506.23275): image sets from grid prompts",
        overall_rule="sample_mean", references=None,  # T2IS-Eval averages over all cases; no reference images
        context=f"{load}:t2is_context"))
    gedit = "psrl.bench.gedit"
    for lang, name, table in (("en", "gedit", "gedit_published.json"), ("cn", "gedit-cn", "gedit_cn_published.json")):
        BENCHMARKS.register(name, BenchmarkSpec(
            name, f"{gedit}:GEDIT_GROUPS", f"{gedit}:GEDIT_DIMENSIONS", f"{load}:read_gedit_{lang}",
            f"{gedit}:parse_entry", f"{gedit}:default_metrics", table,
            f"GEdit-Bench (arXiv 2504.17761), {lang.upper()} instructions: VIEScore SC / PQ / O",
            summary_extras=f"{gedit}:summary_extras", references="input_image"))


_register_builtin()
