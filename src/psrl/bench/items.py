"""Benchmark items shared by every benchmark: one entry of a subset file, its record, validation issues, and a
loaded benchmark (:class:`LoadedSubsets`, what :mod:`psrl.bench.loading` returns)."""
from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass
class LoadedSubsets:
    """Items of every readable entry (in subset order, then index), all issues found, and ``source``: the data root
    the records were resolved against (``None`` when it is not a directory; provenance for ``bench.json``)."""

    items: list[BenchItem] = field(default_factory=list)
    issues: list[ValidationIssue] = field(default_factory=list)
    # the raw lists as read (to write result files back with the same entries, in the same order)
    raw: dict[str, list] = field(default_factory=dict)
    source: str | None = None

    def problems_of(self, key: str) -> list[ValidationIssue]:
        return [i for i in self.issues if i.index is not None and f"{i.subset}/{i.index}" == key]


def sample_key(subset: str, index: int, seed: int) -> str:
    """Identity of one generated sample: an entry under one seed."""
    return f"seed{seed}/{subset}/{index}"

