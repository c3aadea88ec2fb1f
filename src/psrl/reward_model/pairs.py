"""Pairwise consistency examples: the training data of a PaCo-style reward model, their JSONL file, human label
files, the answer rule and the held-out split.

One example is what the judge sees and what it should reply: two images (paths relative to a data root), the user
turn's text (the images are shown before it, as psrl's judge and PaCo's scorer send them), and the reply, which
starts with the answer ``Yes`` or ``No`` (its first token is what the judge's P(Yes) reads) followed by the
reasons. A pairs JSONL line::

    {"id": "g7:0-1", "images": ["cells/g7/0.png", "cells/g7/1.png"], "prompt": "Given two subfigures ...",
     "response": "Yes. Both show the same ...", "label": "Yes", "group": "g7"}

``label`` is optional (checked against the reply when present); ``group`` keeps examples of one source (the cells of
one grid) on the same side of the held-out split. Every reader returns ``(examples, problems)``: a problem is one
line naming the file, line and reason, and the caller refuses or skips (never trains on) those examples.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from psrl.data.records import RecordError, resolve_under
from psrl.fileio import jsonl_lines, write_jsonl_atomic

ANSWERS = ("Yes", "No")
# a reply's first word; markdown emphasis and quotes around it are tolerated (teachers write "**Yes**, ...")
_ANSWER_RE = re.compile(r"^[\s*_\"'`]*(yes|no)\b[*_\"'`]*", re.IGNORECASE)


@dataclass(frozen=True)
class PairExample:
    """One training example. ``images``: the two image paths, relative to the data root; ``prompt``: the user
    turn's text; ``response``: the reply, starting with ``Yes`` or ``No``; ``group``: the source it came from;
    ``where``: ``file:line`` for messages (not written)."""

    id: str
    images: tuple[str, str]
    prompt: str
    response: str
    group: str = ""
    where: str = ""

    @property
    def label(self) -> str:
        """``"Yes"`` or ``"No"``: the reply's answer."""
        return answer_of(self.response) or ""

    def to_json(self) -> dict:
        return {"id": self.id, "images": list(self.images), "prompt": self.prompt, "response": self.response,
                "label": self.label, "group": self.group}


def answer_of(response: str) -> str | None:
    """``"Yes"`` / ``"No"`` when ``response`` starts with exactly that word (case-sensitive: ``yes`` is another
    token), else None."""
    for a in ANSWERS:
        if response.startswith(a) and (len(response) == len(a) or not response[len(a)].isalnum()):
            return a
    return None


def normalize_label(value) -> str | None:
    """A human or teacher label -> ``"Yes"`` / ``"No"`` (any case, surrounding spaces), else None."""
    if not isinstance(value, str):
        return None
    v = value.strip().lower()
    return {"yes": "Yes", "no": "No"}.get(v)


def parse_judge_reply(text: str) -> tuple[str | None, str]:
    """A teacher's free-text reply -> ``(response starting with "Yes"/"No", "")`` or ``(None, why)``. The answer
    must be the reply's first word (``**Yes**,`` and ``"No."`` are read; "I think yes" is not: a reply whose first
    token is not the answer would teach the wrong first token)."""
    if not isinstance(text, str) or not text.strip():
        return None, "the teacher's reply is empty"
    m = _ANSWER_RE.match(text)
    if not m:
        return None, f"the teacher's reply does not start with Yes or No: {text.strip()[:80]!r}"
    label = normalize_label(m.group(1))
    rest = text[m.end():].rstrip()
    return label + rest, ""


def response_from_label(label: str, reason: str | None) -> str:
    """The reply taught for a human label: ``"Yes. <reason>"`` or just ``"Yes"``."""
    reason = (reason or "").strip()
    return f"{label}. {reason}" if reason else label


# ---------------------------------------------------------------------------------------------- pairs JSONL
def not_json(where: str, value) -> str | None:
    """The problem line of a :func:`jsonl_lines` value that is not JSON, else None."""
    return f"{where}: not valid JSON ({value})" if isinstance(value, json.JSONDecodeError) else None


def keep_unique(parsed, problems: list[str]) -> list:
    """The items of ``parsed`` (``(where, item | None, problem | None)`` each) with an ``id`` not seen before, in
    order; every problem, and every repeated id, appended to ``problems`` as one line naming ``where``."""
    out, seen = [], set()
    for where, item, problem in parsed:
        if problem:
            problems.append(problem)
        elif item.id in seen:
            problems.append(f"{where}: duplicate id {item.id!r}")
        else:
            seen.add(item.id)
            out.append(item)
    return out


def example_from_json(d, where: str) -> tuple[PairExample | None, str | None]:
    """One pairs-JSONL object (a :func:`jsonl_lines` value) -> ``(example, None)`` or ``(None, problem)``."""
    if not isinstance(d, dict):
        return None, not_json(where, d) or f"{where}: expected a JSON object, got {type(d).__name__}"
    unknown = set(d) - {"id", "images", "prompt", "response", "label", "group"}
    if unknown:
        return None, f"{where}: unknown field(s) {sorted(unknown)}"
    for key in ("id", "prompt", "response"):
        if not isinstance(d.get(key), str) or not d[key].strip():
            return None, f"{where}: field {key!r} must be a non-empty string, got {d.get(key)!r}"
    images = d.get("images")
    if not isinstance(images, list) or len(images) != 2 or not all(isinstance(p, str) and p for p in images):
        return None, f"{where}: field 'images' must be a list of 2 image paths, got {images!r}"
    answer = answer_of(d["response"])
    if answer is None:
        return None, f"{where}: the response must start with Yes or No, got {d['response'][:60]!r}"
    if "label" in d and normalize_label(d["label"]) != answer:
        return None, (f"{where}: label {d['label']!r} is neither Yes nor No or disagrees with the response's "
                      f"answer {answer!r}")
    group = d.get("group", "")
    if not isinstance(group, str):
        return None, f"{where}: field 'group' must be a string, got {group!r}"
    return PairExample(id=d["id"], images=(images[0], images[1]), prompt=d["prompt"], response=d["response"],
                       group=group or d["id"], where=where), None


