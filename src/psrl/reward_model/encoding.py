"""A pairwise example -> the token ids, image tensors and labels a Qwen-VL judge is trained on.

The prompt is built exactly as psrl's judge builds it when it scores (:class:`psrl.rewards.vlm.transports.
LocalTransport`): one user turn holding the two images then the text, through the processor's own chat template with
the generation prompt; the reply follows as the assistant turn the same template writes (for Qwen:
``Yes. ...<|im_end|>\\n``). Only the reply's tokens are supervised (LLaMA-Factory's ``train_on_prompt: false``), so
its first supervised token is the answer the judge's P(Yes) reads.

Images are shrunk to at most ``image_max_pixels`` (and grown to at least ``image_min_pixels``) keeping the aspect,
LLaMA-Factory's ``_preprocess_image`` (X-GenGroup/PaCo-RL@08caac6
``PaCo-Reward/LLaMA-Factory/src/llamafactory/data/mm_plugin.py``), before the processor applies its own limits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image

from psrl.reward_model.loss import IGNORE_INDEX


def fit_pixels(width: int, height: int, max_pixels: int | None, min_pixels: int | None) -> tuple[int, int]:
    """The size LLaMA-Factory resizes a ``width x height`` image to: scaled by ``sqrt(max / (w h))`` when larger
    than ``max_pixels``, by ``sqrt(min / (w h))`` when smaller than ``min_pixels``, each side floored."""
    if max_pixels and width * height > max_pixels:
        f = math.sqrt(max_pixels / (width * height))
        width, height = int(width * f), int(height * f)
    if min_pixels and width * height < min_pixels:
        f = math.sqrt(min_pixels / (width * height))
        width, height = int(width * f), int(height * f)
    return width, height


def prepare_image(img: Image.Image, max_pixels: int | None, min_pixels: int | None) -> Image.Image:
    """``img`` resized by :func:`fit_pixels` (bicubic, PIL's default for ``resize``)."""
    size = fit_pixels(img.width, img.height, max_pixels, min_pixels)
    return img if size == img.size else img.resize(size, Image.BICUBIC)


def chat_texts(processor, prompt: str, response: str) -> tuple[str, str]:
    """``(prompt text ending with the generation prompt, the assistant turn's text)`` from the processor's chat
    template; their concatenation is the template's rendering of the whole conversation.

    Raises:
        ValueError: the template does not render the reply right after its generation prompt.
    """
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": prompt}]}]
    prompt_text = processor.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
    full = processor.apply_chat_template(turn + [{"role": "assistant", "content": response}], tokenize=False)
    if not full.startswith(prompt_text) or not full[len(prompt_text):].startswith(response):
        raise ValueError("the processor's chat template does not write the assistant reply right after its "
                         "generation prompt; this model's template is not supported")
    return prompt_text, full[len(prompt_text):]


def image_token_count(processor, width: int, height: int) -> int:
    """Tokens the processor expands one ``width x height`` image into (after its own resizing)."""
    ip = processor.image_processor
    return ip.get_number_of_image_patches(height, width, {}) // (ip.merge_size ** 2)


def sequence_length(processor, prompt_text: str, target_text: str, sizes) -> tuple[int, int]:
    """``(total tokens, supervised tokens)`` of an example whose (already prepared) images have ``sizes``, without
    running the image processor: each image placeholder counts as the tokens it expands into."""
    tok = processor.tokenizer
    n_prompt = len(tok(prompt_text, add_special_tokens=False)["input_ids"])
    n_target = len(tok(target_text, add_special_tokens=False)["input_ids"])
    extra = sum(image_token_count(processor, w, h) - 1 for w, h in sizes)
    return n_prompt + extra + n_target, n_target


@dataclass
class Encoded:
    """One batch: ``inputs`` for the model (``input_ids`` / ``attention_mask`` ``[B, T]``, ``pixel_values``,
    ``image_grid_thw``, ...), ``labels [B, T]`` (-100 off the reply), and the window ``[lo, hi]`` of positions
    whose logits the loss needs (``lo`` = one before the earliest reply token, ``hi`` = the last reply token)."""

    inputs: dict
    labels: torch.Tensor
    lo: int
    hi: int

    def to(self, device, dtype=None) -> "Encoded":
        moved = {k: (v.to(device, dtype) if v.is_floating_point() and dtype is not None else v.to(device))
                 for k, v in self.inputs.items()}
        return Encoded(moved, self.labels.to(device), self.lo, self.hi)


def encode_batch(processor, items) -> Encoded:
    """``items``: ``[(images, prompt_text, target_text)]`` (images already prepared) -> :class:`Encoded`, right
    padded. Raises RuntimeError when the processor's tokens of a reply differ from the reply tokenized alone (a
    tokenizer that merges across the prompt/reply boundary: the labels would be wrong)."""
    tok = processor.tokenizer
    texts = [p + t for _, p, t in items]
    images = [im for ims, _, _ in items for im in ims]
    if tok.padding_side != "right":
        tok.padding_side = "right"
    inputs = processor(text=texts, images=images or None, padding=True, return_tensors="pt")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    labels = torch.full_like(ids, IGNORE_INDEX)
    starts, ends = [], []
    for i, (_, _, target) in enumerate(items):
        want = tok(target, add_special_tokens=False)["input_ids"]
        end = int(mask[i].sum())
        start = end - len(want)
        if ids[i, start:end].tolist() != want:
            raise RuntimeError(f"batch row {i}: the processor's tokens of the reply differ from the reply tokenized "
                               "alone; labels cannot be placed")
        labels[i, start:end] = ids[i, start:end]
        starts.append(start)
        ends.append(end)
    return Encoded(dict(inputs), labels, lo=max(min(starts) - 1, 0), hi=max(ends) - 1)


__all__ = ["Encoded", "chat_texts", "encode_batch", "fit_pixels", "image_token_count", "prepare_image",
           "sequence_length"]
