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
    """``None`` when ``path`` is an image psrl can use as a reference, else the reason (naming the file).

    The file is decoded in full by psrl's one loader (:func:`psrl.images.check_image`), so a truncated JPEG fails
    here rather than at evaluation, and a side below :data:`psrl.images.MIN_SIDE` (what the rewards refuse) is an
    issue. A header check (``PIL.Image.verify``) accepts both."""
    from psrl.images import MIN_SIDE
    from psrl.images import check_image as decode_check

    return decode_check(path, min_side=MIN_SIDE)
