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
built keep it (``BenchItem.record``) and list their problems, broken ones have ``record=None``. The files are read
and the reference paths resolved by :mod:`psrl.bench.loading` (``load_benchmark("psrbench", root)``).
"""
from __future__ import annotations

import copy
from pathlib import Path

from psrl.bench.items import ValidationIssue
from psrl.bench.tasks import SUBSETS_BY_NAME
from psrl.data.records import Record, SubjectRef
from psrl.fileio import write_json_atomic
from psrl.rewards.position import parse_relation  # the reward's rule: one parser for benchmark and reward


def parse_entry(subset: str, index: int, entry, *, benchmark: str = "psrbench",
                **_) -> tuple[Record | None, list[ValidationIssue]]:
    """Validate one entry and build its record (PSRBench's format, also DreamBench's and PocketBench's; PSRBench's
    subset rules apply when ``benchmark`` is ``"psrbench"``), subject images as ``input_path`` writes them:
    :mod:`psrl.bench.loading` resolves them under the data root (an absolute or escaping path is its issue). The
    record is ``None`` when the entry cannot describe a sample (not an object, no instruction, no reference paths,
    reference/category counts disagree)."""
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
    if (spec is not None and spec.semantic == "position" and isinstance(instruction, str)
            and parse_relation(instruction) is None):
        bad("instruction", f"no recognised spatial relation in {instruction!r}")
    if "result_path" in entry and not (isinstance(entry["result_path"], str) and entry["result_path"]):
        bad("result_path", f"must be a path string when present, got {entry['result_path']!r}")
    if fatal:
        return None, issues
    subjects = tuple(SubjectRef(image=p, phrase=entry[f"category{i + 1}"].strip()) for i, p in enumerate(paths))
    record = Record(id=f"{subset}/{index}", prompt=instruction, subjects=subjects,
                    tags={"benchmark": benchmark, "subset": subset, "index": index})
    if isinstance(entry.get("subject"), str):
        record.tags["subject"] = entry["subject"]
    return record, issues


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
