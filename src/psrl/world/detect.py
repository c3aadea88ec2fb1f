"""Finding pocket-world subjects in an image from the world's known rendering: no learned detector.

The renderer (:mod:`psrl.world.render`) draws saturated bodies and near-black textures on a pale background, and a
mid-grey shadow under a jumping subject. So a subject is a connected blob of saturated or near-black pixels, and
each of its attributes can be read off the pixels:

- colour: every saturated pixel votes for the nearest palette colour after its chroma is normalised
  (``(rgb - min) / (max - min)``, which blending with the near-black texture leaves unchanged);
- shape: the blob's filled silhouette against each unit shape stretched into the blob's box, by IoU;
- texture: the share of near-black pixels inside the silhouette (solid when small), then stripes versus dots by
  how much the dark mask stays dark when shifted along the stripe direction (x+1, y-1) versus across it (x+1, y+1);
- shadow: shadow-grey pixels in the band under the box.

Images are ``uint8`` arrays ``[H, W, 3]``; boxes are ``(x0, y0, x1, y1)`` pixels with x1/y1 exclusive, as
:func:`psrl.world.render.render_scene` returns them. Thresholds are in 0-255 units or fractions, scaled with the
image side where they count pixels (the world is drawn at 64x64).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from psrl.world.render import coverage, inside_shape
from psrl.world.subjects import BACKGROUNDS, COLOURS, SHAPES, TEXTURE_RGB

BODY_SATURATION = 0.45  # (max - min) / max above this is a subject's body (backgrounds are <= 0.25)
BODY_MIN_VALUE = 60.0  # ... and brighter than this
DARK_VALUE = 80.0  # max channel below this is the near-black texture
SHADOW_SATURATION = 0.15
SHADOW_VALUE = (80.0, 185.0)  # shadow grey and its blends with the background; backgrounds are brighter
MIN_AREA_64 = 12  # pixels a blob needs at 64x64 to count as a subject
SOLID_DARKNESS = 0.06  # a silhouette whose interior is on average less darkened than this is solid
STRIPE_ANISOTROPY = 0.3  # stripes: darkness autocorrelation along minus across the stripe direction above this


@dataclass(frozen=True)
class Detection:
    """One blob read as a subject: its box, pixel area, attributes and whether a shadow lies under it.
    ``shape_iou`` is the IoU of each shape's template with the silhouette (the shape is the best)."""

    box: tuple[int, int, int, int]
    area: int
    colour: str
    shape: str
    texture: str
    shadow: bool
    shape_iou: dict

    def matches(self, subject) -> float:
        """Share of ``subject``'s three attributes (shape, colour, texture) this detection has: 0, 1/3, 2/3 or 1."""
        same = (self.shape == subject.shape, self.colour == subject.colour, self.texture == subject.texture)
        return sum(same) / 3


_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)
_PALETTE_CHROMA = (_PALETTE - _PALETTE.min(1, keepdims=True)) / np.ptp(_PALETTE, axis=1, keepdims=True)


@lru_cache(maxsize=None)
def unit_moments(shape: str) -> tuple[float, float]:
    """``(area, centroid v)`` of the unit ``shape`` (radius 1), measured on a 512 x 512 grid; every shape is
    symmetric about v's axis, so its centroid u is 0."""
    g = (np.arange(512) + 0.5) / 256 - 1.0
    inside = inside_shape(shape, g[None, :], g[:, None])
    return float(inside.mean() * 4.0), float((inside * g[:, None]).sum() / inside.sum())


