"""Grid images -> cells -> pairs of cells: the automated sub-figure pairing of PaCo-Reward's data.

A text-to-image-set model draws one theme as a grid (PaCo's T2IS prompts say "FOUR-PANEL Images with a 2x2 grid
layout ..."); every cell shows the same subject in another scene, so two cells of one grid are a pair whose
consistency a judge labels. Conventions follow X-GenGroup/PaCo-RL@08caac6
``PaCo-Reward/evaluation/Consistency_Rank/consistency_scorer.py``: the first ``<rows>x<cols>`` in the prompt gives the
grid (``x`` or ``⨉``; we also read ``×``), cells are cut row-major (top-left, top-right, bottom-left, ...) and the
pairs are all unordered pairs ``i < j`` in that order. Where the released ``divide_image`` floors the cell size and
silently drops the remainder, a grid that does not divide its image is refused here (the cells would not be the
panels the prompt describes). Grid sizes and cells come from :mod:`psrl.data.grid_prompt` (``find_grid_size``,
``cell_boxes(..., exact=True)``), the one grid parser and cutter.
"""
from __future__ import annotations

import itertools

from psrl.data.grid_prompt import GRID_SIZE_RE


class GridError(ValueError):
    """A grid size is malformed or does not divide the image; the message says which."""


def parse_grid_spec(spec: str) -> tuple[int, int]:
    """A user's grid flag ``"2x2"`` -> ``(2, 2)``. Raises GridError unless it is exactly ``RxC`` with R, C >= 1 and
    at least two cells."""
    m = GRID_SIZE_RE.fullmatch((spec or "").strip())
    if not m:
        raise GridError(f"grid {spec!r} must look like ROWSxCOLS, e.g. 2x2")
    rows, cols = int(m.group(1)), int(m.group(2))
    if rows < 1 or cols < 1 or rows * cols < 2:
        raise GridError(f"grid {spec!r} must have at least 2 cells")
    return rows, cols


def cell_pairs(n: int) -> list[tuple[int, int]]:
    """All unordered pairs ``(i, j)``, ``i < j``, of ``n`` cells (``itertools.combinations`` order: 6 for 4)."""
    return list(itertools.combinations(range(n), 2))


__all__ = ["GridError", "cell_pairs", "parse_grid_spec"]
