"""Manifests: one JSONL file per stage under the dataset directory, one line per sample.

Every line is a JSON object with at least ``id`` and ``status`` (``"kept"`` or ``"rejected"``; a rejected line also
carries ``reason``, a short machine-readable category such as ``missing_subject``, and ``detail``). Kept lines carry
everything earlier stages produced plus this stage's fields, so a stage only ever reads its input stage's manifest.

Durability rules that make stages resumable without duplicates:

- a sample's files are written atomically (temp file + ``os.replace``) *before* its manifest line;
- a manifest line is appended, flushed and fsynced per sample, so a killed stage loses at most the sample in flight;
- a truncated last line (killed mid-write) is dropped on read and cut off before appending again;
- ids already present in a manifest (or in any per-rank part file of it) are skipped on the next run.
"""
from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from psrl.errors import PsrlError
from psrl.fileio import write_jsonl_atomic

log = logging.getLogger(__name__)

KEPT = "kept"
REJECTED = "rejected"


class ManifestError(PsrlError):
    """A manifest file is missing or malformed; the message names the file and line."""


def manifest_path(dataset: str | Path, stage: str) -> Path:
    return Path(dataset) / f"{stage}.jsonl"


def part_paths(dataset: str | Path, stage: str) -> list[Path]:
    """Per-rank part files of ``stage`` left by a sharded run (``<stage>.part-<rank>.jsonl``), sorted by rank."""
    parts = Path(dataset).glob(f"{stage}.part-*.jsonl")
    return sorted(parts, key=lambda p: int(p.name.rsplit("-", 1)[1].split(".")[0]))


def part_path(dataset: str | Path, stage: str, rank: int) -> Path:
    return Path(dataset) / f"{stage}.part-{rank}.jsonl"


def remove_manifests(dataset: str | Path, stages) -> list[Path]:
    """Delete the manifests of ``stages`` and their part files (a stage forgotten: it runs from scratch next time);
    returns the files removed."""
    removed = [p for s in stages for p in (manifest_path(dataset, s), *part_paths(dataset, s)) if p.is_file()]
    for p in removed:
        p.unlink()
    return removed


def iter_manifest(path: str | Path) -> Iterator[dict]:
    """Entries of one manifest file in file order. A truncated final line (a killed writer) is skipped with a
    warning; a malformed line elsewhere is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        return
    lines = path.read_text().split("\n")
    # text after the last "\n" is either "" (clean file) or a line whose writer was killed before the newline
    complete, tail = lines[:-1], lines[-1]
    if tail.strip():
        log.warning("%s: ignoring a truncated last line (a killed run?)", path)
    for lineno, line in enumerate(complete, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path}:{lineno}: not valid JSON: {e}") from e
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or entry.get("status") not in (
                KEPT, REJECTED):
            raise ManifestError(f"{path}:{lineno}: a manifest line needs a string 'id' and a 'status' of "
                                f"{KEPT!r} or {REJECTED!r}, got {line[:200]!r}")
        yield entry


def read_manifest(dataset: str | Path, stage: str) -> list[dict]:
    """All entries of ``stage`` (main file, then part files), first occurrence of each id wins."""
    seen: set[str] = set()
    out = []
    for p in [manifest_path(dataset, stage), *part_paths(dataset, stage)]:
        for entry in iter_manifest(p):
            if entry["id"] not in seen:
                seen.add(entry["id"])
                out.append(entry)
    return out


def read_kept(dataset: str | Path, stage: str) -> list[dict]:
    """The kept entries of a finished stage; an error naming the command to run when the stage has not run."""
    path = manifest_path(dataset, stage)
    if not path.is_file():
        raise ManifestError(f"{path} not found: run `psrl data {stage} --dir {dataset}` first")
    if part_paths(dataset, stage):
        raise ManifestError(f"{path}: stage {stage!r} left unmerged part files (a sharded run stopped early); "
                            f"run `psrl data {stage} --dir {dataset}` again to finish and merge it")
    return [e for e in iter_manifest(path) if e["status"] == KEPT]


def _cut_truncated_tail(path: Path) -> None:
    """Remove a partial last line so that appending starts on a fresh line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as f:
        f.seek(-1, io.SEEK_END)
        if f.read(1) == b"\n":
            return
        data = path.read_bytes()
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
        log.warning("%s: cut a truncated last line (%d bytes)", path, len(data) - keep)


class ManifestWriter:
    """Appends one JSON line per sample, flushed and fsynced, so a killed process never loses a finished sample."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _cut_truncated_tail(self.path)
        self._file = self.path.open("a")

    def write(self, entry: dict) -> None:
        self._file.write(json.dumps(entry, sort_keys=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ManifestWriter:  # noqa: PYI034 - typing.Self needs Python 3.11; 3.10 is supported
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def merge_parts(dataset: str | Path, stage: str, order: list[str]) -> int:
    """Fold the per-rank part files of ``stage`` into its main manifest (deduplicated by id, sorted by the position
    of each id in ``order``, unknown ids last) with one atomic write, then delete the parts. Returns the entry count.
    """
    parts = part_paths(dataset, stage)
    if not parts:
        return sum(1 for _ in iter_manifest(manifest_path(dataset, stage)))
    entries = read_manifest(dataset, stage)
    rank = {sid: i for i, sid in enumerate(order)}
    entries.sort(key=lambda e: rank.get(e["id"], len(rank)))
    write_jsonl_atomic(manifest_path(dataset, stage), entries)
    for p in parts:
        p.unlink()
    return len(entries)
