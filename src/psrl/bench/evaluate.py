"""Evaluate result images on every dimension with psrl rewards as metrics; per-sample JSONL, resumable, sharded.

Each scored sample is appended as one JSON line (flushed) to ``<out>/samples.part<rank>.jsonl`` as soon as its batch
is done; a killed run loses at most the batch in flight and a re-run skips every key already written. When all ranks
are done rank 0 merges the parts into ``<out>/samples.jsonl`` (the last line of a key wins, so ``retry_failed``
re-scores replace earlier failures). A sample that cannot be scored on a dimension gets ``null`` and the reason in
``failures`` - it is counted, never dropped. The metric set and its hash are kept in ``<out>/eval_config.json``; a
resume with a different metric set is refused rather than mixing results.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from psrl.bench.provenance import config_hash
from psrl.bench.results import ResultSample
from psrl.sharding import Shard
from psrl.bench.tasks import DimensionSpec, MetricSpec, metrics_to_json
from psrl.errors import PsrlError
from psrl.fileio import jsonl_lines, write_json_atomic, write_jsonl_atomic
from psrl.images import ImageLoadError, image_size, load_image, pil_to_tensor
from psrl.rewards.base import to_jsonable

log = logging.getLogger(__name__)

SAMPLES = "samples.jsonl"
EVAL_CONFIG = "eval_config.json"


@dataclass
class EvalStats:
    """Counts over every rank (after the run); ``seconds`` is this rank's scoring time."""

    computed: int = 0
    resumed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    # rank 0, over every sample of the evaluation (resumed ones included): psrl.bench.summary.dimension_outcomes
    outcomes: dict[str, dict] = field(default_factory=dict)

    @property
    def samples_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else float("nan")


def eval_config(benchmark: str, metrics: dict[str, DimensionSpec], extra: dict | None = None) -> dict:
    """The config that decides the numbers (not the batch size or device); its hash names the run."""
    return {"benchmark": benchmark, "metrics": metrics_to_json(metrics), **(extra or {})}


class MetricSet:
    """Builds each reward once (shared between dimensions and subsets using the same reward and args). The records
    they score come resolved from the benchmark loader, so no reward needs to know the benchmark's root."""

    def __init__(self, metrics: dict[str, DimensionSpec], device: str = "cpu"):
        self.metrics = metrics
        self.device = device
        self._rewards: dict[str, Any] = {}

    def reward(self, spec: MetricSpec):
        cache_key = json.dumps([spec.reward, spec.args], sort_keys=True, default=str)
        if cache_key not in self._rewards:
            from psrl.rewards.base import build_reward

            try:
                self._rewards[cache_key] = build_reward(spec.reward, dict(spec.args), device=self.device)
            except Exception as e:  # a metric that cannot load is a setup error, not a per-sample failure
                raise PsrlError(f"cannot build metric reward {spec.reward!r} with args {spec.args}: "
                                f"{type(e).__name__}: {e}") from e
        return self._rewards[cache_key]

    def build_all(self, subsets: Sequence[str]) -> None:
        for spec in self.metrics.values():
            for subset in subsets:
                metric = spec.metric_for(subset)
                if metric is not None:
                    self.reward(metric)


def load_image_tensor(path: Path) -> torch.Tensor:
    """A result image as ``[3, H, W]`` float in [0, 1], decoded by psrl's one loader (:func:`psrl.images.load_image`:
    EXIF orientation, 16-bit and alpha handled, the rewards' minimum side). Raises ``ImageLoadError``."""
    return pil_to_tensor(load_image(path))


def _details_of(details: dict, i: int, n: int) -> dict:
    """The per-sample slice of a reward's details (entries that are not per-sample are left out)."""
    out = {}
    for name, value in (details or {}).items():
        per_sample_tensor = isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == n
        if per_sample_tensor or isinstance(value, (list, tuple)) and len(value) == n:
            out[name] = to_jsonable(value[i])
    return out


_FATAL = (torch.OutOfMemoryError, MemoryError, ImportError, NameError, NotImplementedError)


