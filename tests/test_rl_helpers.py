"""The small shared helpers of psrl.rl: the duration format of the ETA and of ``psrl diagnose``, the finite
mean/std of reward metrics (numpy as the oracle) and the training micro-batches of a step's rollouts."""
import math

import numpy as np
import pytest
import torch

from psrl.rl.base_trainer import format_duration
from psrl.rl.grpo_trainer import micro_batches
from psrl.rl.image_stats import nan_mean, nan_mean_std


@pytest.mark.unit
def test_format_duration_rounds_clamps_and_names_the_unknown():
    assert format_duration(59.4) == "0:59"
    assert format_duration(6.5 * 1000) == "1:48:20"
    assert format_duration(-3.0) == "0:00"  # an overshot estimate is not negative
    assert format_duration(math.inf) == "?" and format_duration(math.nan) == "?"


@pytest.mark.unit
def test_nan_mean_std_skips_unscorable_values_like_numpy():
    x = torch.tensor([0.5, float("nan"), 1.5, float("inf"), 4.0])
    ok = np.array([0.5, 1.5, 4.0], dtype=np.float32)
    mean, std = nan_mean_std(x)
    assert mean == pytest.approx(float(ok.mean())) and std == pytest.approx(float(ok.std()))  # population std
    assert nan_mean(x) == pytest.approx(float(ok.mean()))
    assert all(math.isnan(v) for v in nan_mean_std(torch.tensor([float("nan")])))


class _Rollout:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


@pytest.mark.unit
def test_micro_batches_cover_every_row_once_and_never_span_rollouts():
    batches = micro_batches([_Rollout(5), _Rollout(2)], 2)
    assert batches == [(0, 0, [0, 1]), (0, 0, [2, 3]), (0, 0, [4]), (1, 5, [0, 1])]
    flat = [offset + row for _, offset, rows in batches for row in rows]
    assert flat == list(range(7))