def read_pairs(path: str | Path) -> tuple[list[PairExample], list[str]]:
    """Read a pairs JSONL file. Returns the valid examples and one problem line per invalid line or duplicate id.

    Raises:
        RecordError: the file is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"pairs file not found: {path}")
    problems: list[str] = []  # a bad line is a problem and skipped (a bad records line stops the run)
    return keep_unique(((w, *example_from_json(d, w)) for w, d in jsonl_lines(path)), problems), problems


def write_pairs(examples, path: str | Path) -> Path:
    """Write examples as pairs JSONL, atomically."""
    return write_jsonl_atomic(path, (e.to_json() for e in examples))


def resolve_examples(examples: list[PairExample], root: str | Path
                     ) -> tuple[list[tuple[PairExample, tuple[Path, Path]]], list[str]]:
    """``([(example, its two image paths resolved under root)], problems)``: the one place a pair's images meet
    their data root, so a trainer receives absolute paths (the example keeps its paths as written, for messages).
    An example whose image is absolute or escapes ``root`` is left out and named in a problem line
    (``file:line: image k (path): why``)."""
    out, problems = [], []
    for ex in examples:
        paths = []
        for k in range(2):
            try:
                paths.append(resolve_under(root, ex.images[k], what=f"{ex.where or ex.id}: image"))
            except RecordError as e:
                problems.append(f"{ex.where or ex.id}: image {k + 1} ({ex.images[k]}): {e}")
                break
        else:
            out.append((ex, (paths[0], paths[1])))
    return out, problems


# ---------------------------------------------------------------------------------------------- human labels
def read_labels(path: str | Path) -> tuple[dict[str, tuple[str, str, str]], list[str]]:
    """Human labels from CSV (header ``id,label[,reason]``) or JSONL (``{"id", "label", "reason"}``):
    ``({pair id: (label, reason, file:line)}, problems)``. A label that is neither Yes nor No (any case) and a
    repeated id are problems naming the file and line; those pairs get no label.

    Raises:
        RecordError: the file is missing, or a CSV lacks the ``id`` / ``label`` columns.
    """
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"labels file not found: {path}")
    rows: list[tuple[str, dict]] = []
    problems: list[str] = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"id", "label"} <= set(reader.fieldnames):
                raise RecordError(f"{path}: a labels CSV needs the columns id,label (and optionally reason), got "
                                  f"{reader.fieldnames}")
            for row in reader:
                rows.append((f"{path}:{reader.line_num}", row))
    else:
        for where, d in jsonl_lines(path):
            if not isinstance(d, dict):
                problems.append(not_json(where, d) or f"{where}: expected a JSON object")
                continue
            rows.append((where, d))
    labels: dict[str, tuple[str, str, str]] = {}
    for where, row in rows:
        pid = row.get("id")
        if not isinstance(pid, str) or not pid.strip():
            problems.append(f"{where}: 'id' must be a non-empty string, got {pid!r}")
            continue
        label = normalize_label(row.get("label"))
        if label is None:
            problems.append(f"{where}: label {row.get('label')!r} of pair {pid!r} is neither Yes nor No")
            labels.pop(pid, None)
            continue
        if pid in labels:
            problems.append(f"{where}: pair {pid!r} is labelled again (first at {labels[pid][2]})")
            continue
        reason = row.get("reason") or ""
        labels[pid] = (label, reason if isinstance(reason, str) else str(reason), where)
    return labels, problems


# ---------------------------------------------------------------------------------------------- split
def split_heldout(examples: list[PairExample], fraction: float, seed: int = 0
                  ) -> tuple[list[PairExample], list[PairExample]]:
    """``(train, heldout)``: whole groups go to the held-out side, ``round(fraction * groups)`` of them (at least
    one when ``fraction > 0`` and there are two or more groups), chosen by a seeded hash of the group name so the
    split does not depend on file order or on which other groups exist."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    groups = sorted({e.group for e in examples})
    k = round(fraction * len(groups))
    if fraction > 0 and len(groups) > 1:
        k = min(max(k, 1), len(groups) - 1)
    ranked = sorted(groups, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    held = set(ranked[:k])
    return [e for e in examples if e.group not in held], [e for e in examples if e.group in held]


def relative_to(path: str | Path, root: str | Path) -> str:
    """``path`` relative to ``root`` with ``/`` separators; RecordError when it is outside ``root``."""
    rel = os.path.relpath(Path(path).resolve(), Path(root).resolve())
    if rel == ".." or rel.startswith(".." + os.sep) or os.path.isabs(rel):
        raise RecordError(f"{path} is outside {root}; keep the images under the folder of the pairs file")
    return Path(rel).as_posix()


__all__ = ["ANSWERS", "PairExample", "answer_of", "example_from_json", "normalize_label", "parse_judge_reply",
           "read_labels", "read_pairs", "relative_to", "response_from_label", "split_heldout", "write_pairs"]
