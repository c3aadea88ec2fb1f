"""PSRBench in its released layout: import into records, validate, export result files.

Layout (the README and the ``eval/`` scripts of wang-shulei/PSR@c719168)::

    PSRBench/
      Attribute.json Action.json Background.json Position.json Complex.json Three.json Four.json
      subjects/ animals/          # reference images; input_path entries are relative to this root

Each ``<Subset>.json`` is a JSON list of objects with ``instruction`` (str), ``input_path`` (list of reference paths
relative to the data root, subject order), ``category1``..``categoryN`` (the detector phrase of subject i) and, in
a result file, ``result_path`` (the generated image; the released scripts open it as given, relative to the current
directory or absolute). The README's ``input_paths`` is a typo: every script reads ``input_path``; psrl reads and
writes ``input_path`` and reports ``input_paths`` as a wrong key.

Nothing is dropped silently: every problem becomes a :class:`ValidationIssue`; entries whose record can still be
built keep it (``BenchItem.record``) and list their problems, broken ones have ``record=None``.
"""
from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from psrl.bench.items import BenchItem, ValidationIssue, check_image
from psrl.bench.tasks import PSRBENCH_SUBSET_NAMES, SUBSETS_BY_NAME
from psrl.data.records import Record, RecordError, SubjectRef, resolve_under
from psrl.fileio import write_json_atomic

log = logging.getLogger(__name__)


@dataclass
class LoadedSubsets:
    """Items of every readable entry (in subset order, then index) and all issues found."""

    items: list[BenchItem] = field(default_factory=list)
    issues: list[ValidationIssue] = field(default_factory=list)
    # the raw lists as read (to write result files back with the same entries, in the same order)
    raw: dict[str, list] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def problems_of(self, key: str) -> list[ValidationIssue]:
        return [i for i in self.issues if i.index is not None and f"{i.subset}/{i.index}" == key]


def _relation_parser():
    """The rewards' pure relation parser (one implementation for the benchmark and the reward), or ``None``."""
    try:
        from psrl.rewards.position import parse_relation
    except ImportError:
        return None
    return parse_relation


def parse_entry(subset: str, index: int, entry, data_root: Path, *, check_files: bool = True,
                relation_parser=None, benchmark: str = "psrbench") -> tuple[Record | None, list[ValidationIssue]]:
    """Validate one entry and build its record, reference paths resolved under ``data_root`` (absolute; the entry's
    ``input_path`` stays relative). The record is ``None`` when the entry cannot describe a sample (not an object,
    no instruction, bad or escaping reference paths, reference/category counts disagree)."""
    issues: list[ValidationIssue] = []

    def bad(fieldname: str, message: str) -> None:
        issues.append(ValidationIssue(subset, index, fieldname, message))

    if not isinstance(entry, dict):
        bad("entry", f"expected a JSON object, got {type(entry).__name__}")
        return None, issues
    spec = SUBSETS_BY_NAME.get(subset) if benchmark == "psrbench" else None
    fatal = False
    instruction = entry.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        bad("instruction", f"must be a non-empty string, got {instruction!r}")
        fatal = True
    if "input_path" not in entry and "input_paths" in entry:
        bad("input_path", "missing; found 'input_paths' (the README's typo): the released scripts read 'input_path'")
        return None, issues
    paths = entry.get("input_path")
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
        bad("input_path", f"must be a non-empty list of path strings, got {paths!r}")
        return None, issues
    n_cat = 0
    while isinstance(entry.get(f"category{n_cat + 1}"), str) and entry[f"category{n_cat + 1}"].strip():
        n_cat += 1
    extra = sorted(k for k in entry if k.startswith("category") and k[8:].isdigit() and int(k[8:]) > n_cat)
    if extra:
        bad(extra[0], f"category keys must be category1..categoryN without gaps or empty values; "
                      f"{extra} follow the last valid one category{n_cat}")
        fatal = True
    if n_cat != len(paths):
        bad("category", f"{len(paths)} reference(s) in input_path but {n_cat} category field(s)")
        fatal = True
    if spec is not None and len(paths) != spec.num_refs:
        bad("input_path", f"subset {subset} has {spec.num_refs} references per entry, this entry has {len(paths)}")
        fatal = True
    resolved = []
    for i, p in enumerate(paths):
        try:
            full = resolve_under(data_root, p, what=f"input_path[{i}]")
        except RecordError as e:
            bad(f"input_path[{i}]", str(e))
            fatal = True
            continue
        resolved.append(str(full))
        if check_files:
            problem = check_image(full)
            if problem:
                bad(f"input_path[{i}]", problem)
    if (spec is not None and spec.semantic == "position" and isinstance(instruction, str) and relation_parser
            and relation_parser(instruction) is None):
        bad("instruction", f"no recognised spatial relation in {instruction!r}")
    if "result_path" in entry and not (isinstance(entry["result_path"], str) and entry["result_path"]):
        bad("result_path", f"must be a path string when present, got {entry['result_path']!r}")
    if fatal:
        return None, issues
    subjects = tuple(SubjectRef(image=p, phrase=entry[f"category{i + 1}"].strip()) for i, p in enumerate(resolved))
    record = Record(id=f"{subset}/{index}", prompt=instruction, subjects=subjects,
                    tags={"benchmark": benchmark, "subset": subset, "index": index},
                    root=str(Path(data_root).resolve()))
    if isinstance(entry.get("subject"), str):
        record.tags["subject"] = entry["subject"]
    return record, issues


