"""Image embedders behind one interface: ``embed(images) -> Tensor[n, d]`` (L2-normalised, float32, CPU).

* ``dinov2``: DINOv2 CLS (``pooler_output``, the layer-normed CLS token), resize 256 bicubic / centre-crop 224.
* ``dino_vit``: DINO v1 ViT-S/16 (``ViTModel``, ``last_hidden_state[:, 0]``) with the PSRBench/DreamBench
  preprocessing: resize shorter side to 256 (bicubic), centre-crop 224, ImageNet mean/std. The preprocessing is
  built here, not read from the checkpoint (facebook/dino-vits16 ships a plain 224x224 resize).
* ``clip``: CLIP projected image features.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from psrl.models.loading import check_tokenizer
from psrl.rewards import tiny
from psrl.rewards.components import imagenet_bit_processor
from psrl.rewards.loading import TINY, component_spec, load_pretrained, resolve_dtype


@runtime_checkable
class Embedder(Protocol):
    def embed(self, images: Sequence[Image.Image]) -> Tensor: ...


def _features(out) -> Tensor:
    return out if torch.is_tensor(out) else out.pooler_output  # transformers 5 returns a ModelOutput


class HFImageEmbedder:
    """A transformers vision model + image processor + a pooling rule (``pooler`` | ``cls`` | ``clip``)."""

    def __init__(self, model, processor, pool: str, *, device="cpu", dtype=None, batch_size: int = 32):
        if pool not in ("pooler", "cls", "clip"):
            raise ValueError(f"unknown pooling {pool!r}")
        self.device, self.dtype = torch.device(device), resolve_dtype(dtype, device)
        self.model, self.processor, self.pool, self.batch_size = model, processor, pool, batch_size
        self.model.to(self.device, self.dtype).eval()

    @torch.no_grad()
    def embed(self, images: Sequence[Image.Image]) -> Tensor:
        feats = []
        for s in range(0, len(images), self.batch_size):
            chunk = [im if im.mode == "RGB" else im.convert("RGB") for im in images[s:s + self.batch_size]]
            pixels = self.processor(images=chunk, return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
            if self.pool == "clip":
                f = _features(self.model.get_image_features(pixel_values=pixels))
            elif self.pool == "pooler":
                f = self.model(pixel_values=pixels).pooler_output
            else:
                f = self.model(pixel_values=pixels).last_hidden_state[:, 0]
            feats.append(F.normalize(f.float(), dim=-1).cpu())
        if not feats:
            return torch.zeros(0, 0)
        return torch.cat(feats)


def _load_dinov2(path):
    from transformers import Dinov2Model

    return Dinov2Model.from_pretrained(path)


def _load_dino_vit(path):
    from transformers import ViTModel

    return ViTModel.from_pretrained(path, add_pooling_layer=False)


def load_clip(path: str, what: str = "clip"):
    """(CLIPModel, CLIPProcessor) from a path (Pil image processor, tokenizer checked), or tiny."""
    if path == TINY:
        return tiny.tiny_clip()

    def _load(p):
        from transformers import AutoTokenizer, CLIPModel, CLIPProcessor
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        tok = AutoTokenizer.from_pretrained(p)
        check_tokenizer(tok, f"{p} ({what})")
        return CLIPModel.from_pretrained(p), CLIPProcessor(image_processor=CLIPImageProcessorPil.from_pretrained(p),
                                                           tokenizer=tok)

    return load_pretrained(what, path, _load)


# kind -> (default path, loader of real weights, tiny builder in psrl.rewards.tiny, pooling); clip loads its own way
EMBEDDERS = {
    "dinov2": ("facebook/dinov2-base", _load_dinov2, "tiny_dinov2", "pooler"),
    "dino_vit": ("facebook/dino-vits16", _load_dino_vit, "tiny_dino_vit", "cls"),
    "clip": ("openai/clip-vit-base-patch32", None, None, "clip"),
}


def build_embedder(spec: dict | str | Embedder | None, *, device="cpu", dtype=None) -> Embedder:
    """``{"kind": "dinov2"|"dino_vit"|"clip", "path": ..., "batch_size": ...}``, a kind name, or an Embedder."""
    if isinstance(spec, Embedder):
        return spec
    kind, spec = component_spec(spec, "dinov2", "embedder")
    dtype = spec.pop("dtype", dtype)
    batch_size = spec.pop("batch_size", 32)
    if kind not in EMBEDDERS:
        raise ValueError(f"unknown embedder kind {kind!r}; use one of {sorted(EMBEDDERS)}")
    default_path, loader, tiny_builder, pool = EMBEDDERS[kind]
    path = spec.pop("path", default_path)
    if spec:
        raise ValueError(f"embedder {kind!r}: unknown option(s) {sorted(spec)}")
    if loader is None:
        model, processor = load_clip(path, "clip embedder")
        proc = processor.image_processor
    elif path == TINY:
        model, proc = getattr(tiny, tiny_builder)()
    else:
        model, proc = load_pretrained(f"{kind} embedder", path, loader), imagenet_bit_processor(256, 224)
    return HFImageEmbedder(model, proc, pool, device=device, dtype=dtype, batch_size=batch_size)
