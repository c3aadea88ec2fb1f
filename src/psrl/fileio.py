"""The JSONL line reader (:func:`jsonl_lines`) and atomic file writes: a temp file in the same folder, then
``os.replace``, so a crash leaves the old file or the new one, never half of one. Every atomic write of psrl goes
through :func:`atomic_path` (images through :func:`psrl.images.save_image`); whole directories (checkpoints, the
reward model's ``adapter/`` and ``merged/``) through :func:`atomic_dir`."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path


def jsonl_lines(path: str | os.PathLike, text: str | None = None) -> list[tuple[str, object]]:
    """``(where, value)`` of every non-blank line of a JSONL file (``text``: its content, already read), ``where``
    being ``<path>:<line>`` (1-based); a line that is not JSON gives its ``json.JSONDecodeError`` as the value, so
    the caller decides: the reward-model readers (pairs, labels, grids, ShareGPT, benchmarks) count it as that
    line's problem, :func:`psrl.data.records.read_records` stops there.

    Raises:
        OSError: the file cannot be read (``text`` not given).
    """
    out: list[tuple[str, object]] = []
    for lineno, line in enumerate((Path(path).read_text() if text is None else text).splitlines(), 1):
        if line.strip():
            try:
                out.append((f"{path}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as e:
                out.append((f"{path}:{lineno}", e))
    return out


_STEP_DIR = re.compile(r"^step-(\d+)$")


def step_dirs(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(N, folder/step-N)`` for every sub-folder named ``step-N`` (N a non-negative integer), oldest (lowest N)
    first; empty when ``folder`` is not a folder. Whether one is complete is the caller's question: the training
    checkpoints (:func:`psrl.rl.checkpoint.list_checkpoints`) and the LoRA resolver
    (:func:`psrl.models.lora.resolve_lora_path`) both scan with this."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((int(m.group(1)), d) for d in folder.iterdir() if (m := _STEP_DIR.match(d.name)) and d.is_dir())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temp path to write instead of ``path``: ``.<name>.<pid>.tmp<suffix>`` in the same folder (so the rename
    is atomic, and the suffix still tells tools like ``np.save`` or PIL the format). On a clean exit of the block
    it replaces ``path``; on an error it is removed and ``path`` is left as it was. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """An empty temp folder ``.<name>.tmp`` beside ``path`` to fill instead of ``path`` (a stale one a killed run
    left is removed first; parent folders are created). On a clean exit of the block it takes the place of
    ``path``: an existing ``path`` is first renamed to ``.<name>.old`` and deleted only once the new folder is in
    place, so a crash at any point leaves the old folder or the new one under a name a cleanup can find
    (:func:`psrl.rl.checkpoint.clean_leftovers`), never a half-written ``path``. On an error the temp folder is
    removed and ``path`` is left as it was. Flushing the files to disk before the block ends is the caller's job
    (checkpoints do, :func:`psrl.rl.checkpoint.save_checkpoint`).

    Raises:
        OSError: the temp folder cannot be made, or the rename fails (the new contents are then removed).
    """
    final = Path(path)
    tmp = final.with_name(f".{final.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        old = final.with_name(f".{final.name}.old")
        if final.exists():  # keep the old copy until the new one is in place
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, data, *, indent: int | None = 2) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """One JSON object per line (UTF-8 kept as is), flushed to disk before the rename."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


__all__ = ["atomic_dir", "atomic_path", "jsonl_lines", "step_dirs", "write_bytes_atomic", "write_json_atomic",
           "write_jsonl_atomic", "write_text_atomic"]
