"""Drawing the pocket world with numpy: a subject alone (a reference) and a scene with its ground-truth boxes.

Every shape is a unit shape (a polygon or the circle, inside the unit disc, y pointing down) scaled by the subject's
radius; textures are laid out in the subject's own frame (period proportional to the radius), so a reference and the
same subject in a scene carry the same pattern at any size. Edges are anti-aliased by supersampling (``SS`` x ``SS``
points per pixel, averaged), which keeps renders deterministic bit for bit: no random state, no font, no GPU.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image

from psrl.world.subjects import BACKGROUNDS, SHADOW_RGB, TEXTURE_RGB, Subject

SS = 3  # supersampling per axis
STRIPE_PERIOD = 0.6  # diagonal stripe period, in subject radii
STRIPE_DARK = 0.4  # the dark share of each period: the body colour stays visible between stripes at small radii
DOT_SPACING = 0.6  # dot grid spacing, in subject radii
DOT_RADIUS = 0.18  # dot radius, in subject radii
REFERENCE_RADIUS = 0.4  # a reference's subject radius, as a fraction of the reference side

Box = tuple[int, int, int, int]


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    angles = -math.pi / 2 + np.arange(2 * points) * math.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


# unit polygons (x right, y down), vertices in order; the circle is analytic
POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]]),
    "triangle": np.array([[0.0, -0.95], [0.95, 0.8], [-0.95, 0.8]]),
    "diamond": np.array([[0.0, -1.0], [0.95, 0.0], [0.0, 1.0], [-0.95, 0.0]]),
    "star": _star(),
    "cross": np.array([[-0.32, -0.95], [0.32, -0.95], [0.32, -0.32], [0.95, -0.32], [0.95, 0.32], [0.32, 0.32],
                       [0.32, 0.95], [-0.32, 0.95], [-0.32, 0.32], [-0.95, 0.32], [-0.95, -0.32], [-0.32, -0.32]]),
}
CIRCLE_RADIUS = 0.92


def inside_shape(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of the unit ``shape`` at points ``(u, v)`` (subject frame: centre 0, radius 1, y down).
    Polygons use the even-odd crossing rule. Raises ``KeyError`` for an unknown shape."""
    if shape == "circle":
        return u * u + v * v <= CIRCLE_RADIUS ** 2
    y0, y1, x0, slope = _edges(shape)
    # where each edge crosses the point's row depends on v alone (cheap when v is a column [H, 1]); then one
    # comparison per point and edge, and the parity of the crossings to the point's right
    vv = np.asarray(v, dtype=np.float64)[..., None]
    x_at = np.where((vv >= y0) & (vv < y1), x0 + (vv - y0) * slope, -np.inf)
    return np.logical_xor.reduce(np.asarray(u)[..., None] < x_at, axis=-1)


@lru_cache(maxsize=None)
def _edges(shape: str) -> tuple[np.ndarray, ...]:
    """A polygon's non-horizontal edges as arrays: lower y, upper y, x at the lower y, dx/dy."""
    poly = POLYGONS[shape]
    a, b = poly, np.roll(poly, -1, axis=0)
    keep = a[:, 1] != b[:, 1]
    a, b = a[keep], b[keep]
    lo = np.where((a[:, 1] < b[:, 1])[:, None], a, b)
    hi = np.where((a[:, 1] < b[:, 1])[:, None], b, a)
    return lo[:, 1], hi[:, 1], lo[:, 0], (hi[:, 0] - lo[:, 0]) / (hi[:, 1] - lo[:, 1])