def fit_template(shape: str, alpha: np.ndarray) -> np.ndarray:
    """The coverage map (float, like ``alpha``) of ``shape`` drawn where ``alpha`` (a blob's subject share per
    pixel, ``[h, w]``) puts it: radius from the blob's area, centre from its centroid (moments, so a box's pixel
    quantisation never shifts the template)."""
    area, cv = unit_moments(shape)
    mass = float(alpha.sum())
    r = max(np.sqrt(mass / area), 0.5)
    ys, xs = np.indices(alpha.shape)
    cx = float(((xs + 0.5) * alpha).sum() / mass)
    cy = float(((ys + 0.5) * alpha).sum() / mass) - cv * r
    out = np.zeros_like(alpha, dtype=np.float32)
    # draw on a canvas large enough for any centre, then cut the blob's window
    pad = int(np.ceil(r)) + 2
    covs, (x0, y0) = coverage(cx + pad, cy + pad, r, max(alpha.shape) + 2 * pad,
                              lambda u, v: inside_shape(shape, u, v))
    if covs:
        big = np.zeros((max(alpha.shape) + 2 * pad,) * 2, dtype=np.float32)
        big[y0:y0 + covs[0].shape[0], x0:x0 + covs[0].shape[1]] = covs[0]
        out = big[pad:pad + alpha.shape[0], pad:pad + alpha.shape[1]]
    return out


def _alpha(x: np.ndarray, bg: np.ndarray, colour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unmix each pixel of ``x [h, w, 3]`` (float) as ``bg + alpha (colour - bg) + beta (texture - colour)``
    (least squares): ``alpha`` in [0, 1] is how much of the pixel is subject rather than background, and
    ``beta / alpha`` in [0, 1] how much of the subject there is texture rather than body colour (darkness)."""
    e1 = colour - bg
    e2 = np.asarray(TEXTURE_RGB, dtype=np.float32) - colour
    p = x - bg
    g11, g12, g22 = float(e1 @ e1), float(e1 @ e2), float(e2 @ e2)
    det = max(g11 * g22 - g12 * g12, 1e-6)
    r1, r2 = p @ e1, p @ e2
    alpha = np.clip((g22 * r1 - g12 * r2) / det, 0.0, 1.0)
    beta = (g11 * r2 - g12 * r1) / det
    return alpha, np.clip(beta / np.maximum(alpha, 1e-3), 0.0, 1.0)


def pixel_classes(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(body, dark, shadow)`` boolean masks ``[H, W]`` of a uint8 ``[H, W, 3]`` image."""
    x = arr.astype(np.float32)
    mx, mn = x.max(axis=2), x.min(axis=2)
    sat = (mx - mn) / np.maximum(mx, 1.0)
    body = (sat > BODY_SATURATION) & (mx > BODY_MIN_VALUE)
    dark = mx < DARK_VALUE
    shadow = (sat < SHADOW_SATURATION) & (mx >= SHADOW_VALUE[0]) & (mx <= SHADOW_VALUE[1])
    return body, dark, shadow


def background_colour(arr: np.ndarray) -> tuple[str, float, tuple[float, float, float]]:
    """``(nearest background name, its distance, estimated RGB)``: the median of the image's 2-pixel frame (subjects
    keep off the edges), then the nearest of :data:`psrl.world.subjects.BACKGROUNDS` (Euclidean, 0-255 units)."""
    frame = np.concatenate([arr[:2].reshape(-1, 3), arr[-2:].reshape(-1, 3), arr[:, :2].reshape(-1, 3),
                            arr[:, -2:].reshape(-1, 3)]).astype(np.float32)
    rgb = np.median(frame, axis=0)
    names = list(BACKGROUNDS)
    d = np.linalg.norm(np.array([BACKGROUNDS[n] for n in names], dtype=np.float32) - rgb, axis=1)
    k = int(np.argmin(d))
    return names[k], float(d[k]), tuple(float(v) for v in rgb)


def _colour(pixels: np.ndarray) -> str:
    """Majority vote of saturated ``pixels [N, 3]`` for the nearest palette colour by normalised chroma."""
    mn = pixels.min(axis=1, keepdims=True)
    chroma = (pixels - mn) / np.maximum(np.ptp(pixels, axis=1, keepdims=True), 1.0)
    nearest = np.argmin(((chroma[:, None, :] - _PALETTE_CHROMA[None]) ** 2).sum(-1), axis=1)
    return list(COLOURS)[int(np.bincount(nearest, minlength=len(COLOURS)).argmax())]


def _texture(darkness: np.ndarray, silhouette: np.ndarray) -> str:
    """``solid``, ``striped`` or ``dotted`` from a blob's darkness map (0 = its body colour, 1 = black) inside
    its silhouette (both ``[h, w]``): solid when the interior is barely darker than the body, else stripes when
    darkness correlates along the stripe direction far more than across it."""
    interior = ndimage.binary_erosion(silhouette)
    if interior.sum() < 4:
        interior = silhouette
    if darkness[interior].mean() < SOLID_DARKNESS:
        return "solid"
    d = np.where(interior, darkness - darkness[interior].mean(), 0.0)
    along = (d[1:, :-1] * d[:-1, 1:]).sum()  # (x, y+1) with (x+1, y): one step along x + y = const
    across = (d[:-1, :-1] * d[1:, 1:]).sum()  # (x, y) with (x+1, y+1): one step across the stripes
    return "striped" if (along - across) / max(float((d * d).sum()), 1e-6) > STRIPE_ANISOTROPY else "dotted"


def _soft_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.minimum(a, b).sum() / max(np.maximum(a, b).sum(), 1e-6))