def load_subset_file(path: Path, subset: str, data_root: Path, *, check_files: bool = True,
                     relation_parser=None, out: LoadedSubsets | None = None,
                     benchmark: str = "psrbench", parse=None) -> LoadedSubsets:
    """Read one ``<Subset>.json`` (a released subset file or a result file) into ``out``; ``parse`` is the
    benchmark's entry parser (:mod:`psrl.bench.benchmarks`; default :func:`parse_entry`)."""
    out = out or LoadedSubsets()
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        out.issues.append(ValidationIssue(subset, None, "file", f"{path}: cannot read JSON: {e}"))
        return out
    if not isinstance(data, list):
        out.issues.append(ValidationIssue(subset, None, "file", f"{path}: expected a JSON list, "
                                                                 f"got {type(data).__name__}"))
        return out
    out.raw[subset] = data
    add_entries(out, subset, data, data_root, check_files=check_files, relation_parser=relation_parser,
                benchmark=benchmark, parse=parse)
    return out


def add_entries(out: LoadedSubsets, subset: str, data: list, data_root: Path, *, check_files: bool = True,
                relation_parser=None, benchmark: str = "psrbench", parse=None) -> None:
    """Parse a subset's entries into ``out`` (items + issues)."""
    for index, entry in enumerate(data):
        record, issues = (parse or parse_entry)(subset, index, entry, data_root, check_files=check_files,
                                     relation_parser=relation_parser, benchmark=benchmark)
        out.issues.extend(issues)
        out.items.append(BenchItem(subset, index, entry if isinstance(entry, dict) else {"_raw": entry}, record))


def open_root(data_root: str | Path) -> tuple[Path, LoadedSubsets]:
    """``(resolved root, an empty LoadedSubsets)`` to load a benchmark into, the latter holding the issue "not a
    directory" when the root is none (the loader then returns it as it is)."""
    root, out = Path(data_root).resolve(), LoadedSubsets()
    if not root.is_dir():
        out.issues.append(ValidationIssue("*", None, "data_root", f"not a directory: {root}"))
    return root, out


def add_groups(out: LoadedSubsets, raw: dict[str, list], subsets: list[str] | None, data_root: Path, parse) -> None:
    """The entries of every group of ``raw`` (in its order) that ``subsets`` asks for (all without it), kept in
    ``out.raw`` and parsed into ``out`` by the benchmark's ``parse`` (GEdit-Bench and T2IS-Bench read one file of
    all groups)."""
    for group, entries in raw.items():
        if entries and (not subsets or group in subsets):
            out.raw[group] = entries
            add_entries(out, group, entries, data_root, parse=parse)


def check_subset_names(out: LoadedSubsets, names: list[str] | None, known, what: str = "subset") -> None:
    """An issue for each of ``names`` that is not one of the benchmark's ``known`` subsets."""
    for name in names or ():
        if name not in known:
            out.issues.append(ValidationIssue(name, None, "subset", f"unknown {what}; known: {', '.join(known)}"))


def load_psrbench(data_root: str | Path, subsets: list[str] | None = None, *, check_files: bool = True,
                  json_dir: str | Path | None = None) -> LoadedSubsets:
    """Load (and validate) the subset files of a PSRBench root. ``subsets`` restricts to some subsets; unknown
    names, missing subset files and stray ``*.json`` files that are not subsets are reported as issues.
    ``json_dir`` reads the subset files from another folder (a result folder); references stay under ``data_root``.
    """
    root, out = open_root(data_root)
    if out.issues:
        return out
    json_root = Path(json_dir) if json_dir is not None else root
    parser = _relation_parser()
    if parser is None:
        out.notes.append("position relation check skipped: psrl.rewards.position.parse_relation is not available")
    wanted = list(subsets) if subsets else list(PSRBENCH_SUBSET_NAMES)
    check_subset_names(out, wanted, PSRBENCH_SUBSET_NAMES)
    if not subsets:
        for stray in sorted(json_root.glob("*.json")):
            if stray.stem not in SUBSETS_BY_NAME:
                out.issues.append(ValidationIssue(stray.stem, None, "subset",
                                                  f"{stray.name} is not a PSRBench subset file; known subsets: "
                                                  f"{', '.join(PSRBENCH_SUBSET_NAMES)}"))
    for name in wanted:
        if name not in SUBSETS_BY_NAME:
            continue
        path = json_root / f"{name}.json"
        if not path.is_file():
            out.issues.append(ValidationIssue(name, None, "file", f"subset file not found: {path}"))
            continue
        load_subset_file(path, name, root, check_files=check_files, relation_parser=parser, out=out)
    return out


def export_subset(raw_entries: list, result_paths: dict[int, str], path: str | Path) -> None:
    """Write a result file: the subset's entries unchanged, in order, with ``result_path`` set where an image
    exists (entries without an image keep no ``result_path``, so evaluation counts them as missing)."""
    out = []
    for index, entry in enumerate(raw_entries):
        entry = copy.deepcopy(entry)
        if isinstance(entry, dict):
            entry.pop("result_path", None)
            if index in result_paths:
                entry["result_path"] = result_paths[index]
        out.append(entry)
    write_json_atomic(path, out)
