"""Result folders: where generated images and result JSON files live, and reading them back for evaluation.

A psrl result folder (``psrl bench generate --out DIR``)::

    DIR/bench.json                      manifest: benchmark, data root, seeds, model, sampling, versions
                                        (:func:`result_manifest`)
    DIR/seed<S>/<Subset>.json           the subset's entries with ``result_path`` added (released format)
    DIR/seed<S>/<Subset>/<index>.png    the images

Results of any other model need only the result JSON files, either directly in ``DIR`` (seed 0) or in
``DIR/seed<S>/``. ``result_path`` may be absolute or relative; a relative path is looked up next to the JSON file
first, then in the current directory (where the released scripts look). The folder is read back, its entries
resolved under the data root, by :func:`psrl.bench.loading.load_results`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from psrl.bench.items import BenchItem, sample_key
from psrl.errors import PsrlError

MANIFEST = "bench.json"
ROOT_KEY = "data_root"  # bench.json's (and summary.json's) name for the data root; users read it
_SEED_DIR = re.compile(r"^seed(\d+)$")


def image_path(out_dir: Path, seed: int, subset: str, index: int) -> Path:
    return Path(out_dir) / f"seed{seed}" / subset / f"{index}.png"


def result_json_path(out_dir: Path, seed: int, subset: str) -> Path:
    return Path(out_dir) / f"seed{seed}" / f"{subset}.json"


def result_manifest(benchmark: str, root: str | Path, **fields) -> dict:
    """A result folder's ``bench.json``: the benchmark, the data root its entries were loaded from (resolved) and
    any other ``fields`` (model, sampling, seeds, versions)."""
    return {"benchmark": benchmark, ROOT_KEY: str(Path(root).resolve()), **fields}


def read_manifest(results_dir: str | Path) -> dict:
    path = Path(results_dir) / MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PsrlError(f"{path}: not valid JSON: {e}") from e


@dataclass(frozen=True)
class ResultSample:
    """One entry under one seed: its item (record may be ``None`` for a broken entry), the image if any, and why
    it cannot be scored (``problem``), which evaluation records as a failure of every dimension."""

    seed: int
    item: BenchItem
    image: Path | None
    problem: str | None

    @property
    def key(self) -> str:
        return sample_key(self.item.subset, self.item.index, self.seed)


def seed_dirs(results_dir: Path) -> list[tuple[int, Path]]:
    seeds = []
    for child in sorted(results_dir.iterdir()):
        m = _SEED_DIR.match(child.name)
        if child.is_dir() and m:
            seeds.append((int(m.group(1)), child))
    return sorted(seeds) or [(0, results_dir)]


def resolve_result_path(result_path: str, json_file: Path) -> Path:
    p = Path(result_path)
    if p.is_absolute():
        return p
    beside = json_file.parent / p
    if beside.exists() or not p.exists():
        return beside.resolve()
    return p.resolve()


def result_sample(seed: int, item: BenchItem, json_file: Path, problems: list[str]) -> ResultSample:
    """The sample of ``item`` under ``seed`` read from ``json_file``: its image, or why it cannot be scored (the
    entry's ``problems``, no ``result_path``, no such file)."""
    if item.record is None:
        return ResultSample(seed, item, None, "invalid entry: " + "; ".join(problems))
    rp = item.entry.get("result_path")
    if not isinstance(rp, str) or not rp:
        return ResultSample(seed, item, None, "no result_path in the result file")
    image = resolve_result_path(rp, json_file)
    if not image.is_file():
        return ResultSample(seed, item, image, f"result image not found: {image}")
    return ResultSample(seed, item, image, None)
