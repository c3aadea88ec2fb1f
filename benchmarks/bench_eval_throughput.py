"""Samples per second of the PSRBench evaluator, batched vs one sample per call; one run each, ratio printed.

Builds a small PSRBench-format data root and result folder in a temp dir (random images, PNG references), then
evaluates the same samples with ``batch_size=B`` and with ``batch_size=1`` using the same already-built metric models
(model loading is excluded from both timings; one warm-up batch runs first). Default metrics: the PSRBench set on
tiny random-weight models (subject consistency with Grounding DINO + DINO ViT-S/16, position rule, VLM rubric
judge, HPSv3), which exercises the real code paths; ``--device cuda`` runs it on a GPU.

    python benchmarks/bench_eval_throughput.py --samples 32 --batch-size 8
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from psrl.bench.evaluate import MetricSet, evaluate_samples
from psrl.images import save_image
from psrl.bench.loading import load_results
from psrl.bench.tasks import PSRBENCH_SUBSETS, psrbench_metrics

CATEGORIES = ["cat", "dog", "car", "ring"]


def build_fixture(base: Path, n: int, size: int) -> tuple[Path, Path]:
    """``n`` entries spread over the seven subsets, with result images of ``size`` px."""
    from PIL import Image

    root, results = base / "data", base / "results" / "seed0"
    g = torch.Generator().manual_seed(0)
    for i, cat in enumerate(CATEGORIES):
        (root / "subjects").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48), (60 * i, 120, 200 - 40 * i)).save(root / "subjects" / f"{cat}.png")
    per_subset: dict[str, list] = {s.name: [] for s in PSRBENCH_SUBSETS}
    for k in range(n):
        spec = PSRBENCH_SUBSETS[k % len(PSRBENCH_SUBSETS)]
        cats = [CATEGORIES[(k + j) % len(CATEGORIES)] for j in range(spec.num_refs)]
        relation = " is to the left of the " if spec.semantic == "position" else " and the "
        entry = {"instruction": f"The {cats[0]}{relation}{' and the '.join(cats[1:])} in a garden.",
                 "input_path": [f"subjects/{c}.png" for c in cats]}
        entry.update({f"category{j + 1}": c for j, c in enumerate(cats)})
        index = len(per_subset[spec.name])
        image = results / spec.name / f"{index}.png"
        save_image(torch.rand(3, size, size, generator=g), image)
        entry["result_path"] = str(image)
        per_subset[spec.name].append(entry)
    for name, entries in per_subset.items():
        (root / f"{name}.json").write_text(json.dumps([{k: v for k, v in e.items() if k != "result_path"}
                                                       for e in entries]))
        (results / f"{name}.json").write_text(json.dumps(entries))
    return root, results.parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--size", type=int, default=64, help="result image side in pixels")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    metrics = psrbench_metrics(tiny=True)
    with tempfile.TemporaryDirectory() as tmp:
        root, results = build_fixture(Path(tmp), args.samples, args.size)
        samples, issues = load_results(results, data_root=root)
        assert not issues, issues
        metric_set = MetricSet(metrics, args.device)  # the loaded samples carry resolved references
        t0 = time.perf_counter()
        metric_set.build_all([s.name for s in PSRBENCH_SUBSETS])
        build_s = time.perf_counter() - t0
        evaluate_samples(samples[: min(len(samples), args.batch_size)], Path(tmp) / "warmup", metrics,
                         benchmark="psrbench", batch_size=args.batch_size, metric_set=metric_set)
        rates = {}
        for label, bs in (("batched", args.batch_size), ("per-sample", 1)):
            stats = evaluate_samples(samples, Path(tmp) / f"eval_{bs}", metrics, benchmark="psrbench",
                                     batch_size=bs, metric_set=metric_set)
            rates[label] = stats.samples_per_second
            print(f"{label:>10} (batch {bs:2d}): {stats.computed} samples in {stats.seconds:6.2f}s = "
                  f"{stats.samples_per_second:6.2f} samples/s")
    print(f"metric models built in {build_s:.1f}s (excluded); device {args.device}, {args.threads} threads, "
          f"{args.size}px results, tiny PSRBench metric set")
    print(f"ratio batched / per-sample: {rates['batched'] / rates['per-sample']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