def score_batch(reward, images: torch.Tensor, records: list) -> list[tuple[float | None, str | None, dict]]:
    """``(raw score or None, failure reason or None, details)`` per sample. If the batched call raises, each
    sample is retried alone so one bad sample does not fail its batch; a sample that still raises is a failure
    carrying the exception text. Out-of-memory and import/name errors are not per-sample: they propagate."""
    try:
        out = reward(images, records)
    except _FATAL:
        raise  # out of memory or a broken install: every sample would fail the same way, so stop the run
    except Exception as e:  # noqa: BLE001 - any other metric error becomes a recorded per-sample failure
        if len(records) == 1:
            log.warning("metric %s failed on %s: %s", getattr(reward, "name", reward), records[0].id, e)
            return [(None, f"{type(e).__name__}: {e}", {})]
        return [r for i in range(len(records)) for r in score_batch(reward, images[i:i + 1], records[i:i + 1])]
    scores = out.scores.tolist()
    if len(scores) != len(records):
        reason = f"metric returned {len(scores)} scores for {len(records)} images"
        return [(None, reason, {}) for _ in records]
    # a RewardOutput has one failure per score, and a reason for every NaN
    return [(None if math.isnan(s) else s, out.failures[i], _details_of(out.details, i, len(scores)))
            for i, s in enumerate(scores)]


def read_sample_rows(out_dir: Path) -> dict[str, dict]:
    """Every scored sample in ``out_dir`` (merged file, then parts); the last line of a key wins. A line that is not
    JSON (a run was killed while writing it) is skipped with a warning."""
    rows: dict[str, dict] = {}
    for path in [out_dir / SAMPLES, *sorted(out_dir.glob("samples.part*.jsonl"))]:
        for where, row in jsonl_lines(path) if path.is_file() else ():
            if isinstance(row, json.JSONDecodeError):
                log.warning("%s: ignoring an incomplete line (a run was killed while writing it)", where)
            elif isinstance(row, dict) and "key" in row:
                rows[row["key"]] = row
    return rows


def _open_part(path: Path):
    """Open a part file for appending, cutting a line a killed run left half-written."""
    if path.is_file() and path.stat().st_size:
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            with path.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
    return path.open("a", encoding="utf-8")


def _check_config(out_dir: Path, cfg: dict, shard: Shard) -> str:
    digest = config_hash(cfg)
    path = out_dir / EVAL_CONFIG
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("hash") != digest:
            raise PsrlError(f"{out_dir} holds results of another metric config (hash {old.get('hash')} vs "
                            f"{digest}); use another --out folder or delete it")
    shard.barrier()
    if shard.is_main:
        write_json_atomic(path, {"hash": digest, "config": cfg})
    shard.barrier()
    return digest


def _base_row(sample: ResultSample) -> dict:
    rec = sample.item.record
    return {
        "key": sample.key, "seed": sample.seed, "subset": sample.item.subset, "index": sample.item.index,
        "image": str(sample.image) if sample.image else None,
        "prompt": rec.prompt if rec else sample.item.entry.get("instruction"),
        "references": [s.image for s in rec.relative().subjects] if rec else sample.item.entry.get("input_path"),
        # absolute (as resolved at load): what the report's gallery reads, so no report needs the data root
        "reference_images": [s.image for s in rec.subjects] if rec else None,
        "phrases": [s.phrase for s in rec.subjects] if rec else None,
        "scores": {}, "raw": {}, "failures": {}, "details": {},  # per dimension, filled by _put
    }


def evaluate_samples(samples: Sequence[ResultSample], out_dir: str | Path, metrics: dict[str, DimensionSpec], *,
                     benchmark: str, batch_size: int = 8, device: str = "cpu", shard: Shard | None = None,
                     retry_failed: bool = False, config_extra: dict | None = None,
                     progress: Callable[[int, int], None] | None = None,
                     metric_set: MetricSet | None = None) -> EvalStats:
    """Score every sample not yet in ``out_dir`` on every dimension and merge the per-sample file."""
    shard = shard or Shard()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _check_config(out_dir, eval_config(benchmark, metrics, config_extra), shard)
    done = read_sample_rows(out_dir)
    stats = EvalStats(failures={d: 0 for d in metrics})

    def needs_work(s: ResultSample) -> bool:
        row = done.get(s.key)
        if row is None:
            return True
        return retry_failed and any(v is not None for v in row.get("failures", {}).values())

    mine = shard.take(list(samples))
    todo = [s for s in mine if needs_work(s)]
    stats.resumed = len(mine) - len(todo)
    if stats.resumed:
        log.info("resuming: %d sample(s) already scored, %d to go", stats.resumed, len(todo))
    metric_set = metric_set or MetricSet(metrics, device)
    metric_set.build_all(sorted({s.item.subset for s in todo}))
    start = time.perf_counter()
    with _open_part(out_dir / f"samples.part{shard.rank}.jsonl") as sink:
        for batch in _eval_batches(todo, batch_size):
            rows = _score_samples(batch, metrics, metric_set)
            for row in rows:
                for dim, reason in row["failures"].items():
                    if reason is not None:
                        stats.failures[dim] = stats.failures.get(dim, 0) + 1
                sink.write(json.dumps(row, ensure_ascii=False) + "\n")
            sink.flush()
            stats.computed += len(rows)
            if progress:
                progress(stats.computed, len(todo))
    stats.seconds = time.perf_counter() - start
    dims = sorted(stats.failures)
    totals = shard.all_sum([stats.computed, stats.resumed, *(stats.failures[d] for d in dims)])
    stats.computed, stats.resumed = totals[0], totals[1]
    stats.failures = dict(zip(dims, totals[2:]))
    if shard.is_main:
        merge_parts(out_dir, [s.key for s in samples])
    shard.barrier()
    return stats


