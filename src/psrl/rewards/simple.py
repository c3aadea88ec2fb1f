"""Rewards that need no model: useful on random weights, for demos, tests and sanity checks."""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

import torch
from torch import Tensor

from psrl.data.records import Record
from psrl.rewards.base import RewardOutput
from psrl.images import pil_to_tensor
from psrl.rewards.images import scorable_images


class MeanColorReward:
    """``1 - ||mean RGB of the image - target||_2 / sqrt(3)``; 1 when the image's mean colour is the target. A
    smooth, model-free signal that a tiny random-weight generator can learn within a few steps.

    Args:
        device: unused (no model).
        target: the target mean colour, 3 values in [0, 1] (default red).

    Score range: [0, 1].
    NaN policy: a sample whose image has NaN pixels or breaks the shared size rule (psrl.rewards.images); nothing
        else.
    """

    name = "mean_color"

    def __init__(self, device="cpu", target: tuple[float, float, float] | list[float] = (1.0, 0.0, 0.0)):
        if len(target) != 3 or not all(0.0 <= float(c) <= 1.0 for c in target):
            raise ValueError(f"mean_color target must be 3 values in [0, 1], got {target!r}")
        self.target = torch.tensor([float(c) for c in target])

    def __call__(self, images: Tensor | Sequence, records: Sequence[Record]) -> RewardOutput:
        """``images``: ``[B, 3, H, W]`` in [0, 1], or a sequence of PIL images / ``[3, H, W]`` tensors of any
        sizes. A sample with NaN pixels or outside the shared size rule is NaN with the reason, like every reward."""
        if isinstance(images, Tensor) and (images.ndim != 4 or images.shape[1] != 3):
            raise ValueError(f"mean_color expects images [B, 3, H, W], got {tuple(images.shape)}")
        # the shared per-sample validation (NaN, size, range)
        pils, failures, _ = scorable_images(images, records, "mean_color")
        means = torch.full((len(pils), 3), float("nan"))
        for b, item in enumerate(images):
            if failures[b] is None:
                # tensors are averaged as given (no 8-bit rounding); PIL inputs as their RGB conversion
                x = item if isinstance(item, Tensor) else pil_to_tensor(pils[b])
                means[b] = x.detach().float().clamp(0, 1).mean(dim=(1, 2)).cpu()
        dist = (means - self.target).norm(dim=1) / (3**0.5)
        return RewardOutput(scores=1.0 - dist, details={"mean_rgb": means}, failures=failures)


class NullControlReward:
    """A reward that says nothing about the image: a number in [0, 1) read from a hash (BLAKE2b) of the image's
    8-bit pixels, the same for the same image and unrelated to anything a policy can learn. GRPO on it is the
    control for reward-free drift: the change a run causes by training alone (sampling noise turned into LoRA
    updates), which a real reward's effect on a held-out metric has to exceed. Its ``psrl diagnose`` verdict is
    noise by construction.

    Args:
        device: unused (no model).

    Score range: [0, 1).
    NaN policy: as :class:`MeanColorReward` (unusable images only).
    """

    name = "null_control"

    def __init__(self, device="cpu"):
        pass

    def __call__(self, images: Tensor | Sequence, records: Sequence[Record]) -> RewardOutput:
        pils, failures, _ = scorable_images(images, records, self.name)
        scores = torch.full((len(pils),), float("nan"))
        for b, im in enumerate(pils):
            if failures[b] is None:
                digest = hashlib.blake2b(np.asarray(im.convert("RGB")).tobytes(), digest_size=8).digest()
                scores[b] = int.from_bytes(digest, "big") / 2.0**64
        return RewardOutput(scores=scores, details={}, failures=failures)
