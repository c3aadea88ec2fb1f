"""Benchmark items shared by PSRBench and DreamBench: one entry of a subset file, its record, validation issues."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from psrl.data.records import Record


@dataclass(frozen=True)
class BenchItem:
    """One benchmark entry. ``entry`` is the raw JSON object as released (kept to write it back unchanged);
    ``record`` is what policies and rewards consume; ``key`` (``"Subset/index"``) identifies it in every file."""

    subset: str
    index: int
    entry: dict
    record: Record

    @property
    def key(self) -> str:
        return f"{self.subset}/{self.index}"


@dataclass(frozen=True)
class ValidationIssue:
    """A bad entry: subset, list index (``None`` for a whole-file problem), field and what is wrong."""

    subset: str
    index: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.subset if self.index is None else f"{self.subset}[{self.index}]"
        return f"{where}.{self.field}: {self.message}"

    def to_json(self) -> dict:
        return {"subset": self.subset, "index": self.index, "field": self.field, "message": self.message}


def sample_key(subset: str, index: int, seed: int) -> str:
    """Identity of one generated sample: an entry under one seed."""
    return f"seed{seed}/{subset}/{index}"


def check_image(path: Path) -> str | None:
    """``None`` when ``path`` is a readable image, else the reason."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        return f"file not found: {path}"
    try:
        with Image.open(path) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"unreadable image {path}: {type(e).__name__}: {e}"
    return None
