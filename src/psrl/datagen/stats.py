"""Per-stage statistics, counted from the manifests themselves (so they stay right across resumes and shards) and
kept in ``<dataset>/stats.json`` (one object per stage)."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from psrl.datagen.manifest import KEPT, REJECTED
from psrl.fileio import write_json_atomic

STATS_FILE = "stats.json"


@dataclass
class StageStats:
    """What one stage did. ``inputs``: samples it was given (its share of the previous stage's kept samples);
    ``kept`` / ``rejected``: outcomes in its manifest; ``rejected_by_reason``: reason -> count; ``new``: samples
    processed by this run (the rest were already done by an earlier, interrupted or complete run)."""

    stage: str
    inputs: int
    kept: int
    rejected: int
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    new: int = 0
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_entries(cls, stage: str, inputs: int, entries: list[dict], *, new: int = 0,
                     extra: dict | None = None) -> StageStats:
        kept = sum(e["status"] == KEPT for e in entries)
        reasons = Counter(e.get("reason", "unknown") for e in entries if e["status"] == REJECTED)
        return cls(stage=stage, inputs=inputs, kept=kept, rejected=sum(reasons.values()),
                   rejected_by_reason=dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
                   new=new, extra=dict(extra or {}))

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("stage")
        if not d["extra"]:
            d.pop("extra")
        return d

    def summary(self) -> str:
        """One human line: ``render: 8 in, 7 kept, 1 rejected (missing_subject 1), 3 new``."""
        reasons = ", ".join(f"{k} {v}" for k, v in self.rejected_by_reason.items())
        line = f"{self.stage}: {self.inputs} in, {self.kept} kept, {self.rejected} rejected"
        if reasons:
            line += f" ({reasons})"
        line += f", {self.new} new"
        line += "".join(f", {k}={v:.4g}" if isinstance(v, float) else f", {k}={v}" for k, v in self.extra.items())
        return line


def read_stats(dataset: str | Path) -> dict:
    path = Path(dataset) / STATS_FILE
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def write_stage_stats(dataset: str | Path, stats: StageStats) -> None:
    """Replace this stage's entry in ``stats.json`` (atomic; other stages' entries are kept)."""
    data = read_stats(dataset)
    data[stats.stage] = stats.to_json()
    write_json_atomic(Path(dataset) / STATS_FILE, data)
