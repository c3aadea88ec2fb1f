"""Benchmark loading: the one place a benchmark's data root is read and its reference paths meet it.

Two sources: a released data root (:func:`load_benchmark`; layouts in :mod:`psrl.bench.psrbench`,
:mod:`~psrl.bench.dreambench`, :mod:`~psrl.bench.gedit`, :mod:`~psrl.bench.t2is`) and a result folder
(:func:`load_results`; its ``bench.json``, :func:`psrl.bench.results.result_manifest`, names the root it was
generated from). Each entry goes through its benchmark's parser (``BenchmarkSpec.parse_entry``: a pure function of
the entry, reference paths as written), then its reference paths (the entry's ``BenchmarkSpec.references`` key) are
resolved under the root here: an absolute or escaping path is an issue and the entry gets no record; with
``check_files`` each image is decoded in full (:func:`psrl.images.check_image`: a truncated JPEG or a side under
:data:`psrl.images.MIN_SIDE` is an issue here, not a failure at evaluation). Generation, evaluation, results,
summaries, reports and the metrics receive :class:`~psrl.bench.items.BenchItem` records with absolute paths and
``Record.root`` set, never a root.
"""
from __future__ import annotations

import json
from dataclasses import replace
from functools import partial
from pathlib import Path

from psrl.bench.benchmarks import BenchmarkSpec, get_benchmark
from psrl.bench.dreambench import dreambench_entries, dreambench_spec
from psrl.bench.gedit import GEDIT_GROUPS, METADATA
from psrl.bench.items import BenchItem, LoadedSubsets, ValidationIssue
from psrl.bench.results import ROOT_KEY, ResultSample, read_manifest, result_sample, seed_dirs
from psrl.bench.t2is import ALIGNMENT_FILE, CATEGORY_SLUGS, PROMPTS_FILE, T2IS_SUBSETS
from psrl.bench.tasks import PSRBENCH_SUBSET_NAMES, SUBSETS_BY_NAME
from psrl.data.records import RecordError, resolve_under
from psrl.errors import PsrlError
from psrl.fileio import jsonl_lines
from psrl.images import IMAGE_SUFFIXES, check_image
from psrl.registry import import_object

def load_benchmark(benchmark: str, data_root: str | Path, subsets: list[str] | None = None, *,
                   reference_index: int | str = 0, check_files: bool = True) -> LoadedSubsets:
    """Load and validate a benchmark's data root: every entry of the ``subsets`` asked for (all without it) as an
    item, every problem as an issue (a root that is not a directory is one). ``reference_index`` is DreamBench's
    (which sorted image of a subject is the reference, or ``"all"``). Raises ``PsrlError`` for an unknown
    benchmark only."""
    spec = get_benchmark(benchmark)
    root, out = Path(data_root).resolve(), LoadedSubsets()
    if not root.is_dir():
        out.issues.append(ValidationIssue("*", None, ROOT_KEY, f"not a directory: {root}"))
        return out
    out.source = str(root)
    groups = spec.call("load", root, subsets, out, reference_index=reference_index)
    context = spec.call("context", root) if spec.context else {}
    for subset, entries in groups.items():
        out.raw[subset] = entries
        parse_entries(out, spec, subset, entries, root, check_files=check_files, **context)
    return out


def load_results(results_dir: str | Path, *, benchmark: str | None = None, data_root: str | Path | None = None,
                 subsets: list[str] | None = None) -> tuple[list[ResultSample], list[ValidationIssue]]:
    """Every entry of every result file under ``results_dir`` (``<Subset>.json`` there or in ``seed<N>/``) as a
    sample, in (seed, subset, index) order, its references resolved under ``data_root``, and the issues of the
    files (which also mark the affected samples' ``problem``); ``benchmark`` and ``data_root`` default to the
    folder's ``bench.json``. Images are not decoded here (evaluation reports an unreadable one for its sample).

    Raises:
        PsrlError: no root named, the folder missing, or no result file in it.
    """
    manifest = read_manifest(results_dir)
    benchmark = benchmark or manifest.get("benchmark") or "psrbench"
    root = data_root or manifest.get(ROOT_KEY)
    if not root:
        raise PsrlError(f"{results_dir} has no bench.json naming the data root; pass --data-root")
    results_dir, root = Path(results_dir), Path(root).resolve()
    if not results_dir.is_dir():
        raise PsrlError(f"results folder not found: {results_dir}")
    spec = get_benchmark(benchmark)
    names = list(subsets) if subsets else list(spec.subsets)
    context = spec.call("context", root) if spec.context else {}
    samples: list[ResultSample] = []
    issues: list[ValidationIssue] = []
    found_any = False
    for seed, folder in seed_dirs(results_dir):
        for subset in names:
            json_file = folder / f"{subset}.json"
            if not json_file.is_file():
                continue
            found_any = True
            loaded = LoadedSubsets()
            if (entries := read_json_list(json_file, subset, loaded)) is not None:
                parse_entries(loaded, spec, subset, entries, root, check_files=False, **context)
            issues.extend(loaded.issues)
            for item in loaded.items:
                samples.append(result_sample(seed, item, json_file, [str(i) for i in loaded.problems_of(item.key)]))
    if not found_any:
        raise PsrlError(f"no result files ({', '.join(f'{n}.json' for n in names)}) in {results_dir} "
                        f"or its seed<N>/ folders")
    return samples, issues


