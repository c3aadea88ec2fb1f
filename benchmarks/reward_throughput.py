"""Subject-consistency reward throughput: batched + cached vs a naive per-image, per-subject loop.

Scenario: one record with 3 subjects (distinct phrases) and a group of G=8 generated 512x512 images, as in one
GRPO group. *Batched*: one ``SubjectConsistencyReward`` call (one batched detection over the 8x3 (image, phrase)
pairs, one over the 3 references, two batched embedding passes; the reference pass happens once per record and is
cached, so it is included here as a cold-cache call). *Naive*: for every image and every subject, detect in the
image, detect in the reference, crop both, embed both one at a time, cosine. Both use the same model objects and
the same crop rule; the script checks that their scores agree.

Sizes: ``--size tiny`` (tiny random models, seconds on a CPU) or ``--size base`` (random weights with the real
architectures: Grounding DINO Swin-T + BERT-base, 900 queries, 800 px input; DINO ViT-S/16 at 224 px) which is what
the timings should be quoted for. Real checkpoints: ``--detector-path`` / ``--embedder-path``.

    python benchmarks/reward_throughput.py --size base --device cuda
"""
from __future__ import annotations

import argparse
import json
import string
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from psrl.data.records import Record, SubjectRef, resolve_records
from psrl.rewards.detection import GroundingDinoDetector, build_detector
from psrl.rewards.embedding import HFImageEmbedder, build_embedder
from psrl.rewards.images import crop_box
from psrl.rewards.subject_consistency import SubjectConsistencyReward

PHRASES = ("cat", "dog", "car")


def base_components(device, dtype):
    """Real-size architectures with random weights (no download)."""
    from transformers import (BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoProcessor, ViTConfig, ViTModel)
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    from psrl.rewards.components import imagenet_bit_processor

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *PHRASES, *string.ascii_lowercase]
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(dict.fromkeys(vocab))})
    processor = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessorPil(), tokenizer=tokenizer)
    torch.manual_seed(0)
    gdino = GroundingDinoForObjectDetection(GroundingDinoConfig()).eval()
    detector = GroundingDinoDetector(components=(gdino, processor), device=device, dtype=dtype, box_threshold=0.0,
                                     batch_size=32)
    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                             image_size=224, patch_size=16), add_pooling_layer=False).eval()
    embedder = HFImageEmbedder(vit, imagenet_bit_processor(256, 224), "cls", device=device, dtype=dtype,
                               batch_size=64)
    return detector, embedder


def build(args):
    if args.size == "base":
        detector, embedder = base_components(args.device, args.dtype)
    else:
        detector = build_detector({"kind": "grounding_dino", "path": "tiny", "box_threshold": 0.0},
                                  device=args.device, dtype=args.dtype)
        embedder = build_embedder({"kind": "dino_vit", "path": "tiny"}, device=args.device, dtype=args.dtype)
    if args.detector_path:
        detector = build_detector({"kind": "grounding_dino", "path": args.detector_path}, device=args.device,
                                  dtype=args.dtype)
    if args.embedder_path:
        embedder = build_embedder({"kind": "dino_vit", "path": args.embedder_path}, device=args.device,
                                  dtype=args.dtype)
    return detector, embedder


def naive_scores(detector, embedder, reward: SubjectConsistencyReward, images, record) -> list[float]:
    """Per image, per subject, batch size 1, no cache: what a straightforward port of the reference scorer does."""
    out = []
    for img in images:
        sims = []
        for s in record.subjects:
            ref = reward.refs.load(s.image)
            det_g = detector.detect([img], [s.phrase])[0].by_score()
            det_r = detector.detect([ref], [s.phrase])[0].by_score()
            crop_g = crop_box(img, det_g.boxes[0]) if len(det_g) else None
            crop_r = (crop_box(ref, det_r.boxes[0]) if len(det_r) else None) or ref
            if crop_g is None:
                sims.append(0.0)
                continue
            e_g, e_r = embedder.embed([crop_g])[0], embedder.embed([crop_r])[0]
            sims.append(float(e_g @ e_r))
        out.append(sum(sims) / len(sims))
    return out


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--size", choices=("tiny", "base"), default="tiny")
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--detector-path")
    p.add_argument("--embedder-path")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp(prefix="psrl_bench_"))
    for ph in PHRASES:
        Image.fromarray((rng.random((256, 256, 3)) * 255).astype(np.uint8)).save(tmp / f"{ph}.png")
    record = resolve_records([Record(id="bench", prompt="a cat, a dog and a car",
                                     subjects=tuple(SubjectRef(f"{ph}.png", ph) for ph in PHRASES))], tmp)[0]
    r = args.resolution
    images = [Image.fromarray((rng.random((r, r, 3)) * 255).astype(np.uint8)) for _ in range(args.group)]

    t0 = time.perf_counter()
    detector, embedder = build(args)
    build_s = time.perf_counter() - t0

    def fresh_reward():
        return SubjectConsistencyReward(detector=detector, embedder=embedder)

    # warm-up (kernels, allocator, lazy inits), not timed
    fresh_reward()(images[:2], [record] * 2)
    naive_scores(detector, embedder, fresh_reward(), images[:1], record)

    reward = fresh_reward()
    sync(args.device)
    t0 = time.perf_counter()
    batched = reward(images, [record] * args.group)
    sync(args.device)
    batched_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    reward(images, [record] * args.group)  # second group of the same record: references cached
    sync(args.device)
    warm_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    naive = naive_scores(detector, embedder, fresh_reward(), images, record)
    sync(args.device)
    naive_s = time.perf_counter() - t0

    diff = float(np.max(np.abs(np.array(naive) - batched.scores.numpy())))
    figures = {"size": args.size, "device": str(args.device), "dtype": args.dtype, "group": args.group,
               "subjects": len(PHRASES), "resolution": r, "build_s": round(build_s, 3),
               "naive_s": round(naive_s, 4), "batched_cold_s": round(batched_s, 4),
               "batched_warm_s": round(warm_s, 4), "speedup_cold": round(naive_s / batched_s, 2),
               "speedup_warm": round(naive_s / warm_s, 2), "max_abs_score_diff": diff,
               "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name() if str(args.device).startswith("cuda") else None}
    print(f"subject_consistency, G={args.group} x {len(PHRASES)} subjects, {r}px, {args.size} models on "
          f"{args.device} ({args.dtype})")
    print(f"  naive per-image per-subject loop : {naive_s:8.3f} s")
    print(f"  batched + cached (cold refs)     : {batched_s:8.3f} s   ratio {naive_s / batched_s:5.1f}x")
    print(f"  batched, references cached       : {warm_s:8.3f} s   ratio {naive_s / warm_s:5.1f}x")
    print(f"  max |score difference|           : {diff:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    assert diff < 1e-3 or args.dtype != "float32", "batched and naive scores disagree"
    return 0


if __name__ == "__main__":
    sys.exit(main())
