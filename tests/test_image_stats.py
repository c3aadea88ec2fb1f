"""The monitor's image and group statistics (psrl.rl.image_stats) against closed forms and peers: PIL's luma, colorsys'
saturation, numpy's histogram with scipy's entropy, scipy.ndimage's Sobel, scipy's pdist."""
import colorsys
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from scipy.spatial.distance import pdist
from scipy.stats import entropy

from psrl.rl.image_stats import (
    IMAGE_STATS,
    bright_fraction,
    color_entropy,
    dark_fraction,
    edge_density,
    gradient_magnitude,
    image_statistics,
    luminance,
    nan_mean,
    saturation,
    within_group_diversity,
)

pytestmark = pytest.mark.unit


def _images(b=3, h=12, w=10, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_luminance_is_pils_convert_L():
    x = _images()
    for i in range(x.shape[0]):
        arr = (x[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        pil = np.asarray(Image.fromarray(arr).convert("L"), dtype=np.float64) / 255
        ours = luminance(torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255)[0].numpy()
        assert np.abs(ours - pil).max() <= 1 / 255 + 1e-6  # PIL rounds to 8 bits


def test_color_entropy_matches_numpy_histogram_and_scipy_entropy():
    x = _images(b=4, h=9, w=7)
    x[1] = 0.3  # one flat colour: entropy 0
    x[2, :, :, :3] = 1.0  # a value of exactly 1 falls in the last cell
    bins = 4
    ours = color_entropy(x, bins=bins)
    for i in range(4):
        pixels = x[i].permute(1, 2, 0).reshape(-1, 3).numpy()
        counts, _ = np.histogramdd(pixels, bins=[np.linspace(0, 1, bins + 1)] * 3)
        assert float(ours[i]) == pytest.approx(entropy(counts.ravel(), base=2), abs=1e-5)
    assert float(ours[1]) == 0.0
    # every cell equally often: the maximum, 3 log2(bins)
    levels = (torch.arange(bins) + 0.5) / bins
    grid = torch.stack(torch.meshgrid(levels, levels, levels, indexing="ij")).reshape(3, 1, -1)
    assert float(color_entropy(grid[None], bins=bins)[0]) == pytest.approx(3 * math.log2(bins))


def test_saturation_is_colorsys_hsv_mean():
    x = _images(b=2)
    x[1, :, :2] = 0.0  # black pixels: saturation 0, not NaN
    ours = saturation(x)
    for i in range(2):
        px = x[i].permute(1, 2, 0).reshape(-1, 3).double().numpy()
        expected = np.mean([colorsys.rgb_to_hsv(*p)[1] for p in px])
        assert float(ours[i]) == pytest.approx(expected, abs=1e-6)
    grey = torch.full((1, 3, 4, 4), 0.5)
    pure = torch.zeros(1, 3, 4, 4)
    pure[:, 2] = 1.0
    assert float(saturation(grey)[0]) == 0.0 and float(saturation(pure)[0]) == 1.0


def test_dark_and_bright_fractions_count_luminance_tails():
    x = torch.full((1, 3, 4, 5), 0.5)
    x[0, :, 0, :] = 0.0  # 5 black pixels
    x[0, :, 1, :2] = 1.0  # 2 white pixels
    x[0, :, 2, 0] = torch.tensor([1.0, 0.0, 0.0])  # pure red: luma 0.299, neither tail
    assert float(dark_fraction(x)[0]) == pytest.approx(5 / 20)
    assert float(bright_fraction(x)[0]) == pytest.approx(2 / 20)
    assert float(dark_fraction(x, threshold=0.3)[0]) == pytest.approx(6 / 20)  # red's 0.299 is now dark


def test_gradient_magnitude_and_edge_density_match_scipy_sobel():
    x = _images(b=2, h=11, w=13, seed=3)
    mag = gradient_magnitude(x)
    for i in range(2):
        lum = luminance(x)[i].double().numpy()
        gy = ndimage.sobel(lum, axis=0, mode="nearest")
        gx = ndimage.sobel(lum, axis=1, mode="nearest")
        expected = np.hypot(gx, gy) / 8
        assert np.abs(mag[i].numpy() - expected).max() < 1e-5
        assert float(edge_density(x, threshold=0.2)[i]) == pytest.approx(float((expected > 0.2).mean()))
    # a ramp rising s per pixel reads s inside the image; a flat image has no edge
    s = 0.05
    ramp = (torch.arange(16).float() * s).expand(3, 8, 16)[None]
    assert torch.allclose(gradient_magnitude(ramp)[0, :, 1:-1], torch.tensor(s), atol=1e-6)
    assert float(edge_density(torch.full((1, 3, 8, 8), 0.4))[0]) == 0.0
    step = torch.zeros(1, 3, 8, 8)
    step[..., 4:] = 1.0  # a unit step: the two columns beside it read 0.5
    assert float(edge_density(step, threshold=0.4)[0]) == pytest.approx(2 / 8)


def test_within_group_diversity_is_mean_pairwise_cosine_distance():
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(9, 5, generator=g)
    ids = torch.tensor([2, 2, 2, 0, 0, 7, 5, 5, 5])
    emb[8] = float("nan")  # an unusable embedding leaves its group's pairs
    groups, div = within_group_diversity(emb, ids)
    assert groups.tolist() == [0, 2, 5, 7]
    assert float(div[0]) == pytest.approx(pdist(emb[3:5].numpy(), "cosine").mean(), abs=1e-6)
    assert float(div[1]) == pytest.approx(pdist(emb[0:3].numpy(), "cosine").mean(), abs=1e-6)
    assert float(div[2]) == pytest.approx(pdist(emb[6:8].numpy(), "cosine").mean(), abs=1e-6)
    assert math.isnan(float(div[3]))  # one member: no pair
    same = torch.ones(4, 3)
    assert float(within_group_diversity(same, [0, 0, 1, 1])[1].max()) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        within_group_diversity(emb, ids[:-1])


def test_a_bad_sample_is_nan_with_its_reason_and_a_bad_batch_raises():
    x = _images(b=3)
    x[1, 0, 0, 0] = float("nan")
    stats, failures = image_statistics(x)
    assert set(stats) == set(IMAGE_STATS)
    assert failures == [None, "image contains NaN or inf", None]
    for name, v in stats.items():
        assert v.shape == (3,) and v.dtype == torch.float32, name
        assert math.isnan(float(v[1])) and torch.isfinite(v[[0, 2]]).all(), name
        assert nan_mean(v) == pytest.approx(float(v[[0, 2]].double().mean()))
    assert math.isnan(nan_mean(torch.tensor([float("nan")])))
    # decoder overshoot is clamped as the rewards do; a [0, 255] or [-1, 1] batch is a bug
    assert float(bright_fraction(torch.full((1, 3, 4, 4), 1.01))[0]) == 1.0
    with pytest.raises(ValueError, match="must be in \\[0, 1\\]"):
        saturation(x * 255)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        color_entropy(torch.rand(3, 4, 4))
    with pytest.raises(ValueError, match="unknown image statistic"):
        image_statistics(x, ["sharpness"])
