"""Stage 4, ``ground``: find each subject in its target with an open-vocabulary detector, reject the sample when
a subject is missing (``missing_subject``), its box is too small (``box_too_small``) or two subjects sit on one box
(``subjects_share_box``, IoU above ``ground.max_pair_iou``), and save one crop per subject.

Each subject takes its highest-scoring box (the pipeline's subjects are distinct categories, so there is no
assignment problem); boxes are clamped to the image before any test.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from psrl.datagen.boxes import box_area, box_iou, clamp_box, padded_crop_box
from psrl.datagen.config import DataPipelineConfig, GroundConfig
from psrl.datagen.runner import BaseStage, kept, rejected
from psrl.images import load_image, save_image

CROP_DIR = "crops"

# (images, phrases) -> per pair (boxes [[x1, y1, x2, y2], ...], scores [...]) in pixels
DetectFn = Callable[[Sequence[Image.Image], Sequence[str]], list[tuple[list[list[float]], list[float]]]]


def choose_boxes(detections: list[tuple[list, list]], phrases: list[str], width: int, height: int,
                 cfg: GroundConfig) -> tuple[list | None, list | None, str | None, str]:
    """``(boxes, scores, None, "")`` for a usable sample, else ``(None, None, reason, detail)``."""
    boxes, scores = [], []
    for phrase, (cand_boxes, cand_scores) in zip(phrases, detections):
        if not cand_boxes:
            return None, None, "missing_subject", f"no box for {phrase!r}"
        best = max(range(len(cand_scores)), key=lambda k: cand_scores[k])
        box = clamp_box(cand_boxes[best], width, height)
        area = box_area(box) / float(width * height)
        side = min(box[2] - box[0], box[3] - box[1])
        if area < cfg.min_box_area or side < cfg.min_box_side:
            return None, None, "box_too_small", (f"{phrase!r}: box {[round(v, 1) for v in box]} covers "
                                                 f"{area:.3f} of the image, shortest side {side:.0f}px")
        boxes.append(box)
        scores.append(float(cand_scores[best]))
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            iou = box_iou(boxes[i], boxes[j])
            if iou > cfg.max_pair_iou:
                return None, None, "subjects_share_box", f"{phrases[i]!r} and {phrases[j]!r} overlap, IoU {iou:.2f}"
    return boxes, scores, None, ""


class GroundStage(BaseStage):
    name = "ground"
    input_stage = "render"

    # alike on purpose: BaseStage's shape (a model or client injected by tests, else built in setup)
    def __init__(self, cfg: DataPipelineConfig, dataset: str | Path, device="cpu", detect: DetectFn | None = None):
        super().__init__(cfg, dataset, device)
        self.detect = detect
        self.batch_size = cfg.ground.batch_size

    def setup(self) -> None:
        if self.detect is None:
            from psrl.rewards.detection import build_detector

            detector = build_detector(dict(self.cfg.ground.detector), device=self.device)

            def detect(images, phrases):  # the configured detector as a DetectFn
                return [(d.boxes.tolist(), d.scores.tolist()) for d in detector.detect(list(images), list(phrases))]

            self.detect = detect

    def process(self, batch: list[dict]) -> list[dict]:
        images = {e["id"]: load_image(self.dataset / e["target"]) for e in batch}
        pairs = [(e["id"], p) for e in batch for p in e["phrases"]]
        found = self.detect([images[i] for i, _ in pairs], [p for _, p in pairs])
        if len(found) != len(pairs):
            raise RuntimeError(f"detector returned {len(found)} results for {len(pairs)} (image, phrase) pairs")
        out, k = [], 0
        for e in batch:
            n = len(e["phrases"])
            dets, k = found[k:k + n], k + n
            img = images[e["id"]]
            boxes, scores, reason, detail = choose_boxes(dets, e["phrases"], img.width, img.height, self.cfg.ground)
            if reason:
                out.append(rejected(e, reason, detail))
                continue
            crops = []
            for i, box in enumerate(boxes):
                rel = f"{CROP_DIR}/{e['id']}_{i}.png"
                save_image(img.crop(padded_crop_box(box, img.width, img.height, self.cfg.ground.crop_padding)),
                                  self.dataset / rel)
                crops.append(rel)
            out.append(kept(e, boxes=[[round(v, 2) for v in b] for b in boxes],
                            box_scores=[round(s, 4) for s in scores], crops=crops))
        return out