def detect_subjects(arr: np.ndarray) -> list[Detection]:
    """Every subject-like blob of a uint8 ``[H, W, 3]`` image, largest first.

    A blob is a 4-connected component of body or near-black pixels with at least ``MIN_AREA_64 * (H/64)^2``
    pixels, a third of them body (saturated) pixels; near-black specks alone are not subjects.

    Raises:
        ValueError: ``arr`` is not ``[H, W, 3]``.
    """
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image array [H, W, 3], got shape {arr.shape}")
    body, dark, shadow = pixel_classes(arr)
    bg = np.asarray(background_colour(arr)[2], dtype=np.float32)
    labels, n = ndimage.label(body | dark)
    min_area = MIN_AREA_64 * (arr.shape[0] / 64) ** 2
    out = []
    for k, sl in enumerate(ndimage.find_objects(labels), 1):
        blob = labels[sl] == k
        area = int(blob.sum())
        body_px = blob & body[sl]
        if area < min_area or body_px.sum() < area / 3:
            continue
        colour = _colour(arr[sl][body_px].astype(np.float32))
        # the blob's box and 1 pixel around: alpha (subject vs background) gives a silhouette and box at half
        # coverage, the convention of the renderer's boxes
        ys, xs = sl
        ry0, rx0 = max(ys.start - 1, 0), max(xs.start - 1, 0)
        ry1, rx1 = min(ys.stop + 1, arr.shape[0]), min(xs.stop + 1, arr.shape[1])
        mine = ndimage.binary_dilation(labels[ry0:ry1, rx0:rx1] == k)
        alpha, darkness = _alpha(arr[ry0:ry1, rx0:rx1].astype(np.float32), bg, np.asarray(COLOURS[colour], "f"))
        alpha = np.where(mine, alpha, 0.0)
        iy, ix = np.nonzero(alpha >= 0.5)
        if len(ix) == 0:
            continue
        x0, y0, x1, y1 = rx0 + int(ix.min()), ry0 + int(iy.min()), rx0 + int(ix.max()) + 1, ry0 + int(iy.max()) + 1
        ious = {shape: _soft_iou(fit_template(shape, alpha), alpha) for shape in SHAPES}
        silhouette = ndimage.binary_fill_holes(alpha >= 0.5)
        h = y1 - y0
        band = shadow[y1:min(y1 + int(round(0.6 * h)) + 1, arr.shape[0]), x0:x1]
        out.append(Detection(box=(x0, y0, x1, y1), area=int(silhouette.sum()), colour=colour,
                             shape=max(ious, key=ious.get), texture=_texture(darkness, silhouette),
                             shadow=bool(band.sum() >= 0.15 * ((x1 - x0) / 2) ** 2), shape_iou=ious))
    out.sort(key=lambda d: -d.area)
    return out
