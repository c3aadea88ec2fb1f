"""Open-vocabulary detection behind one interface: ``detect(images, phrases) -> [Detections]``.

One phrase per image (a batch of ``(image, phrase)`` pairs, so a group of G images x N subjects is one batched call
per chunk). Boxes are xyxy in pixels of the image as given, in the detector's raw output order (query order for
Grounding DINO, which the PSRBench compat mode needs); :meth:`Detections.by_score` sorts them.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from PIL import Image
from torch import Tensor

from psrl.images import group_by_size
from psrl.models.loading import check_tokenizer
from psrl.rewards.isolation import Failed, per_item
from psrl.rewards.loading import TINY, component_spec, load_pretrained, resolve_dtype
from psrl.rewards.tiny import tiny_grounding_dino, tiny_owlv2


@dataclass
class Detections:
    boxes: Tensor   # [n, 4] xyxy pixels, float32, raw detector order
    scores: Tensor  # [n]

    def __len__(self) -> int:
        return int(self.scores.numel())

    def by_score(self) -> Detections:
        order = torch.argsort(self.scores, descending=True, stable=True)
        return Detections(self.boxes[order], self.scores[order])


@runtime_checkable
class Detector(Protocol):
    def detect(self, images: Sequence[Image.Image], phrases: Sequence[str]) -> list[Detections]: ...


def grounding_caption(phrase: str) -> str:
    """GroundingDINO's caption rule: lower-case, stripped, ending with '.'."""
    caption = phrase.lower().strip()
    return caption if caption.endswith(".") else caption + "."


class GroundingDinoDetector:
    """``GroundingDinoForObjectDetection`` + processor. ``box_threshold`` keeps queries whose best token
    probability exceeds it (0.35, PSRBench); ``text_threshold`` (0.25) only affects labels, which we do not use."""

    def __init__(self, path: str = "IDEA-Research/grounding-dino-tiny", *, device="cpu", dtype=None,
                 box_threshold: float = 0.35, text_threshold: float = 0.25, batch_size: int = 16, components=None):
        self.device, self.dtype = torch.device(device), resolve_dtype(dtype, device)
        self.box_threshold, self.text_threshold, self.batch_size = box_threshold, text_threshold, batch_size
        if components is not None:  # (model, processor) built by the caller (benchmarks, custom configs)
            self.model, self.processor = components
        elif path == TINY:
            self.model, self.processor = tiny_grounding_dino()
        else:
            self.model, self.processor = load_pretrained("grounding_dino detector", path, _load_grounding_dino)
        self.model.to(self.device, self.dtype).eval()

    @torch.no_grad()
    def detect(self, images: Sequence[Image.Image], phrases: Sequence[str]) -> list[Detections]:
        if len(images) != len(phrases):
            raise ValueError(f"detect: {len(images)} images for {len(phrases)} phrases")
        # Only same-size images share a batch: the processor pads smaller images and the padding changes the
        # backbone features (scores moved by up to 0.3 on the tiny model), so mixed sizes would not match
        # one-at-a-time detection. Text padding is masked and harmless.
        out: list[Detections | None] = [None] * len(images)
        for idx in group_by_size(range(len(images)), lambda i: images[i].size):
            for s in range(0, len(idx), self.batch_size):
                chunk = idx[s:s + self.batch_size]
                imgs = [images[i] for i in chunk]
                captions = [grounding_caption(phrases[i]) for i in chunk]
                self._check_caption_lengths(captions)
                # BatchFeature.to casts the floating tensors only (ids and masks keep their dtype)
                inputs = self.processor(images=imgs, text=captions, return_tensors="pt", padding=True).to(
                    self.device, self.dtype)
                outputs = self.model(**inputs)
                dets = grounding_boxes(outputs.logits, outputs.pred_boxes, [(im.height, im.width) for im in imgs],
                                       self.box_threshold)
                for i, d in zip(chunk, dets):
                    out[i] = d
        return out

    def _check_caption_lengths(self, captions: list[str]) -> None:
        """The model's text branch holds ``max_text_len`` tokens; a longer caption fails deep inside the model with
        a shape error, so say it plainly (the reward turns it into that sample's failure reason)."""
        limit = getattr(self.model.config, "max_text_len", None)
        if limit is None:
            return
        for c in captions:
            n = len(self.processor.tokenizer(c)["input_ids"])
            if n > limit:
                raise ValueError(f"subject phrase {c[:40]!r}... is {n} tokens; grounding_dino reads at most {limit}")


def grounding_boxes(logits: Tensor, pred_boxes: Tensor, sizes: list[tuple[int, int]], threshold: float
                    ) -> list[Detections]:
    """Grounding DINO post-processing without the text labels: a query's score is its best token probability
    (sigmoid), queries over ``threshold`` are kept in query order, normalised cxcywh boxes become xyxy pixels.
    Same boxes and scores as ``post_process_grounded_object_detection``, whose per-box label decoding we skip
    (we never use the labels, and decoding 900 labels per image dominated the reward's time)."""
    scores = torch.sigmoid(logits.float()).max(dim=-1).values            # [B, Q]
    cx, cy, w, h = pred_boxes.float().unbind(-1)
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
    hw = torch.tensor(sizes, dtype=torch.float32, device=boxes.device)     # [B, 2] (h, w)
    boxes = boxes * torch.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], dim=-1)[:, None, :]
    keep = scores > threshold
    scores, boxes, keep = scores.cpu(), boxes.cpu(), keep.cpu()
    return [Detections(boxes[i][keep[i]], scores[i][keep[i]]) for i in range(len(sizes))]


