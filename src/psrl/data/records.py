"""Records: a prompt (or instruction) plus the reference images of its subjects, and their JSONL I/O.

Image paths are resolved once, where records are loaded: in a records file (and in a reward-server request) they
are relative to a data root and may not escape it (:func:`resolve_under`); :func:`resolve_records` turns them into
absolute paths and remembers the root (``Record.root``), so policies, rewards, the benchmark and the CLI open the
files they are given and never see a root. :meth:`Record.to_json` writes them relative to that root again.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

from psrl.errors import RecordError, listing
from psrl.fileio import jsonl_lines, write_jsonl_atomic


@dataclass(frozen=True)
class SubjectRef:
    """One subject: its reference image and the phrase that names it (``"dog"``). The image path is relative to the
    data root in a records file and absolute once the record is resolved (:func:`resolve_records`)."""

    image: str | None
    phrase: str


@dataclass(frozen=True)
class Record:
    """One generation task. ``prompt`` is the text prompt or editing instruction. ``target`` is an optional
    ground-truth image (SFT data). ``tags`` hold subset, relation and anything else a consumer needs. ``root`` is
    the data root the image paths were resolved against (set by :func:`resolve_records`; ``None``: not resolved).
    It is not part of the record's JSON: a file or a request never chooses its own root."""

    id: str
    prompt: str
    subjects: tuple[SubjectRef, ...] = ()
    tags: dict = field(default_factory=dict, hash=False, compare=True)
    target: str | None = None
    root: str | None = field(default=None, compare=False)

    def relative_path(self, path: str) -> str:
        """``path`` (one of this record's images) relative to ``root``, as the records file holds it; unchanged
        when the record was never resolved."""
        return path if self.root is None else Path(os.path.relpath(path, self.root)).as_posix()

    def relative(self) -> "Record":
        """This record with its image paths relative to ``root`` again (as its records file holds them), ``root``
        cleared; the record itself when it was never resolved."""
        if self.root is None:
            return self

        def rel(path: str | None) -> str | None:
            return self.relative_path(path) if path else path

        return replace(self, subjects=tuple(replace(s, image=rel(s.image)) for s in self.subjects),
                       target=rel(self.target), root=None)

    def to_json(self) -> dict:
        """The record as a JSON object; image paths relative to the data root they were resolved against (the
        form of a records file and of a reward-server request, see :meth:`relative`)."""
        r = self.relative()
        d = asdict(r)
        d.pop("root")
        d["subjects"] = [asdict(s) for s in r.subjects]
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


def resolve_records(records: Iterable[Record], root: str | Path, *, source: str = "records") -> list[Record]:
    """``records`` with every subject image and target resolved under ``root`` (absolute paths, ``Record.root`` set):
    the one place image paths meet their data root. Records already resolved (``root`` set) are kept as they are.

    Raises:
        RecordError: one message naming ``source`` and every path that is absolute or escapes ``root`` (the first
            20, then a count). A path like that is a fault of the file itself, as bad JSON is, so
            ``data.skip_invalid`` does not skip it.
    """
    root_r = Path(root).resolve()
    out, bad = [], []
    folders: dict[str, str] = {}  # a file's folder, resolved once: thousands of files share a few folders

    def resolve_one(path: str, what: str) -> str:
        head, name = os.path.split(path)
        if os.path.isabs(path) or name in ("", ".", ".."):
            return str(resolve_under(root_r, path, what=what))
        if head not in folders:
            try:
                folders[head] = str(resolve_under(root_r, head or ".", what=what))
            except RecordError:
                return str(resolve_under(root_r, path, what=what))  # the same refusal, naming the whole path
        full = os.path.join(folders[head], name)
        # a plain name in a folder inside the root stays inside it, unless the file itself is a link
        return str(resolve_under(root_r, path, what=what)) if os.path.islink(full) else full

    def resolve(record: Record, path: str | None, what: str) -> str | None:
        if not path:
            return path  # no image: the consumer says so for that record
        try:
            return resolve_one(path, what)
        except RecordError as e:
            bad.append(f"{record.id!r}: {e}")
            return path

    for r in records:
        if r.root is not None:
            out.append(r)
            continue
        subjects = tuple(replace(s, image=resolve(r, s.image, f"subjects[{i}].image"))
                         for i, s in enumerate(r.subjects))
        out.append(replace(r, subjects=subjects, target=resolve(r, r.target, "target"), root=str(root_r)))
    if bad:
        raise RecordError(f"{source}: {len(bad)} image path(s) cannot be read under the data root: {listing(bad)}")
    return out


