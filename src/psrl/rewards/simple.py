"""Rewards that need no model: useful on random weights, for demos, tests and sanity checks."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from psrl.data.records import Record
from psrl.rewards.base import RewardOutput


class MeanColorReward:
    """``1 - ||mean RGB of the image - target||_2 / sqrt(3)``, in [0, 1]; 1 when the image's mean colour is the
    target. A smooth, model-free signal that a tiny random-weight generator can learn within a few steps."""

    name = "mean_color"

    def __init__(self, device="cpu", target: tuple[float, float, float] | list[float] = (1.0, 0.0, 0.0)):
        if len(target) != 3 or not all(0.0 <= float(c) <= 1.0 for c in target):
            raise ValueError(f"mean_color target must be 3 values in [0, 1], got {target!r}")
        self.target = torch.tensor([float(c) for c in target])

    def __call__(self, images: Tensor, records: Sequence[Record]) -> RewardOutput:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"mean_color expects images [B, 3, H, W], got {tuple(images.shape)}")
        means = images.detach().float().clamp(0, 1).mean(dim=(2, 3)).cpu()
        dist = (means - self.target).norm(dim=1) / (3**0.5)
        scores = 1.0 - dist
        failures = ["image contains NaN" if torch.isnan(s) else None for s in scores]
        return RewardOutput(scores=scores, details={"mean_rgb": means}, failures=failures)
