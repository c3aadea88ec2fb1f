"""Generate benchmark images with any psrl policy: several seeds per entry, resumable, sharded across processes.

Every (seed, entry) sample has its own generator seeded from ``(seed, subset, index)``, so an image does not depend
on the batch it fell in, on the number of processes or on a resume. Existing images are skipped. Rank 0 writes the
result JSON files (released format, ``result_path`` set) once every rank is done.
"""
from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from psrl.bench.items import BenchItem, LoadedSubsets
from psrl.bench.psrbench import export_subset
from psrl.bench.results import MANIFEST, image_path, read_manifest, result_json_path
from psrl.sharding import Shard
from psrl.errors import PsrlError
from psrl.fileio import write_json_atomic
from psrl.images import save_image
from psrl.seeding import stable_seed

log = logging.getLogger(__name__)


@dataclass
class GenerateStats:
    """Counts over every rank (after the run); ``seconds`` is this rank's generation time."""

    generated: int = 0
    skipped_existing: int = 0
    skipped_invalid: list[str] = field(default_factory=list)
    seconds: float = 0.0


def invalid_keys(data: LoadedSubsets) -> dict[str, str]:
    """Entry key -> its problems, for every entry with a validation issue."""
    out: dict[str, list[str]] = {}
    for issue in data.issues:
        if issue.index is not None:
            out.setdefault(f"{issue.subset}/{issue.index}", []).append(str(issue))
    return {k: "; ".join(v) for k, v in out.items()}


def plan_entries(data: LoadedSubsets, *, skip_invalid: bool = False,
                 action: str = "generate") -> tuple[list[BenchItem], list[str]]:
    """``(entries to generate, keys of invalid entries skipped)``, checked before any model is built.

    Raises:
        PsrlError: invalid entries without ``skip_invalid`` (each listed with its problems), or no valid entry at
            all (an empty or wrong data root: the whole-file problems are listed), so a run that would generate
            nothing never reports success.
    """
    bad = invalid_keys(data)
    if bad and not skip_invalid:
        lines = "\n  ".join(f"{k}: {v}" for k, v in bad.items())
        raise PsrlError(f"{len(bad)} invalid entr{'y' if len(bad) == 1 else 'ies'} (fix them or pass "
                        f"--skip-invalid to {action} the rest):\n  {lines}")
    valid = [item for item in data.items if item.record is not None and item.key not in bad]
    skipped = [item.key for item in data.items if item.record is None or item.key in bad]
    if not valid:
        file_issues = [str(i) for i in data.issues if i.index is None]
        why = f"{len(data.items)} entr{'y' if len(data.items) == 1 else 'ies'} found, {len(skipped)} invalid"
        if file_issues:
            why += "; " + "; ".join(file_issues)
        raise PsrlError(f"nothing to {action}: no valid benchmark entry ({why})")
    return valid, skipped


def generate_benchmark(policy, data: LoadedSubsets, out_dir: str | Path, *, seeds: Sequence[int], sampling,
                       batch_size: int = 4, shard: Shard | None = None, skip_invalid: bool = False,
                       absolute_paths: bool = True, manifest: dict | None = None,
                       progress: Callable[[int, int], None] | None = None) -> GenerateStats:
    """Generate every valid entry under every seed into ``out_dir`` and write the result files.

    Entries with validation issues stop the run (naming each) unless ``skip_invalid``, which leaves them without an
    image and lists them in the manifest and the log; evaluation then counts them as missing.
    ``absolute_paths`` writes ``result_path`` absolute (what the released scripts open from any directory);
    otherwise relative to the result JSON file.
    """
    shard = shard or Shard()
    out_dir = Path(out_dir)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not seeds:
        raise ValueError("at least one seed is needed")
    valid, skipped = plan_entries(data, skip_invalid=skip_invalid)
    stats = GenerateStats(skipped_invalid=skipped)
    bad = invalid_keys(data)
    for key in skipped if shard.is_main else ():
        log.warning("skipping invalid entry %s: %s", key, bad.get(key, "unreadable entry"))
    work = [(seed, item) for seed in seeds for item in valid]
    todo = []
    for seed, item in shard.take(work):
        if image_path(out_dir, seed, item.subset, item.index).is_file():
            stats.skipped_existing += 1
        else:
            todo.append((seed, item))
    start = time.perf_counter()
    for batch in _batches(todo, batch_size):
        records = [item.record for _, item in batch]
        # one seed per (run seed, entry), stable across batching and sharding; "/"-joined as in every earlier
        # release, so a resumed run draws the images it drew before
        generators = [torch.Generator().manual_seed(stable_seed(f"{s}/{it.subset}/{it.index}")) for s, it in batch]
        with torch.no_grad():
            images = policy.generate(records, sampling, generators)
        if images.shape[0] != len(batch):
            raise PsrlError(f"policy returned {images.shape[0]} images for a batch of {len(batch)}")
        for (seed, item), image in zip(batch, images):
            save_image(image, image_path(out_dir, seed, item.subset, item.index))
        stats.generated += len(batch)
        if progress:
            progress(stats.generated, len(todo))
    stats.seconds = time.perf_counter() - start
    stats.generated, stats.skipped_existing = shard.all_sum([stats.generated, stats.skipped_existing])
    if shard.is_main:
        write_result_files(data, out_dir, seeds, absolute_paths=absolute_paths)
        manifest = {**read_manifest(out_dir), **(manifest or {})}  # a resume keeps what the first run recorded
        manifest.update(seeds=list(seeds), skipped_invalid=stats.skipped_invalid,
                        absolute_paths=absolute_paths)
        write_json_atomic(out_dir / MANIFEST, manifest)
    shard.barrier()
    return stats


def write_result_files(data: LoadedSubsets, out_dir: Path, seeds: Sequence[int], *, absolute_paths: bool) -> None:
    """For each seed and subset, the released-format result JSON pointing at the images that exist."""
    for seed in seeds:
        for subset, raw in data.raw.items():
            json_file = result_json_path(out_dir, seed, subset)
            paths = {}
            for index in range(len(raw)):
                img = image_path(out_dir, seed, subset, index)
                if img.is_file():
                    paths[index] = str(img.resolve()) if absolute_paths else os.path.relpath(img, json_file.parent)
            export_subset(raw, paths, json_file)


def _batches(todo: list, batch_size: int):
    """Consecutive chunks that never mix subsets (entries of one subset share a reference count)."""
    for _, run in itertools.groupby(todo, key=lambda w: w[1].subset):
        run = list(run)
        yield from (run[s:s + batch_size] for s in range(0, len(run), batch_size))