def _hub_local(value, fetch: str, what: str | None):
    """``value`` itself, or for an ``hf://`` address the local copy made by :mod:`psrl.hub`'s ``fetch``.

    Raises:
        RecordError: the Hub path is malformed, cannot be fetched, or was never fetched while offline (one line
            naming it, after ``what`` when given).
    """
    if not (isinstance(value, str) and value.startswith("hf://")):
        return value
    from psrl import hub

    try:
        return getattr(hub, fetch)(value)
    except hub.HubError as e:
        raise RecordError(f"{what}: {e}" if what else str(e)) from None


def local_root(value: str | Path, *, what: str | None = "data_root") -> Path:
    """A data root as a local folder: an ``hf://[datasets/]<org>/<name>[@revision][/folder]`` dataset folder is
    fetched once per commit (:func:`psrl.hub.hub_folder`; read from the cache offline), any other value is the
    path itself. Raises RecordError as :func:`_hub_local`, naming ``what``."""
    return Path(_hub_local(value, "hub_folder", what))


def records_root(source: str | Path | Sequence[str] | None, data_root: str | Path | None = None) -> Path | None:
    """The folder a records source's image paths are relative to: ``data_root`` when given (an ``hf://`` folder
    fetched, :func:`local_root`), else the records file's folder (an ``hf://`` file's local copy's, its images
    beside it: :func:`local_records_file`); ``None`` for inline prompts (they have no images)."""
    if data_root:
        return local_root(data_root)
    if isinstance(source, (str, Path)):
        return Path(local_records_file(source)).resolve().parent
    return None


def load_records(source: str | Path | Sequence[str] | None, data_root: str | Path | None = None, *,
                 what: str = "data.records") -> list[Record]:
    """Records ready for every consumer: a JSONL file read with :func:`read_records` and resolved under
    :func:`records_root` (``data_root``, else the file's folder), or a list of inline prompts (ids ``prompt-<i>``,
    no images).

    Raises:
        RecordError: an unreadable or invalid file, an image path outside the root (see :func:`resolve_records`),
            or no records at all (``what`` names the setting).
    """
    if isinstance(source, (str, Path)):
        return resolve_records(read_records(source), records_root(source, data_root), source=str(source))
    if not source:
        raise RecordError(f"{what} is empty")
    return [Record(id=f"prompt-{i}", prompt=p) for i, p in enumerate(source)]


def misplaced_data_root(args: dict | None, key: str) -> str | None:
    """The error message when the ``args`` of a reward or a policy (config key ``key``) hold ``data_root``, else
    ``None``: records reach rewards and policies with their image paths resolved, so a root belongs where the
    records are loaded. Callers raise it as their config error (a ``__post_init__``'s ``ValueError`` gets the file
    name from :func:`psrl.config.from_dict`)."""
    if "data_root" not in (args or {}):
        return None
    return (f"{key}.data_root: not read here any more; image paths are resolved where the records are loaded: "
            "data.data_root / eval.data_root (psrl train, sft, generate), --data-root (psrl reward score, psrl "
            f"bench), data_root at the top of the server config (psrl serve rewards); got {args['data_root']!r}")


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


def local_records_file(path: str | Path) -> str | Path:
    """``path`` itself, or for ``hf://[datasets/]<org>/<name>[@revision][/file]`` the local copy fetched (once per
    commit, with the images its records name) by :func:`psrl.hub.hub_records_file`. Raises RecordError as
    :func:`_hub_local`."""
    return _hub_local(path, "hub_records_file", None)


def read_records(path: str | Path) -> list[Record]:
    """Read a JSONL file of records. Errors name the file and line; duplicate ids are errors.

    Two more sources, by their form: ``hf://[datasets/]<org>/<name>[@revision][/file]`` is fetched from the Hub
    once per commit, with the images its records name (:func:`psrl.hub.hub_records_file`), and a ``.txt`` file is
    read as Flow-GRPO prompts, one per line (:func:`read_prompt_file`)."""
    path = local_records_file(path)
    if Path(path).suffix.lower() == ".txt":
        return read_prompt_file(path)
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"records file not found: {path}")
    out, seen = [], set()
    for where, d in jsonl_lines(path):
        if isinstance(d, json.JSONDecodeError):
            raise RecordError(f"{where}: not valid JSON: {d}") from d
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