# alike on purpose: psrl.images.group_by_size groups a whole batch; this streams each chunk as it fills, sizes read
# from the file headers, unscorable samples alone
def _eval_batches(todo: list[ResultSample], batch_size: int):
    """Unscorable samples alone; scorable ones in chunks of one image size (subsets mixed: each dimension splits
    a chunk by the metric its subsets use, so a metric shared by all subsets sees the whole chunk)."""
    groups: dict[tuple | None, list[ResultSample]] = {}
    for s in todo:
        if s.problem is not None:
            yield [s]
            continue
        try:
            size = image_size(s.image)  # the size load_image will return (EXIF orientation), from the header
        except ImageLoadError:  # reported when the batch loads it
            size = None
        groups.setdefault(size, []).append(s)
        if len(groups[size]) == batch_size:
            yield groups.pop(size)
    yield from (g for g in groups.values() if g)


def _score_samples(batch: list[ResultSample], metrics: dict[str, DimensionSpec], metric_set: MetricSet) -> list[dict]:
    rows = [_base_row(s) for s in batch]
    problems = [s.problem for s in batch]
    images: dict[int, torch.Tensor] = {}
    for i, s in enumerate(batch):
        if problems[i] is None:
            try:
                images[i] = load_image_tensor(s.image)
            except ImageLoadError as e:  # its message names the file and why
                problems[i] = f"result image {e}"
            except Exception as e:  # noqa: BLE001 - an unreadable result image is a recorded failure
                problems[i] = f"unreadable result image {s.image}: {type(e).__name__}: {e}"
    for dim, spec in metrics.items():
        by_metric: dict[str, tuple[MetricSpec, list[int]]] = {}
        for i, s in enumerate(batch):
            metric = spec.metric_for(s.item.subset)
            if problems[i] is not None:
                _put(rows[i], dim, None, None, problems[i], {})
            elif metric is None:
                _put(rows[i], dim, None, None, f"no metric for subset {s.item.subset}", {})
            else:
                key = json.dumps(metric.to_json(), sort_keys=True, default=str)
                by_metric.setdefault(key, (metric, []))[1].append(i)
        for metric, idx in by_metric.values():
            reward = metric_set.reward(metric)
            records = [batch[i].item.record for i in idx]
            imgs = [images[i] for i in idx]
            if all(im.shape == imgs[0].shape for im in imgs):  # one batched call (chunks share a size)
                results = score_batch(reward, torch.stack(imgs), records)
            else:
                results = [r for im, rec in zip(imgs, records) for r in score_batch(reward, im[None], [rec])]
            for i, (raw, failure, details) in zip(idx, results):
                _put(rows[i], dim, raw, None if raw is None else raw * metric.scale, failure, details)
    return rows


def _put(row: dict, dim: str, raw, score, failure, details) -> None:
    row["raw"][dim] = raw
    row["scores"][dim] = score
    row["failures"][dim] = failure
    row["details"][dim] = details


def merge_parts(out_dir: Path, order: Sequence[str]) -> list[dict]:
    """Merge ``samples.jsonl`` and every part file into ``samples.jsonl`` (atomic), ordered like ``order`` then
    any other keys; the part files are removed afterwards."""
    rows = read_sample_rows(out_dir)
    position = {k: i for i, k in enumerate(order)}
    merged = sorted(rows.values(), key=lambda r: (position.get(r["key"], len(position)), r["key"]))
    write_jsonl_atomic(out_dir / SAMPLES, merged)
    for part in out_dir.glob("samples.part*.jsonl"):
        part.unlink()
    return merged
