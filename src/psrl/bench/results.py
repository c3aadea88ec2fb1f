"""Result folders: where generated images and result JSON files live, and reading them back for evaluation.

A psrl result folder (``psrl bench generate --out DIR``)::

    DIR/bench.json                      manifest: benchmark, data root, seeds, model, sampling, versions
    DIR/seed<S>/<Subset>.json           the subset's entries with ``result_path`` added (released format)
    DIR/seed<S>/<Subset>/<index>.png    the images

Results of any other model need only the result JSON files, either directly in ``DIR`` (seed 0) or in
``DIR/seed<S>/``. ``result_path`` may be absolute or relative; a relative path is looked up next to the JSON file
first, then in the current directory (where the released scripts look).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from psrl.bench.items import BenchItem, ValidationIssue, sample_key
from psrl.bench.psrbench import LoadedSubsets, _relation_parser, load_subset_file
from psrl.errors import PsrlError

MANIFEST = "bench.json"
_SEED_DIR = re.compile(r"^seed(\d+)$")


def benchmark_subsets(benchmark: str) -> tuple[str, ...]:
    from psrl.bench.benchmarks import get_benchmark

    return get_benchmark(benchmark).subsets


def image_path(out_dir: Path, seed: int, subset: str, index: int) -> Path:
    return Path(out_dir) / f"seed{seed}" / subset / f"{index}.png"


def result_json_path(out_dir: Path, seed: int, subset: str) -> Path:
    return Path(out_dir) / f"seed{seed}" / f"{subset}.json"


def read_manifest(results_dir: str | Path) -> dict:
    path = Path(results_dir) / MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PsrlError(f"{path}: not valid JSON: {e}") from e


def resolve_benchmark_and_root(results_dir: str | Path, benchmark: str | None,
                               data_root: str | Path | None) -> tuple[str, Path]:
    """``benchmark`` and ``data_root`` from the arguments, else from the result folder's manifest."""
    manifest = read_manifest(results_dir)
    benchmark = benchmark or manifest.get("benchmark") or "psrbench"
    root = data_root or manifest.get("data_root")
    if not root:
        raise PsrlError(f"{results_dir} has no bench.json naming the data root; pass --data-root")
    return benchmark, Path(root)


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


def _seed_dirs(results_dir: Path) -> list[tuple[int, Path]]:
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


def load_result_samples(results_dir: str | Path, data_root: str | Path, benchmark: str = "psrbench",
                        subsets: list[str] | None = None) -> tuple[list[ResultSample], list[ValidationIssue]]:
    """Every entry of every result file under ``results_dir`` as a :class:`ResultSample`, in (seed, subset,
    index) order, and the issues found in the files (which also mark the affected samples' ``problem``)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise PsrlError(f"results folder not found: {results_dir}")
    from psrl.bench.benchmarks import get_benchmark
    from psrl.registry import import_object

    names = list(subsets) if subsets else list(benchmark_subsets(benchmark))
    data_root = Path(data_root).resolve()
    parser = _relation_parser() if benchmark == "psrbench" else None
    samples: list[ResultSample] = []
    issues: list[ValidationIssue] = []
    found_any = False
    for seed, folder in _seed_dirs(results_dir):
        for subset in names:
            json_file = folder / f"{subset}.json"
            if not json_file.is_file():
                continue
            found_any = True
            loaded = load_subset_file(json_file, subset, data_root, check_files=False,
                                      relation_parser=parser, out=LoadedSubsets(), benchmark=benchmark,
                                      parse=import_object(get_benchmark(benchmark).parse_entry))
            issues.extend(loaded.issues)
            for item in loaded.items:
                problems = [str(i) for i in loaded.problems_of(item.key)]
                samples.append(_sample(seed, item, json_file, problems))
    if not found_any:
        raise PsrlError(f"no result files ({', '.join(f'{n}.json' for n in names)}) in {results_dir} "
                        f"or its seed<N>/ folders")
    return samples, issues


def _sample(seed: int, item: BenchItem, json_file: Path, problems: list[str]) -> ResultSample:
    if item.record is None:
        return ResultSample(seed, item, None, "invalid entry: " + "; ".join(problems))
    rp = item.entry.get("result_path")
    if not isinstance(rp, str) or not rp:
        return ResultSample(seed, item, None, "no result_path in the result file")
    image = resolve_result_path(rp, json_file)
    if not image.is_file():
        return ResultSample(seed, item, image, f"result image not found: {image}")
    return ResultSample(seed, item, image, None)
