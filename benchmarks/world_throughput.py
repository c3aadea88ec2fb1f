"""Pocket-world throughput: rendering scenes and scoring them with ``pocket_subjects``, against a PNG round trip.

Baseline: PIL's PNG encode + decode of the same 64x64 scene, the cost every image of ``psrl world make`` (write)
and ``psrl bench eval`` (read) pays anyway; the ratios say whether drawing or scoring a scene costs more than storing
it. Scenes: ``--scenes`` drawn in turn from PSRBench's seven subsets on the held-out subjects. Figures are CPU
seconds of this process (``time.process_time``), so a shared machine's load does not inflate them; wall time is
printed beside.

    python benchmarks/world_throughput.py --scenes 700
"""
from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch
from PIL import Image

from psrl.data.records import Record, SubjectRef
from psrl.images import pil_to_tensor
from psrl.world.detect import detect_subjects
from psrl.world.export import draw_scenes
from psrl.world.render import render_scene
from psrl.world.reward import PocketSubjectsReward, palette_fidelity
from psrl.world.subjects import BACKGROUNDS, split_subjects


def timed(fn) -> tuple[float, float]:
    """``(CPU seconds, wall seconds)`` of ``fn()``."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def png_round_trip(image: Image.Image) -> None:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    Image.open(io.BytesIO(buf.getvalue())).load()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=700)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    scenes = draw_scenes(args.seed, "bench", split_subjects()[1], args.scenes)
    images = [render_scene(s)[0] for s in scenes]
    arrays = [np.asarray(im) for im in images]
    tensors = torch.stack([pil_to_tensor(im) for im in images])
    records = [Record(id=str(i), prompt=s.instruction, subjects=tuple(SubjectRef(None, x.phrase) for x in s.subjects))
               for i, s in enumerate(scenes)]
    for rgb in BACKGROUNDS.values():  # build fidelity's lookup tables outside the timing (blank images: no detections
        palette_fidelity(np.full((64, 64, 3), rgb, np.uint8))  # enter the reward's cache)
    n = len(scenes)
    rows = {
        "PNG encode + decode (baseline)": timed(lambda: [png_round_trip(im) for im in images]),
        "render_scene": timed(lambda: [render_scene(s) for s in scenes]),
        "detect_subjects": timed(lambda: [detect_subjects(a) for a in arrays]),
        "pocket_subjects (identity, fresh reward)": timed(lambda: PocketSubjectsReward()(tensors, records)),
    }
    base = rows["PNG encode + decode (baseline)"][0]
    print(f"{n} scenes of 64x64, 1 thread")
    print(f"{'step':42s} {'per CPU-s':>10s} {'ms/scene':>9s} {'wall s':>7s} {'ratio to PNG':>12s}")
    for name, (cpu, wall) in rows.items():
        print(f"{name:42s} {n / cpu:10.0f} {cpu / n * 1e3:9.2f} {wall:7.2f} {cpu / base:12.1f}")


if __name__ == "__main__":
    main()