def texture_mask(texture: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Where the near-black texture covers the body, at subject-frame points ``(u, v)``: ``solid`` nowhere,
    ``striped`` diagonal bands along x + y = const, ``dotted`` a square grid of dots."""
    if texture == "solid":
        return np.zeros(np.broadcast(u, v).shape, dtype=bool)
    if texture == "striped":
        return np.mod(u + v, STRIPE_PERIOD) < STRIPE_PERIOD * STRIPE_DARK
    if texture == "dotted":
        du = np.mod(u + DOT_SPACING / 2, DOT_SPACING) - DOT_SPACING / 2
        dv = np.mod(v + DOT_SPACING / 2, DOT_SPACING) - DOT_SPACING / 2
        return du * du + dv * dv <= DOT_RADIUS ** 2
    raise KeyError(texture)


def coverage(cx: float, cy: float, r: float, size: int, *masks) -> tuple[list[np.ndarray], tuple[int, int]]:
    """The fraction of each pixel of the square around ``(cx, cy, r)`` (pixels; clipped to the ``size`` image)
    where ``masks[0](u, v)`` holds, where ``masks[0]`` and ``masks[1]`` both hold, and so on (subject-frame
    points -> bool; a texture is thus painted only on its body), sampled at ``SS x SS`` points per pixel; and the
    square's top-left pixel."""
    x0, y0 = max(int(math.floor(cx - r)) - 1, 0), max(int(math.floor(cy - r)) - 1, 0)
    x1, y1 = min(int(math.ceil(cx + r)) + 1, size), min(int(math.ceil(cy + r)) + 1, size)
    if x1 <= x0 or y1 <= y0:
        return [], (x0, y0)
    off = (np.arange(SS) + 0.5) / SS  # the sample points inside a pixel
    xs = (np.arange(x0, x1)[:, None] + off[None, :]).reshape(-1)
    ys = (np.arange(y0, y1)[:, None] + off[None, :]).reshape(-1)
    u = (xs[None, :] - cx) / r
    v = (ys[:, None] - cy) / r
    out, hit = [], None
    for mask in masks:
        hit = mask(u, v) if hit is None else hit & mask(u, v)
        out.append(hit.reshape(y1 - y0, SS, x1 - x0, SS).mean(axis=(1, 3), dtype=np.float32))
    return out, (x0, y0)


def _paint(canvas: np.ndarray, cov: np.ndarray, at: tuple[int, int], rgb) -> None:
    x0, y0 = at
    h, w = cov.shape
    region = canvas[y0:y0 + h, x0:x0 + w]
    region += cov[..., None] * (np.asarray(rgb, dtype=np.float32) - region)


def draw_subject(canvas: np.ndarray, subject: Subject, cx: float, cy: float, r: float) -> Box | None:
    """Paint ``subject`` centred at ``(cx, cy)`` with radius ``r`` (pixels) onto ``canvas`` (float32 [H, W, 3],
    0-255, modified in place). Returns its box ``(x0, y0, x1, y1)`` in pixels (x1, y1 exclusive): the pixels at
    least half covered, or ``None`` when none is (the subject lies outside the image)."""
    masks = [lambda u, v: inside_shape(subject.shape, u, v)]
    if subject.texture != "solid":
        masks.append(lambda u, v: texture_mask(subject.texture, u, v))
    covs, at = coverage(cx, cy, r, canvas.shape[0], *masks)
    if not covs:
        return None
    body = covs[0]
    _paint(canvas, body, at, subject.rgb)
    if len(covs) > 1:  # the texture's share of what the body painted
        _paint(canvas, covs[1] / np.maximum(body, 1e-6), at, TEXTURE_RGB)
    ys, xs = np.nonzero(body >= 0.5)
    if len(xs) == 0:
        return None
    return (at[0] + int(xs.min()), at[1] + int(ys.min()), at[0] + int(xs.max()) + 1, at[1] + int(ys.max()) + 1)


def draw_shadow(canvas: np.ndarray, cx: float, cy: float, r: float) -> None:
    """The flat ellipse a jumping subject of radius ``r`` casts, centred ``1.45 r`` below its centre (pixels)."""
    covs, at = coverage(cx, cy + 1.45 * r, r, canvas.shape[0], lambda u, v: (u / 0.75) ** 2 + (v / 0.2) ** 2 <= 1.0)
    if covs:
        _paint(canvas, covs[0], at, SHADOW_RGB)


def _to_image(canvas: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), "RGB")


def render_reference(subject: Subject, size: int = 32) -> Image.Image:
    """The reference image of ``subject``: alone, centred, radius ``REFERENCE_RADIUS * size``, on white.
    Returns an RGB ``PIL.Image`` of ``size x size`` (uint8)."""
    canvas = np.full((size, size, 3), 255.0, dtype=np.float32)
    draw_subject(canvas, subject, size / 2, size / 2, REFERENCE_RADIUS * size)
    return _to_image(canvas)


def render_scene(scene, size: int = 64) -> tuple[Image.Image, list[Box | None]]:
    """Draw a :class:`psrl.world.scenes.Scene` at ``size x size`` pixels.

    Positions and sizes of the scene are fractions of the image side, so any ``size`` draws the same picture.
    Order: the background fill, the shadows of jumping subjects, then the subjects in scene order.

    Returns:
        ``(image, boxes)``: an RGB ``PIL.Image`` (uint8) and one box ``(x0, y0, x1, y1)`` per subject, in pixels,
        x1/y1 exclusive (the pixels at least half covered by the subject's body; shadows excluded), ``None`` for a
        subject drawn entirely outside the image.
    Raises:
        KeyError: an unknown background name.
    """
    canvas = np.empty((size, size, 3), dtype=np.float32)
    canvas[:] = np.asarray(BACKGROUNDS[scene.background], dtype=np.float32)
    placed = [(s, x * size, y * size, r * size) for s, (x, y), r in zip(scene.subjects, scene.positions, scene.sizes)]
    for (_, cx, cy, r), action in zip(placed, scene.actions or ("",) * len(placed)):
        if action == "jumping":
            draw_shadow(canvas, cx, cy, r)
    boxes = [draw_subject(canvas, s, cx, cy, r) for s, cx, cy, r in placed]
    return _to_image(canvas), boxes
