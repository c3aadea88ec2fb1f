"""Grid images -> cells -> pairs of cells: the automated sub-figure pairing of PaCo-Reward's data.

A text-to-image-set model draws one theme as a grid (PaCo's T2IS prompts say "FOUR-PANEL Images with a 2x2 grid
layout ..."); every cell shows the same subject in another scene, so two cells of one grid are a pair whose
consistency a judge labels. Conventions follow X-GenGroup/PaCo-RL@08caac6
``PaCo-Reward/evaluation/Consistency_Rank/consistency_scorer.py``: the first ``<rows>x<cols>`` in the prompt gives the
grid (``x`` or ``⨉``; we also read ``×``), cells are cut row-major (top-left, top-right, bottom-left, ...) and the
pairs are all unordered pairs ``i < j`` in that order. Where the released ``divide_image`` floors the cell size and
silently drops the remainder, a grid that does not divide its image is refused here (the cells would not be the
panels the prompt describes).
"""
from __future__ import annotations

import itertools

from PIL import Image

from psrl.data.grid_prompt import GRID_SIZE_RE

GRID_RE = GRID_SIZE_RE  # the one "<rows> x <cols>" pattern (psrl.data.grid_prompt)


class GridError(ValueError):
    """A grid size is malformed or does not divide the image; the message says which."""


def parse_grid_size(text: str) -> tuple[int, int] | None:
    """``(rows, cols)`` of the first ``RxC`` in ``text`` (``"a 1x3 grid"`` -> ``(1, 3)``), or None."""
    m = GRID_RE.search(text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_grid_spec(spec: str) -> tuple[int, int]:
    """A user's grid flag ``"2x2"`` -> ``(2, 2)``. Raises GridError unless it is exactly ``RxC`` with R, C >= 1 and
    at least two cells."""
    m = GRID_RE.fullmatch((spec or "").strip())
    if not m:
        raise GridError(f"grid {spec!r} must look like ROWSxCOLS, e.g. 2x2")
    rows, cols = int(m.group(1)), int(m.group(2))
    if rows < 1 or cols < 1 or rows * cols < 2:
        raise GridError(f"grid {spec!r} must have at least 2 cells")
    return rows, cols


def cell_boxes(width: int, height: int, rows: int, cols: int) -> list[tuple[int, int, int, int]]:
    """Row-major ``(left, top, right, bottom)`` pixel boxes of a ``rows x cols`` grid on a ``width x height`` image.

    Raises:
        GridError: fewer than 2 cells, or a side that does not divide evenly.
    """
    if rows < 1 or cols < 1 or rows * cols < 2:
        raise GridError(f"a {rows}x{cols} grid has fewer than 2 cells")
    if width % cols or height % rows:
        raise GridError(f"a {width}x{height} image does not divide into a {rows}x{cols} grid "
                        f"({width} px / {cols} columns, {height} px / {rows} rows)")
    cw, ch = width // cols, height // rows
    return [(c * cw, r * ch, (c + 1) * cw, (r + 1) * ch) for r in range(rows) for c in range(cols)]


def split_grid(image: Image.Image, rows: int, cols: int) -> list[Image.Image]:
    """The cells of ``image``, row-major (:func:`cell_boxes`)."""
    return [image.crop(box) for box in cell_boxes(image.width, image.height, rows, cols)]


def cell_pairs(n: int) -> list[tuple[int, int]]:
    """All unordered pairs ``(i, j)``, ``i < j``, of ``n`` cells (``itertools.combinations`` order: 6 for 4)."""
    return list(itertools.combinations(range(n), 2))


__all__ = ["GRID_RE", "GridError", "cell_boxes", "cell_pairs", "parse_grid_size", "parse_grid_spec", "split_grid"]
