"""Text-image and aesthetic rewards on CLIP: ``clip_t``, ``pickscore``, ``aesthetic``.

* ``clip_t``: ``scale * cos(CLIP_text(prompt), CLIP_image(image))`` (DreamBench CLIP-T uses ViT-B/32, scale 1;
  Customized-GRPO's optional CLIP-T reward uses ViT-L/14 x 100). ``clamp_min`` (e.g. 0) optional.
* ``pickscore``: ``logit_scale.exp() * cos(text, image)`` with the PickScore_v1 CLIP (processor from
  ``processor_path``, the ViT-H-14 laion2B one by default); typical values 18-23.
* ``aesthetic``: the LAION-style MLP (768 -> 1024 -> 128 -> 64 -> 16 -> 1, dropouts between, no activations) on
  L2-normalised CLIP ViT-L/14 image features; ``head_path`` is the released ``.pth``/``.safetensors`` state dict
  (keys ``layers.{0,2,4,6,7}.{weight,bias}``).

``path: tiny`` builds tiny random CLIP (and head) so each runs offline. Text longer than the CLIP context is
truncated (77 tokens).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from psrl.data.records import Record
from psrl.errors import ModelLoadError
from psrl.rewards.base import RewardOutput
from psrl.rewards.components import LaionAestheticHead
from psrl.rewards.embedding import HFImageEmbedder, _features, load_clip
from psrl.rewards.images import scorable_images
from psrl.rewards.isolation import Failed, per_item
from psrl.rewards.loading import TINY, load_pretrained, resolve_dtype
from psrl.rewards.tiny import tiny_aesthetic_head, tiny_clip


def load_state_dict_file(path: str, what: str) -> dict:
    def _load(p):
        if p.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(p)
        sd = torch.load(p, map_location="cpu", weights_only=True)
        return sd.get("state_dict", sd) if isinstance(sd, dict) else sd

    return load_pretrained(what, path, _load)


class _ClipRewardBase:
    def __init__(self, path: str, device, dtype, batch_size: int, what: str, processor_path: str | None = None):
        self.device, self.dtype = torch.device(device), resolve_dtype(dtype, device)
        if processor_path and path != TINY:  # the model and its processor from two repositories (PickScore)
            from transformers import CLIPModel

            _, self.processor = load_clip(processor_path, what + " processor")
            self.model = load_pretrained(what, path, CLIPModel.from_pretrained)
        else:
            self.model, self.processor = load_clip(path, what)
        self.model.to(self.device, self.dtype).eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def _embed(self, pils, texts) -> tuple[Tensor, Tensor]:
        imgs, txts = [], []
        for s in range(0, len(pils), self.batch_size):
            px = self.processor(images=pils[s:s + self.batch_size], return_tensors="pt")["pixel_values"]
            imgs.append(_features(self.model.get_image_features(pixel_values=px.to(self.device, self.dtype))).float())
            tok = self.processor.tokenizer(list(texts[s:s + self.batch_size]), padding=True, truncation=True,
                                           return_tensors="pt")
            tok = {k: v.to(self.device) for k, v in tok.items()}
            txts.append(_features(self.model.get_text_features(**tok)).float())
        return F.normalize(torch.cat(imgs), dim=-1).cpu(), F.normalize(torch.cat(txts), dim=-1).cpu()

    def _run(self, images, records, score_fn, name) -> RewardOutput:
        pils, failures, idx = scorable_images(images, records, name)
        scores = torch.full((len(records),), float("nan"))
        cos = torch.full((len(records),), float("nan"))

        def cosines(bs):
            img, txt = self._embed([pils[b] for b in bs], [records[b].prompt for b in bs])
            return (img * txt).sum(-1)

        for b, c in zip(idx, per_item(cosines, idx, f"{name} model")):
            if isinstance(c, Failed):
                failures[b] = c.reason
            else:
                cos[b] = c
        ok = [b for b in idx if not failures[b]]
        if ok:
            scores[ok] = score_fn(cos[ok])
        return RewardOutput(scores=scores, failures=failures, details={"cosine": cos})


class ClipTReward(_ClipRewardBase):
    """CLIP-T text-image alignment: ``scale * cos(CLIP_text(prompt), CLIP_image(image))`` (DreamBench CLIP-T,
    arXiv 2208.12242: ViT-B/32, scale 1).

    Args:
        device: torch device of the model.
        path: the CLIP model (hub id or folder), or ``tiny``.
        scale: multiplies the cosine (Customized-GRPO uses 100).
        clamp_min: lower clamp of the scaled score (none by default).
        dtype: dtype of the weights.
        batch_size: images per forward pass.

    Score range: [-scale, scale] (a scaled cosine), or [clamp_min, scale] with clamp_min.
    NaN policy: a sample whose image has NaN pixels or breaks the shared size rule (psrl.rewards.images); a model
        error on that sample. Prompts longer than 77 tokens are truncated, not refused.
    """

    name = "clip_t"

    def __init__(self, device="cpu", *, path: str = "openai/clip-vit-base-patch32", scale: float = 1.0,
                 clamp_min: float | None = None, dtype=None, batch_size: int = 32):
        super().__init__(path, device, dtype, batch_size, "clip_t model")
        self.scale, self.clamp_min = scale, clamp_min

    def __call__(self, images: Tensor | Sequence, records: Sequence[Record]) -> RewardOutput:
        def fn(c):
            c = c * self.scale
            return c.clamp(min=self.clamp_min) if self.clamp_min is not None else c

        return self._run(images, records, fn, self.name)


class PickScoreReward(_ClipRewardBase):
    """PickScore (arXiv 2305.01569): ``logit_scale.exp() * cos(text, image)`` with the PickScore_v1 CLIP.

    Args:
        device: torch device of the model.
        path: the PickScore model (hub id or folder), or ``tiny``.
        processor_path: the CLIP processor (the ViT-H-14 laion2B one, as PickScore).
        dtype: dtype of the weights.
        batch_size: images per forward pass.

    Score range: within +-logit_scale.exp() of the model (a scaled cosine); typically 18-23.
    NaN policy: a sample whose image has NaN pixels or breaks the shared size rule (psrl.rewards.images); a model
        error on that sample. Prompts longer than 77 tokens are truncated.
    """

    name = "pickscore"

    def __init__(self, device="cpu", *, path: str = "yuvalkirstain/PickScore_v1",
                 processor_path: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", dtype=None, batch_size: int = 32):
        super().__init__(path, device, dtype, batch_size, "pickscore model", processor_path=processor_path)

    def __call__(self, images: Tensor | Sequence, records: Sequence[Record]) -> RewardOutput:
        scale = float(self.model.logit_scale.detach().exp())
        return self._run(images, records, lambda c: c * scale, self.name)


class AestheticReward:
    """LAION aesthetic predictor: an MLP on L2-normalised CLIP ViT-L/14 image features (the prompt is not used).

    Args:
        device: torch device of the model.
        path: only ``tiny`` (a tiny random CLIP and head, offline).
        clip_path: the CLIP model (hub id or folder).
        head_path: the released MLP head (``.pth`` or ``.safetensors`` state dict); required for real weights.
        dtype: dtype of the weights.
        batch_size: images per forward pass.

    Score range: unbounded real (a linear head), trained on LAION's 1-10 aesthetic ratings.
    NaN policy: a sample whose image has NaN pixels or breaks the shared size rule (psrl.rewards.images); a model
        error on that sample.
    """

    name = "aesthetic"

    def __init__(self, device="cpu", *, path: str | None = None, clip_path: str = "openai/clip-vit-large-patch14",
                 head_path: str | None = None, dtype=None, batch_size: int = 32):
        self.device = torch.device(device)
        if path == TINY or (clip_path == TINY and head_path in (None, TINY)):
            model, processor = tiny_clip()
            self.head = tiny_aesthetic_head(model.config.projection_dim)
        else:
            if path is not None:
                raise ValueError("aesthetic: 'path' may only be 'tiny'; give clip_path and head_path for real weights")
            if not head_path:
                raise ModelLoadError("aesthetic: head_path is required (the LAION aesthetic MLP state dict)")
            model, processor = load_clip(clip_path, "aesthetic clip")
            sd = load_state_dict_file(head_path, "aesthetic head")
            dim = model.config.projection_dim
            try:
                hidden = tuple(int(sd[f"layers.{i}.weight"].shape[0]) for i in (0, 2, 4, 6))
                if int(sd["layers.0.weight"].shape[1]) != dim:
                    raise RuntimeError(f"head input is {int(sd['layers.0.weight'].shape[1])}-d")
                self.head = LaionAestheticHead(dim, hidden)
                self.head.load_state_dict(sd)
            except (KeyError, RuntimeError) as e:
                raise ModelLoadError(f"aesthetic head {head_path!r} is not a LAION MLP for a {dim}-d CLIP: "
                                     f"{type(e).__name__}: {e}") from e
        self.head.to(self.device).eval()
        self.embedder = HFImageEmbedder(model, processor.image_processor, "clip", device=device, dtype=dtype,
                                        batch_size=batch_size)

    @torch.no_grad()
    def __call__(self, images: Tensor | Sequence, records: Sequence[Record]) -> RewardOutput:
        pils, failures, idx = scorable_images(images, records, "aesthetic")
        scores = torch.full((len(records),), float("nan"))
        feats = per_item(lambda bs: self.embedder.embed([pils[b] for b in bs]), idx, "aesthetic clip model")
        for b, f in zip(idx, feats):
            if isinstance(f, Failed):
                failures[b] = f.reason
        ok = [(b, f) for b, f in zip(idx, feats) if not isinstance(f, Failed)]
        if ok:
            x = torch.stack([f for _, f in ok]).to(self.device)
            scores[[b for b, _ in ok]] = self.head(x).squeeze(-1).float().cpu()
        return RewardOutput(scores=scores, failures=failures)
