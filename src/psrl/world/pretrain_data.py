"""The small packaged record set the embedded demo (``psrl train`` without a config) trains on; the pretraining
scenes come from ``psrl world make`` (:mod:`psrl.world.export`).

Rendered by :mod:`psrl.world.render` from :mod:`psrl.world.scenes`; every record lists its subjects'
references in instruction order (``category1..N`` of PSRBench), one 32x32 reference per subject shared by all the
records that show it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from psrl.data.records import Record, SubjectRef, write_records

DEMO_SUBSETS = ("Background", "Position", "Attribute", "Action")


def _scene_records(out: Path, subjects, n: int, seed: int, subsets: Sequence[str], prefix: str,
                   reference_size: int) -> list[Record]:
    """``n`` records of scenes of ``subsets`` on ``subjects``, without targets; references drawn into
    ``out/references``."""
    import numpy as np

    from psrl.world.render import render_reference
    from psrl.world.scenes import sample_scene

    (out / "references").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records, drawn = [], set()
    for i in range(n):
        scene = sample_scene(rng, subjects, subsets[i % len(subsets)])
        for s in scene.subjects:
            if s.id not in drawn:
                render_reference(s, reference_size).save(out / "references" / f"{s.id}.png")
                drawn.add(s.id)
        records.append(Record(id=f"{prefix}{i:06d}", prompt=scene.instruction,
                              subjects=tuple(SubjectRef(image=f"references/{s.id}.png", phrase=s.phrase)
                                             for s in scene.subjects),
                              tags={"subset": scene.subset}))
    return records


def write_demo_records(out: str | Path, n_train: int = 16, n_eval: int = 4, seed: int = 0) -> tuple[Path, Path]:
    """The embedded demo's prompts: ``n_train`` two-subject records of training subjects (``train.jsonl``) and
    ``n_eval`` of held-out subjects (``eval.jsonl``), subsets from :data:`DEMO_SUBSETS`, references in
    ``out/references``. No targets (GRPO needs none). Returns both paths."""
    from psrl.world.subjects import split_subjects

    out = Path(out)
    train_subjects, held = split_subjects()
    train = _scene_records(out, train_subjects, n_train, seed, DEMO_SUBSETS, "demo-", 32)
    evals = _scene_records(out, held, n_eval, seed + 1, DEMO_SUBSETS, "heldout-", 32)
    write_records(train, out / "train.jsonl")
    write_records(evals, out / "eval.jsonl")
    return out / "train.jsonl", out / "eval.jsonl"


__all__ = ["DEMO_SUBSETS", "write_demo_records"]
