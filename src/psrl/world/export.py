"""``psrl world make``: the pocket world written as psrl records and as PocketBench, a PSRBench-format benchmark.

Layout of ``OUT`` (every image path in a record is relative to ``OUT``, the records' data root)::

    world.json                     what was made: seed, counts, sizes, the held-out subject ids
    subjects/<id>.png              the reference of every subject (32x32, on white)
    train.jsonl, images/train/     records on training subjects, with their SFT ``target`` scene (64x64)
    eval.jsonl, images/eval/       records on held-out subjects, with targets (held-out rewards during training)
    pocketbench/                   PocketBench: <Subset>.json x 7 (PSRBench's format: instruction, input_path,
                                   category1..N) on held-out subjects, references in pocketbench/subjects/
    pocketbench_truth/             the ground-truth scenes as a result folder (bench.json, seed0/<Subset>.json
                                   with result_path): ``psrl bench eval --results`` on it gives the ceiling

Subsets are drawn in turn (the seven of PSRBench, arXiv 2512.01236 Sec. 4.1), so every split holds them in equal
shares. Each split draws from its own stream of ``numpy.random.default_rng([seed, split])``: the benchmark does not
change when ``--num`` does.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from psrl.bench.results import MANIFEST, result_manifest
from psrl.data.records import Record, SubjectRef, write_records
from psrl.errors import PsrlError
from psrl.fileio import write_json_atomic
from psrl.images import save_image
from psrl.world.render import render_reference, render_scene
from psrl.world.scenes import SUBSETS, Scene, sample_scene
from psrl.world.subjects import all_subjects, split_subjects

SCENE_SIZE = 64
REFERENCE_SIZE = 32
_STREAMS = {"train": 0, "eval": 1, "bench": 2}


@dataclass(frozen=True)
class WorldSpec:
    """What ``psrl world make`` writes.

    Attributes:
        num: training records (>= 1).
        eval_num: held-out records with targets (>= 0).
        bench_per_subset: PocketBench entries per subset (>= 1).
        seed: seed of every random draw.
    """

    num: int = 1000
    eval_num: int = 64
    bench_per_subset: int = 20
    seed: int = 0

    def check(self) -> None:
        for name, low in (("num", 1), ("eval_num", 0), ("bench_per_subset", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise PsrlError(f"world make: --{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")


def draw_scenes(seed: int, split: str, subjects, n: int) -> list[Scene]:
    """``n`` scenes of ``split`` (``train``, ``eval`` or ``bench``) on ``subjects``, subsets in turn."""
    rng = np.random.default_rng([seed, _STREAMS[split]])
    names = list(SUBSETS)
    return [sample_scene(rng, subjects, names[i % len(names)]) for i in range(n)]


def scene_record(scene: Scene, record_id: str, target: str | None, boxes) -> Record:
    """A scene as a psrl record: the instruction, its subjects' references (``subjects/<id>.png``), the target."""
    tags = {"subset": scene.subset, "background": scene.background, "boxes": [list(b) for b in boxes],
            "world": "pocket"}
    if scene.actions:
        tags["actions"] = list(scene.actions)
    return Record(id=record_id, prompt=scene.instruction, target=target, tags=tags,
                  subjects=tuple(SubjectRef(f"subjects/{s.id}.png", s.phrase) for s in scene.subjects))


def bench_entry(scene: Scene) -> dict:
    """A PocketBench entry in PSRBench's format (references relative to the benchmark root)."""
    entry = {"instruction": scene.instruction, "input_path": [f"subjects/{s.id}.png" for s in scene.subjects]}
    entry.update({f"category{i}": s.phrase for i, s in enumerate(scene.subjects, 1)})
    return entry


def _write_split(out: Path, split: str, scenes: list[Scene]) -> list[Record]:
    records = []
    for i, scene in enumerate(scenes):
        image, boxes = render_scene(scene, SCENE_SIZE)
        target = f"images/{split}/{i:06d}.png"
        save_image(image, out / target)
        records.append(scene_record(scene, f"{split}-{i:06d}", target, boxes))
    write_records(records, out / f"{split}.jsonl")
    return records


def make_world(out: str | Path, spec: WorldSpec) -> dict:
    """Write the world into ``out`` (see the module docstring) and return the summary also saved as ``world.json``.

    Raises:
        PsrlError: a bad spec, or ``out`` exists and is not empty (checked before anything is written).
    """
    spec.check()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PsrlError(f"world make: --out {out} exists and is not empty; choose a new folder")
    train_subjects, held_out = split_subjects()
    for s in all_subjects():
        save_image(render_reference(s, REFERENCE_SIZE), out / "subjects" / f"{s.id}.png")
    _write_split(out, "train", draw_scenes(spec.seed, "train", train_subjects, spec.num))
    if spec.eval_num:
        _write_split(out, "eval", draw_scenes(spec.seed, "eval", held_out, spec.eval_num))
    bench, truth = out / "pocketbench", out / "pocketbench_truth"
    for s in held_out:
        save_image(render_reference(s, REFERENCE_SIZE), bench / "subjects" / f"{s.id}.png")
    scenes = draw_scenes(spec.seed, "bench", held_out, spec.bench_per_subset * len(SUBSETS))
    for name in SUBSETS:
        entries, results = [], []
        for i, scene in enumerate(s for s in scenes if s.subset == name):
            entry = bench_entry(scene)
            save_image(render_scene(scene, SCENE_SIZE)[0], truth / "seed0" / name / f"{i}.png")
            entries.append(entry)
            results.append({**entry, "result_path": f"{name}/{i}.png"})
        write_json_atomic(bench / f"{name}.json", entries)
        write_json_atomic(truth / "seed0" / f"{name}.json", results)
    write_json_atomic(truth / MANIFEST, result_manifest("pocket", bench, model="ground truth (the world's renderer)",
                                                        seeds=[0]))
    summary = {"seed": spec.seed, "num": spec.num, "eval_num": spec.eval_num,
               "bench_per_subset": spec.bench_per_subset, "scene_size": SCENE_SIZE,
               "reference_size": REFERENCE_SIZE, "subjects": len(all_subjects()),
               "held_out_subjects": [s.id for s in held_out], "subsets": list(SUBSETS)}
    write_json_atomic(out / "world.json", summary)
    return summary