def _load_grounding_dino(path: str):
    from transformers import AutoTokenizer, GroundingDinoForObjectDetection, GroundingDinoProcessor
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    tokenizer = AutoTokenizer.from_pretrained(path)
    check_tokenizer(tokenizer, f"{path} (grounding_dino detector)")
    processor = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessorPil.from_pretrained(path),
                                       tokenizer=tokenizer)
    return GroundingDinoForObjectDetection.from_pretrained(path), processor


class Owlv2Detector:
    """OWLv2 text-query detection; the query is ``query_template.format(phrase)``. OWLv2 pads to a square, so boxes
    are scaled to ``max(H, W)`` and clipped to the image (huggingface/transformers#27205)."""

    # alike on purpose: every model-backed component loads this way (tiny in code, or real weights through
    # load_pretrained), as GroundingDinoDetector does
    def __init__(self, path: str = "google/owlv2-base-patch16-ensemble", *, device="cpu", dtype=None,
                 box_threshold: float = 0.1, query_template: str = "a photo of a {}", batch_size: int = 16):
        self.device, self.dtype = torch.device(device), resolve_dtype(dtype, device)
        self.box_threshold, self.query_template, self.batch_size = box_threshold, query_template, batch_size
        if path == TINY:
            self.model, self.processor = tiny_owlv2()
        else:
            self.model, self.processor = load_pretrained("owlv2 detector", path, _load_owlv2)
        self.model.to(self.device, self.dtype).eval()

    @torch.no_grad()
    def detect(self, images: Sequence[Image.Image], phrases: Sequence[str]) -> list[Detections]:
        if len(images) != len(phrases):
            raise ValueError(f"detect: {len(images)} images for {len(phrases)} phrases")
        out: list[Detections] = []
        for s in range(0, len(images), self.batch_size):
            imgs = list(images[s:s + self.batch_size])
            queries = [[self.query_template.format(p.strip())] for p in phrases[s:s + self.batch_size]]
            inputs = self.processor(text=queries, images=imgs, return_tensors="pt", truncation=True).to(
                self.device, self.dtype)
            outputs = self.model(**inputs)
            outputs.logits, outputs.pred_boxes = outputs.logits.float(), outputs.pred_boxes.float()
            sizes = [(max(im.size), max(im.size)) for im in imgs]
            results = self.processor.post_process_grounded_object_detection(
                outputs, threshold=self.box_threshold, target_sizes=sizes, text_labels=queries)
            for im, r in zip(imgs, results):
                boxes = r["boxes"].float().cpu()
                boxes[:, 0::2] = boxes[:, 0::2].clamp(0, im.width)
                boxes[:, 1::2] = boxes[:, 1::2].clamp(0, im.height)
                out.append(Detections(boxes, r["scores"].float().cpu()))
        return out


def _load_owlv2(path: str):
    from transformers import AutoTokenizer, Owlv2ForObjectDetection, Owlv2Processor
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(path)
    check_tokenizer(tokenizer, f"{path} (owlv2 detector)")
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessorPil.from_pretrained(path), tokenizer=tokenizer)
    return Owlv2ForObjectDetection.from_pretrained(path), processor


DETECTORS = {"grounding_dino": GroundingDinoDetector, "owlv2": Owlv2Detector}


def detect_phrases(detector: Detector, images: Sequence[Image.Image], phrases: dict[int, Sequence[str]],
                   failures: list[str | None], what: str) -> dict[tuple[int, str], Detections | Failed]:
    """``{(b, phrase): detections}`` of each sample ``b``'s distinct ``phrases[b]`` (stripped, lower-cased) in
    ``images[b]``, in one batched call (isolated per pair on error, :func:`psrl.rewards.isolation.per_item`); a
    sample whose detection failed gets the reason in ``failures[b]``."""
    pairs = [(b, p) for b, ps in phrases.items() for p in dict.fromkeys(p.strip().lower() for p in ps)]
    dets = per_item(lambda chunk: detector.detect([images[b] for b, _ in chunk], [p for _, p in chunk]), pairs, what)
    for (b, _), d in zip(pairs, dets):
        if isinstance(d, Failed) and not failures[b]:
            failures[b] = d.reason
    return dict(zip(pairs, dets))


def build_detector(spec: dict | str | Detector | None, *, device="cpu", dtype=None) -> Detector:
    """``{"kind": "grounding_dino"|"owlv2", "path": ..., "box_threshold": ...}``, a kind name, or a Detector."""
    if isinstance(spec, Detector):
        return spec
    kind, spec = component_spec(spec, "grounding_dino", "detector")
    if kind not in DETECTORS:
        raise ValueError(f"unknown detector kind {kind!r}; use one of {sorted(DETECTORS)}")
    return DETECTORS[kind](device=device, dtype=spec.pop("dtype", dtype), **spec)
