"""Records: a prompt (or instruction) plus the reference images of its subjects, and their JSONL I/O.

Paths inside a record are relative to a data root and may not escape it (:func:`resolve_under`).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from psrl.errors import RecordError
from psrl.fileio import write_jsonl_atomic


@dataclass(frozen=True)
class SubjectRef:
    """One subject: its reference image (relative to the data root) and the phrase that names it (``"dog"``)."""

    image: str | None
    phrase: str


@dataclass(frozen=True)
class Record:
    """One generation task. ``prompt`` is the text prompt or editing instruction. ``target`` is an optional
    ground-truth image (SFT data). ``tags`` hold subset, relation and anything else a consumer needs."""

    id: str
    prompt: str
    subjects: tuple[SubjectRef, ...] = ()
    tags: dict = field(default_factory=dict, hash=False, compare=True)
    target: str | None = None

    def to_json(self) -> dict:
        d = asdict(self)
        d["subjects"] = [asdict(s) for s in self.subjects]
        return d

    @classmethod
    def from_json(cls, d: dict, *, where: str = "record") -> "Record":
        if not isinstance(d, dict):
            raise RecordError(f"{where}: expected a JSON object, got {type(d).__name__}")
        unknown = set(d) - {"id", "prompt", "subjects", "tags", "target"}
        if unknown:
            raise RecordError(f"{where}: unknown field(s) {sorted(unknown)}")
        for key in ("id", "prompt"):
            if not isinstance(d.get(key), str) or not d[key].strip():
                raise RecordError(f"{where}: field {key!r} must be a non-empty string, got {d.get(key)!r}")
        subjects = []
        for i, s in enumerate(d.get("subjects") or []):
            if not isinstance(s, dict) or not isinstance(s.get("phrase"), str) or not s["phrase"].strip():
                raise RecordError(f"{where}: subjects[{i}].phrase must be a non-empty string, got {s!r}")
            image = s.get("image")
            if image is not None and not isinstance(image, str):
                raise RecordError(f"{where}: subjects[{i}].image must be a path string, got {image!r}")
            subjects.append(SubjectRef(image=image, phrase=s["phrase"].strip()))
        tags = d.get("tags") or {}
        if not isinstance(tags, dict):
            raise RecordError(f"{where}: field 'tags' must be an object, got {tags!r}")
        target = d.get("target")
        if target is not None and not isinstance(target, str):
            raise RecordError(f"{where}: field 'target' must be a path string, got {target!r}")
        return cls(id=d["id"], prompt=d["prompt"], subjects=tuple(subjects), tags=dict(tags), target=target)


def resolve_under(root: str | Path, relative: str, *, what: str = "path") -> Path:
    """``root / relative`` resolved, refusing absolute paths and ``..`` escapes from ``root``."""
    root_r = Path(root).resolve()
    if os.path.isabs(relative):
        raise RecordError(f"{what} {relative!r} must be relative to the data root {root_r}")
    full = (root_r / relative).resolve()
    if full != root_r and root_r not in full.parents:
        raise RecordError(f"{what} {relative!r} escapes the data root {root_r}")
    return full


def image_filename(record_id: str, suffix: str = ".png") -> str:
    """The file name of a record's generated image: the id with every character outside ``[A-Za-z0-9._-]`` made
    ``_`` (so ``sea/1`` cannot leave the output folder), written by ``psrl generate`` and read by
    ``psrl reward score``."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", record_id)
    if name in ("", ".", ".."):
        name = name.replace(".", "_") or "_"
    return name + suffix


def image_filenames(records: Iterable[Record], suffix: str = ".png") -> list[str]:
    """:func:`image_filename` of each record; two ids that map to one file name are an error naming both."""
    seen: dict[str, str] = {}
    names = []
    for r in records:
        name = image_filename(r.id, suffix)
        if name in seen and seen[name] != r.id:
            raise RecordError(f"record ids {seen[name]!r} and {r.id!r} both map to the image file {name!r}; "
                              f"make the ids differ in [A-Za-z0-9._-]")
        seen[name] = r.id
        names.append(name)
    return names


def read_records(path: str | Path) -> list[Record]:
    """Read a JSONL file of records. Errors name the file and line; duplicate ids are errors.

    Two more sources, by their form: ``hf://[datasets/]<org>/<name>[@revision][/file]`` is fetched from the Hub
    once per commit, with the images its records name (:func:`psrl.hub.hub_records_file`), and a ``.txt`` file is
    read as Flow-GRPO prompts, one per line (:func:`read_prompt_file`)."""
    if isinstance(path, str) and path.startswith("hf://"):
        from psrl.hub import HubError, hub_records_file

        try:
            path = hub_records_file(path)
        except HubError as e:
            raise RecordError(str(e)) from None
    if Path(path).suffix.lower() == ".txt":
        return read_prompt_file(path)
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"records file not found: {path}")
    out, seen = [], set()
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise RecordError(f"{where}: not valid JSON: {e}") from e
        rec = Record.from_json(d, where=where)
        if rec.id in seen:
            raise RecordError(f"{where}: duplicate record id {rec.id!r}")
        seen.add(rec.id)
        out.append(rec)
    if not out:
        raise RecordError(f"{path}: no records")
    return out


def read_prompt_file(path: str | Path) -> list[Record]:
    """Read a prompt file as Flow-GRPO ships them (``dataset/<name>/train.txt``: one prompt per line, stripped;
    ``TextPromptDataset`` in yifan123/flow_grpo@74db691 scripts/train_flux.py). Each prompt becomes a record with
    id ``line-<n>`` (its 1-based line number, so an id says which line to look at); blank lines are skipped.

    Raises:
        RecordError: the file is missing, not UTF-8, or holds no prompt.
    """
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"prompt file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise RecordError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    out = [Record(id=f"line-{n}", prompt=line.strip()) for n, line in enumerate(text.splitlines(), 1)
           if line.strip()]
    if not out:
        raise RecordError(f"{path}: no prompts (expected one prompt per line)")
    return out


def write_records(records: Iterable[Record], path: str | Path) -> None:
    """Write records as JSONL atomically (temp file then rename)."""
    write_jsonl_atomic(path, (r.to_json() for r in records))


def iter_prompts(records: Iterable[Record]) -> Iterator[str]:
    for r in records:
        yield r.prompt