def parse_entries(out: LoadedSubsets, spec: BenchmarkSpec, subset: str, entries: list, root: Path, *,
                  check_files: bool = True, **context) -> None:
    """Each entry through the benchmark's parser, then its references resolved under ``root`` (issues for the
    paths, with or without a record, so validation lists them all), into ``out``."""
    parse = import_object(spec.parse_entry)
    for index, entry in enumerate(entries):
        record, issues = parse(subset, index, entry, benchmark=spec.name, **context)
        paths = _references(entry, spec.references, root, check_files,
                            lambda f, m: issues.append(ValidationIssue(subset, index, f, m)))
        if record is not None:
            record = None if paths is None else replace(
                record, root=str(root), subjects=tuple(replace(s, image=p) for s, p in zip(record.subjects, paths)))
        out.issues.extend(issues)
        out.items.append(BenchItem(subset, index, entry if isinstance(entry, dict) else {"_raw": entry}, record))


def _references(entry, key: str | None, root: Path, check_files: bool, bad) -> list[str] | None:
    """The entry's reference paths under ``key`` (a list of paths, or one path) resolved under ``root``, or
    ``None`` when one is absolute or escapes it; malformed values are the parser's to report."""
    value = entry.get(key) if key and isinstance(entry, dict) else None
    paths = value if isinstance(value, list) else [value] if value else []
    resolved: list[str] | None = []
    for i, path in enumerate(paths):
        if not isinstance(path, str) or not path:
            continue
        field = f"{key}[{i}]" if isinstance(value, list) else key
        try:
            full = resolve_under(root, path, what=field)
        except RecordError as e:
            bad(field, str(e))
            resolved = None
            continue
        if check_files and (problem := check_image(full)):
            bad(field, problem)
        if resolved is not None:
            resolved.append(str(full))
    return resolved


def read_json_list(path: Path, subset: str, out: LoadedSubsets) -> list | None:
    """A subset file's JSON list, or ``None`` with the reason as an issue in ``out``."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        out.issues.append(ValidationIssue(subset, None, "file", f"{path}: cannot read JSON: {e}"))
        return None
    if not isinstance(data, list):
        out.issues.append(ValidationIssue(subset, None, "file", f"{path}: expected a JSON list, "
                                                                 f"got {type(data).__name__}"))
        return None
    return data


def check_subset_names(out: LoadedSubsets, names: list[str] | None, known, what: str = "subset") -> None:
    """An issue for each of ``names`` that is not one of the benchmark's ``known`` subsets."""
    for name in names or ():
        if name not in known:
            out.issues.append(ValidationIssue(name, None, "subset", f"unknown {what}; known: {', '.join(known)}"))


# ---------------------------------------------------------------- the readers: root -> {subset: [entry]}
def read_psrbench(root: Path, subsets: list[str] | None, out: LoadedSubsets, **_) -> dict[str, list]:
    """The released ``<Subset>.json`` files of a PSRBench (or PocketBench) root; unknown names, missing subset
    files and stray ``*.json`` files that are not subsets are issues."""
    wanted = list(subsets) if subsets else list(PSRBENCH_SUBSET_NAMES)
    check_subset_names(out, wanted, PSRBENCH_SUBSET_NAMES)
    if not subsets:
        for stray in sorted(root.glob("*.json")):
            if stray.stem not in SUBSETS_BY_NAME:
                out.issues.append(ValidationIssue(stray.stem, None, "subset",
                                                  f"{stray.name} is not a PSRBench subset file; known subsets: "
                                                  f"{', '.join(PSRBENCH_SUBSET_NAMES)}"))
    groups = {}
    for name in wanted:
        if name not in SUBSETS_BY_NAME:
            continue
        path = root / f"{name}.json"
        if not path.is_file():
            out.issues.append(ValidationIssue(name, None, "file", f"subset file not found: {path}"))
        elif (entries := read_json_list(path, name, out)) is not None:
            groups[name] = entries
    return groups


