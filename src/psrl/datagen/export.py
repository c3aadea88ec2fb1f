"""Stage 9, ``export``: the filtered samples as training records and as a PSRBench-format held-out benchmark.

Outputs (all rewritten atomically on every run, so export is idempotent):

- ``train.jsonl`` / ``eval.jsonl`` (the held-out split; the name every shipped recipe's ``eval.records`` reads, e.g.
  ``data/psr/eval.jsonl``): :class:`psrl.data.records.Record` JSONL with ``prompt`` = the instruction,
  ``subjects`` = (reference image, category phrase) in subject order, ``target`` = the target image, and
  ``tags`` = ``{task, subset, categories, source}``. Paths are relative to the dataset directory, which is the data
  root for ``psrl sft`` / ``psrl train``.
- ``psrbench/<Task>.json``: the held-out split in PSRBench's format (``instruction``, ``input_path``,
  ``category1..N``), one file per task (all seven, empty lists included), with its reference images copied
  (hard-linked when possible) under ``psrbench/references/`` so ``psrbench/`` is a self-contained benchmark root
  for ``psrl bench``.

A sample is held out when ``stable_seed(export.seed, "heldout", id, bits=31) / 2^31 < export.heldout_fraction``:
the split of a sample never changes when the dataset grows. An empty split is written (so the folder is complete)
and warned about: a recipe's ``eval.records`` cannot read an empty file.
"""
from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from pathlib import Path

from psrl.datagen.config import TASKS, DataPipelineConfig
from psrl.datagen.manifest import read_kept
from psrl.datagen.stats import StageStats, write_stage_stats
from psrl.seeding import stable_seed
from psrl.data.records import Record, SubjectRef
from psrl.fileio import atomic_path, write_json_atomic, write_jsonl_atomic

log = logging.getLogger(__name__)

#: the files export writes into the dataset directory; recipes name them as ``<dataset>/<file>``
TRAIN_RECORDS = "train.jsonl"
EVAL_RECORDS = "eval.jsonl"  # the held-out split: one name for it everywhere (recipes' eval.records)
BENCH_DIR = "psrbench"


def to_record(e: dict) -> Record:
    return Record(id=e["id"], prompt=e["instruction"],
                  subjects=tuple(SubjectRef(image=r, phrase=p) for r, p in zip(e["references"], e["phrases"])),
                  tags={"task": e["task"], "subset": e["task"], "categories": e["categories"], "source": "psrl data"},
                  target=e["target"])


def to_psrbench_entry(e: dict, input_paths: list[str]) -> dict:
    entry = {"instruction": e["instruction"], "input_path": input_paths}
    for i, phrase in enumerate(e["phrases"], 1):
        entry[f"category{i}"] = phrase
    return entry


def _link_or_copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def run_export(dataset: str | Path, cfg: DataPipelineConfig) -> StageStats:
    dataset = Path(dataset)
    entries = read_kept(dataset, "filter")
    fraction = cfg.export.heldout_fraction
    draws = {e["id"]: stable_seed(cfg.export.seed, "heldout", e["id"], bits=31) / 2 ** 31 for e in entries}
    n_held = sum(d < fraction for d in draws.values())
    # a small dataset whose hash draw left one split empty would give a recipe nothing to read: with two or more
    # samples, each split keeps at least one (the sample whose draw is nearest the threshold moves), deterministically
    if len(entries) >= 2 and fraction > 0:
        n_held = min(max(n_held, 1), len(entries) - 1)
    held_ids = set(sorted(draws, key=draws.get)[:n_held])  # the lowest draws
    train = [e for e in entries if e["id"] not in held_ids]
    heldout = [e for e in entries if e["id"] in held_ids]
    write_jsonl_atomic(dataset / TRAIN_RECORDS, [to_record(e).to_json() for e in train])
    write_jsonl_atomic(dataset / EVAL_RECORDS, [to_record(e).to_json() for e in heldout])
    for name, split, fix in ((TRAIN_RECORDS, train, "lower export.heldout_fraction"),
                             (EVAL_RECORDS, heldout, "raise export.heldout_fraction or make more samples")):
        if entries and not split:
            log.warning("export: %s is empty (%d kept samples, heldout_fraction %g); a recipe reading it stops with "
                        "'no records': %s", dataset / name, len(entries), fraction, fix)

    bench = dataset / BENCH_DIR
    by_task: dict[str, list[dict]] = {t: [] for t in TASKS}
    for e in heldout:
        paths = []
        for ref in e["references"]:
            rel = f"references/{Path(ref).name}"
            _link_or_copy(dataset / ref, bench / rel)
            paths.append(rel)
        by_task[e["task"]].append(to_psrbench_entry(e, paths))
    written = {}
    for task, items in by_task.items():
        # every task gets its file (an empty list when it has no held-out sample) so the folder is a complete root
        write_json_atomic(bench / f"{task}.json", items)
        written[task] = len(items)
    stats = StageStats(stage="export", inputs=len(entries), kept=len(entries), rejected=0, new=len(entries),
                       extra={"train": len(train), "eval": len(heldout),
                              "train_tasks": dict(sorted(Counter(e["task"] for e in train).items())),
                              "psrbench_items": written})
    write_stage_stats(dataset, stats)
    return stats
