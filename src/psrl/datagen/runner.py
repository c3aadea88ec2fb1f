"""The loop every per-sample stage shares: read the input manifest, skip what is done, take this rank's share,
process in batches, append one manifest line per sample, merge the rank parts, count statistics.

A stage is an object with ``name``, ``input_stage`` (or its own ``inputs()``), ``batch_size``, ``setup()`` (loads
models; only called when there is work left, so a finished stage re-run costs nothing) and ``process(batch) ->
entries`` returning one kept or rejected entry per input sample.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from psrl.datagen.manifest import (
    KEPT,
    REJECTED,
    ManifestWriter,
    iter_manifest,
    manifest_path,
    merge_parts,
    part_path,
    read_kept,
    read_manifest,
)
from psrl.sharding import Shard
from psrl.datagen.stats import StageStats, write_stage_stats

log = logging.getLogger(__name__)

ProgressFactory = Callable[[int, str], Any]  # (total, description) -> object with update(n) and close()


class Stage(Protocol):
    name: str
    input_stage: str | None
    batch_size: int

    def inputs(self, dataset: Path) -> list[dict]: ...

    def setup(self) -> None: ...

    def process(self, batch: list[dict]) -> list[dict]: ...

    def extra_stats(self, entries: list[dict]) -> dict: ...


class BaseStage:
    """Defaults for the optional parts of :class:`Stage`, and what every stage keeps: its config, the dataset
    directory and the device its models go to. A stage that needs a model or a client takes it as an argument (tests
    inject stand-ins) and otherwise builds it in :meth:`setup`, so listing or resuming a stage loads nothing."""

    name = "stage"
    input_stage: str | None = None
    batch_size = 1

    def __init__(self, cfg, dataset: str | Path | None = None, device="cpu"):
        self.cfg, self.device = cfg, device
        self.dataset = Path(dataset) if dataset is not None else None

    def inputs(self, dataset: Path) -> list[dict]:
        return read_kept(dataset, self.input_stage)

    def setup(self) -> None:
        pass

    def extra_stats(self, entries: list[dict]) -> dict:
        return {}


def kept(entry: dict, **fields) -> dict:
    """``entry`` carried forward with this stage's ``fields`` and status kept (any earlier rejection info dropped)."""
    out = {k: v for k, v in entry.items() if k not in ("status", "reason", "detail")}
    out.update(fields)
    out["status"] = KEPT
    return out


def rejected(entry: dict, reason: str, detail: str = "", **fields) -> dict:
    """``entry`` marked rejected; ``reason`` is the statistics key, ``detail`` the human explanation."""
    return {**kept(entry, **fields), "status": REJECTED, "reason": reason, "detail": detail}


def run_stage(stage: Stage, dataset: str | Path, shard: Shard = Shard(), *,  # noqa: B008 - frozen
              progress: ProgressFactory | None = None) -> StageStats | None:
    """Run (or finish) ``stage`` on ``dataset``. Returns the stage's statistics on the main process (written to
    ``stats.json`` too), ``None`` on the other ranks."""
    dataset = Path(dataset)
    inputs = stage.inputs(dataset)
    ids = [e["id"] for e in inputs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{stage.name}: the input manifest has duplicate ids")
    before = sum(1 for _ in iter_manifest(manifest_path(dataset, stage.name)))
    done = {e["id"] for e in read_manifest(dataset, stage.name)}
    todo = [e for pos, e in enumerate(inputs) if shard.owns(pos) and e["id"] not in done]
    mine = sum(1 for pos in range(len(inputs)) if shard.owns(pos))
    log.info("%s: %d inputs, %d already done, %d to do on rank %d/%d", stage.name, len(inputs),
             len(done & set(ids)), len(todo), shard.rank, shard.world)

    shard.barrier()  # every rank has read what is done before any rank appends
    out_path = part_path(dataset, stage.name, shard.rank) if shard.distributed else manifest_path(dataset,
                                                                                                  stage.name)
    bar = progress(mine, stage.name) if progress is not None else None
    if bar is not None:
        bar.update(mine - len(todo))
    try:
        if todo:
            stage.setup()
            with ManifestWriter(out_path) as writer:
                for start in range(0, len(todo), stage.batch_size):
                    batch = todo[start:start + stage.batch_size]
                    results = stage.process(batch)
                    _check_results(stage.name, batch, results)
                    for entry in results:
                        writer.write(entry)
                    if bar is not None:
                        bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()

    shard.barrier()
    stats = None
    if shard.is_main:
        merge_parts(dataset, stage.name, ids)
        manifest_path(dataset, stage.name).touch()  # a stage with nothing kept still finished: the next one runs
        wanted = set(ids)
        entries = [e for e in read_manifest(dataset, stage.name) if e["id"] in wanted]
        stats = StageStats.from_entries(stage.name, len(inputs), entries, new=len(entries) - before,
                                        extra=stage.extra_stats(entries))
        write_stage_stats(dataset, stats)
    shard.barrier()
    return stats


def _check_results(stage: str, batch: list[dict], results: list[dict]) -> None:
    got = [r.get("id") for r in results]
    want = [e["id"] for e in batch]
    if got != want:
        raise RuntimeError(f"stage {stage!r} returned entries for ids {got}, expected {want} "
                           "(one per input, in order)")
