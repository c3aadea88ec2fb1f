"""Image and group statistics a reward-hacking monitor tracks at every evaluation (issue #17 section 1): colour
entropy, saturation, dark- and bright-pixel fraction, edge density, and within-group diversity. Pure tensor functions,
no model: the monitor computes them on the eval images (and on embeddings it gets from an embedder) and watches them
drift. Over-saturated images, crushed blacks (a darkness or OCR reward emptying the background), blown highlights,
grid or noise artefacts (edge density) and mode collapse (diversity) are the hacks the Flow-GRPO trackers report.

Conventions shared by every image statistic:

* ``images``: ``[B, 3, H, W]`` RGB in ``[0, 1]`` (what policies produce), any float dtype; computed in float32.
  A little decoder overshoot (``[-0.02, 1.02]``) is clamped, as the rewards do (:mod:`psrl.rewards.images`);
  anything further out is a caller bug and raises ``ValueError``, as does a wrong shape.
* A sample with a NaN or inf pixel gets NaN for that sample alone; :func:`image_statistics` says why.
* Luminance is ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B``, the weights of PIL's ``convert("L")``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's Image.convert("L")
_OVERSHOOT = 0.02  # decoder overshoot clamped silently; the rewards' tolerance (psrl.rewards.images)


def _checked(images: Tensor, what: str = "images") -> tuple[Tensor, Tensor]:
    """``(images float32 clamped to [0, 1] with non-finite samples zeroed, finite [B] bool)``."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{what} must be a tensor [B, 3, H, W] (RGB), got {shape}")
    x = images.detach().float()
    finite = torch.isfinite(x).flatten(1).all(dim=1)
    if bool(finite.any()):
        ok = x[finite]
        lo, hi = float(ok.min()), float(ok.max())
        if lo < -_OVERSHOOT or hi > 1 + _OVERSHOOT:
            raise ValueError(f"{what} values must be in [0, 1], got range [{lo:.3f}, {hi:.3f}]")
    x = torch.where(finite[:, None, None, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x.clamp(0.0, 1.0), finite


def _nan_where_invalid(values: Tensor, finite: Tensor) -> Tensor:
    return torch.where(finite, values, torch.full_like(values, float("nan")))


def luminance(images: Tensor) -> Tensor:
    """BT.601 luma ``0.299 R + 0.587 G + 0.114 B``: ``[B, H, W]`` float32 in ``[0, 1]`` (NaN for a sample with a
    non-finite pixel). Raises ``ValueError`` on a wrong shape or range."""
    x, finite = _checked(images)
    w = torch.tensor(LUMA_WEIGHTS, dtype=x.dtype, device=x.device)
    lum = torch.einsum("bchw,c->bhw", x, w)
    return torch.where(finite[:, None, None], lum, torch.full_like(lum, float("nan")))


def color_entropy(images: Tensor, bins: int = 8) -> Tensor:
    """Shannon entropy in bits of each image's joint RGB histogram with ``bins`` levels per channel (``bins**3``
    cells; a channel value ``v`` falls in cell ``min(floor(v * bins), bins - 1)``): ``[B]`` float32 in
    ``[0, 3 log2(bins)]``. 0 for a flat colour; it falls when a policy paints everything one hue.

    Raises:
        ValueError: a wrong shape or range, or ``bins < 2``.
    """
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    x, finite = _checked(images)
    b = x.shape[0]
    level = (x * bins).floor().clamp(max=bins - 1).long()  # [B, 3, H, W]
    cell = (level[:, 0] * bins + level[:, 1]) * bins + level[:, 2]  # [B, H, W]
    offsets = torch.arange(b, device=x.device)[:, None] * bins**3
    counts = torch.bincount((cell.flatten(1) + offsets).flatten(), minlength=b * bins**3).view(b, bins**3)
    p = counts.float() / counts.sum(dim=1, keepdim=True)
    terms = torch.where(p > 0, -p * torch.log2(p.clamp_min(1e-30)), torch.zeros_like(p))
    return _nan_where_invalid(terms.sum(dim=1), finite)


def saturation(images: Tensor) -> Tensor:
    """Mean HSV saturation ``(max(R,G,B) - min(R,G,B)) / max(R,G,B)`` (0 where ``max`` is 0, as
    ``colorsys.rgb_to_hsv``): ``[B]`` float32 in ``[0, 1]``. It climbs when a policy over-saturates.

    Raises:
        ValueError: a wrong shape or range.
    """
    x, finite = _checked(images)
    hi, lo = x.max(dim=1).values, x.min(dim=1).values
    s = torch.where(hi > 0, (hi - lo) / hi.clamp_min(1e-12), torch.zeros_like(hi))
    return _nan_where_invalid(s.flatten(1).mean(dim=1), finite)


def dark_fraction(images: Tensor, threshold: float = 0.1) -> Tensor:
    """Share of pixels whose luminance is below ``threshold`` (0.1 ~ 25/255 by default: crushed shadows where
    detail is gone): ``[B]`` float32 in ``[0, 1]``. It climbs under a darkness hack or a blanked background.

    Raises:
        ValueError: a wrong shape or range.
    """
    lum = luminance(images)
    return _nan_where_invalid((lum < threshold).float().flatten(1).mean(dim=1), ~lum.flatten(1)[:, 0].isnan())


def bright_fraction(images: Tensor, threshold: float = 0.9) -> Tensor:
    """Share of pixels whose luminance is above ``threshold`` (0.9 ~ 230/255 by default: blown highlights):
    ``[B]`` float32 in ``[0, 1]``.

    Raises:
        ValueError: a wrong shape or range.
    """
    lum = luminance(images)
    return _nan_where_invalid((lum > threshold).float().flatten(1).mean(dim=1), ~lum.flatten(1)[:, 0].isnan())


_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


def gradient_magnitude(images: Tensor) -> Tensor:
    """Sobel gradient magnitude of the luminance divided by 8, so a ramp rising ``s`` per pixel reads ``s`` (a unit
    step reads 0.5 on the two pixels beside it); borders replicate the edge pixels (``scipy.ndimage.sobel`` with
    ``mode="nearest"``, summed in quadrature): ``[B, H, W]`` float32 in ``[0, sqrt(2)]``."""
    lum = luminance(images)[:, None]
    kx = torch.tensor(_SOBEL_X, dtype=lum.dtype, device=lum.device)
    kernels = torch.stack([kx, kx.T])[:, None]  # [2, 1, 3, 3]: d/dx (columns), d/dy (rows)
    padded = torch.nn.functional.pad(lum, (1, 1, 1, 1), mode="replicate")
    g = torch.nn.functional.conv2d(padded, kernels) / 8.0  # cross-correlation, as scipy's correlate
    return g.pow(2).sum(dim=1).sqrt()


def edge_density(images: Tensor, threshold: float = 0.1) -> Tensor:
    """Share of pixels whose luminance gradient (:func:`gradient_magnitude`, luminance per pixel) exceeds
    ``threshold``: ``[B]`` float32 in ``[0, 1]``. Grid, noise and high-frequency artefacts push it up; a blanked
    image pulls it to 0. Resolution-dependent (a per-pixel slope): compare a run with itself, not across sizes.

    Raises:
        ValueError: a wrong shape or range.
    """
    mag = gradient_magnitude(images)
    return _nan_where_invalid((mag > threshold).float().flatten(1).mean(dim=1), ~mag.flatten(1)[:, 0].isnan())


def within_group_diversity(embeddings: Tensor, group_ids: Tensor | Sequence[int]) -> tuple[Tensor, Tensor]:
    """Mean pairwise cosine distance ``1 - cos(e_i, e_j)`` over the pairs ``i < j`` of each group's embeddings (DINO
    or CLIP image embeddings of the group's images): how different the samples of one prompt are. It collapses
    toward 0 when the policy gives one image whatever the noise.

    Args:
        embeddings (`Tensor` of shape `[N, D]`): one embedding per sample, any float dtype (computed in float64).
        group_ids (`Tensor` or sequence of shape `[N]`): the group of each sample.

    Returns:
        ``(groups [G] int64 ascending, diversity [G] float32 in [0, 2])``; NaN for a group with fewer than two
        samples with a finite, non-zero embedding (no pair to compare).

    Raises:
        ValueError: ``embeddings`` is not 2-D or its rows do not match ``group_ids``.
    """
    gid = torch.as_tensor(group_ids).long().cpu()
    if embeddings.ndim != 2 or gid.ndim != 1 or embeddings.shape[0] != gid.shape[0]:
        raise ValueError(f"embeddings must be [N, D] with group_ids [N], got {tuple(embeddings.shape)} and "
                         f"{tuple(gid.shape)}")
    e = embeddings.detach().double().cpu()
    norm = e.norm(dim=1)
    usable = torch.isfinite(e).all(dim=1) & (norm > 0)
    unit = torch.where(usable[:, None], e / norm.clamp_min(1e-300)[:, None], torch.zeros_like(e))
    groups = torch.unique(gid)
    out = torch.full((len(groups),), float("nan"))
    for k, g in enumerate(groups):
        u = unit[(gid == g) & usable]
        n = u.shape[0]
        if n >= 2:
            sim = u @ u.T
            pair_sim = (sim.sum() - sim.diagonal().sum()) / (n * (n - 1))
            out[k] = float(1.0 - pair_sim)
    return groups, out


#: name -> ``fn(images [B, 3, H, W]) -> [B]``: every per-image statistic at its default threshold, the set a monitor
#: logs (``stats/<name>``).
IMAGE_STATS: dict[str, Callable[[Tensor], Tensor]] = {
    "color_entropy": color_entropy,
    "saturation": saturation,
    "dark_fraction": dark_fraction,
    "bright_fraction": bright_fraction,
    "edge_density": edge_density,
}


def image_statistics(images: Tensor, names: Sequence[str] | None = None) -> tuple[dict[str, Tensor], list[str | None]]:
    """Every statistic of :data:`IMAGE_STATS` (or those ``names``) on one batch.

    Returns:
        ``({name: [B] float32}, failures)``: ``failures[i]`` is ``None`` or why sample ``i`` is NaN in every
        statistic (a NaN or inf pixel).

    Raises:
        ValueError: a wrong shape or range, or an unknown name (the message lists the known ones).
    """
    names = list(IMAGE_STATS) if names is None else list(names)
    unknown = [n for n in names if n not in IMAGE_STATS]
    if unknown:
        raise ValueError(f"unknown image statistic(s) {unknown}; known: {', '.join(IMAGE_STATS)}")
    _, finite = _checked(images)
    failures = [None if bool(ok) else "image contains NaN or inf" for ok in finite]
    return {n: IMAGE_STATS[n](images) for n in names}, failures


def nan_mean(values: Tensor) -> float:
    """Mean of the finite entries (NaN when there are none): how a monitor reduces a statistic over a batch."""
    return nan_mean_std(values.double())[0]


def nan_mean_std(values: Tensor) -> tuple[float, float]:
    """Mean and population std of the finite entries, in the values' dtype; ``(nan, nan)`` when there are none."""
    v = values.detach().flatten()
    v = v[torch.isfinite(v)]
    return (float(v.mean()), float(v.std(unbiased=False))) if v.numel() else (math.nan, math.nan)


__all__ = ["IMAGE_STATS", "LUMA_WEIGHTS", "bright_fraction", "color_entropy", "dark_fraction", "edge_density",
           "gradient_magnitude", "image_statistics", "luminance", "nan_mean", "nan_mean_std", "saturation",
           "within_group_diversity"]