def read_dreambench(root: Path, subsets: list[str] | None, out: LoadedSubsets, *, reference_index: int | str = 0,
                    **_) -> dict[str, list]:
    """DreamBench's entries built from the dataset folder (:mod:`psrl.bench.dreambench`). Missing subjects,
    subjects without images, unknown subject folders and an out-of-range ``reference_index`` are issues (the entry
    is kept with its problem)."""
    spec = dreambench_spec()
    wanted = list(subsets) if subsets else list(spec["classes"])
    for name in wanted:
        if name not in spec["classes"]:
            out.issues.append(ValidationIssue(name, None, "subject", "unknown DreamBench subject"))
    if not subsets:
        for child in sorted(root.iterdir()):
            if child.is_dir() and child.name not in spec["classes"] and not child.name.startswith("."):
                out.issues.append(ValidationIssue(child.name, None, "subject",
                                                  f"folder {child} is not a DreamBench subject"))
    groups: dict[str, list] = {"object": [], "live": []}
    for subject in wanted:
        if subject not in spec["classes"]:
            continue
        folder = root / subject
        images = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
            if folder.is_dir() else []
        if not images:
            out.issues.append(ValidationIssue(subject, None, "folder", f"no reference images in {folder}"))
            refs = ["missing.jpg"]
        elif reference_index == "all":
            refs = images
        elif not 0 <= int(reference_index) < len(images):
            out.issues.append(ValidationIssue(subject, None, "reference_index",
                                              f"{reference_index} out of range for {len(images)} image(s)"))
            refs = images[:1]
        else:
            refs = [images[int(reference_index)]]
        subset = "live" if subject in spec["live_subjects"] else "object"
        groups[subset] += dreambench_entries(subject, [f"{subject}/{name}" for name in refs])
    return {subset: entries for subset, entries in groups.items() if entries}


def _read_gedit(root: Path, subsets: list[str] | None, out: LoadedSubsets, *, language: str, **_) -> dict[str, list]:
    """GEdit-Bench's entries of one instruction ``language`` (:mod:`psrl.bench.gedit`), per task group."""
    path = root / METADATA
    data = read_json_list(path, "*", out)
    if data is None:
        return {}
    check_subset_names(out, subsets, GEDIT_GROUPS, what="task group")
    groups: dict[str, list] = {g: [] for g in GEDIT_GROUPS}
    for i, entry in enumerate(data):
        group = entry.get("task_type") if isinstance(entry, dict) else None
        if group not in groups:
            out.issues.append(ValidationIssue("*", None, f"[{i}].task_type", f"{path}: {group!r} is not a "
                                                                            f"GEdit-Bench task group"))
        elif entry.get("instruction_language") == language:
            groups[group].append(entry)
    return {g: e for g, e in groups.items() if e and (not subsets or g in subsets)}


read_gedit_en = partial(_read_gedit, language="en")
read_gedit_cn = partial(_read_gedit, language="cn")


def read_t2is(root: Path, subsets: list[str] | None, out: LoadedSubsets, **_) -> dict[str, list]:
    """``<root>/test_metadata.jsonl`` (:mod:`psrl.bench.t2is`) into per-category subsets; unknown categories and
    bad lines are issues."""
    path = root / PROMPTS_FILE
    if not path.is_file():
        out.issues.append(ValidationIssue("*", None, "file", f"T2IS prompt file not found: {path}"))
        return {}
    check_subset_names(out, subsets, T2IS_SUBSETS)
    groups: dict[str, list] = {s: [] for s in T2IS_SUBSETS}
    for where, entry in jsonl_lines(path):
        line = f"line {where.rsplit(':', 1)[1]}"
        if isinstance(entry, json.JSONDecodeError):
            out.issues.append(ValidationIssue("*", None, line, f"{path}: not JSON: {entry}"))
            continue
        slug = CATEGORY_SLUGS.get(entry.get("category")) if isinstance(entry, dict) else None
        if slug is None:
            out.issues.append(ValidationIssue("*", None, line, f"{path}: category "
                                              f"{entry.get('category') if isinstance(entry, dict) else entry!r} "
                                              f"is not one of {sorted(CATEGORY_SLUGS)}"))
            continue
        groups[slug].append(entry)
    return {s: e for s, e in groups.items() if e and (not subsets or s in subsets)}


def t2is_context(root: Path) -> dict:
    """What T2IS-Bench's parser needs beside an entry: ``<root>/prompt_alignment.json`` (``alignment``: the table,
    ``None`` when absent, the problem as a string when unreadable)."""
    path = root / ALIGNMENT_FILE
    if not path.is_file():
        return {"alignment": None}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return {"alignment": f"{path}: cannot read JSON: {e}"}
    return {"alignment": data if isinstance(data, dict) else f"{path}: expected a JSON object of case id -> "
                                                            "criteria"}
