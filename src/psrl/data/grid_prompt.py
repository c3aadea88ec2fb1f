"""Text-to-image-set (T2IS) prompts: one prompt asks for a grid of panels, and the rewards score the panels of the
generated grid. Pure functions: :func:`parse_grid_prompt` reads the grid size, the theme and the per-cell
sub-prompts out of the text; :func:`cut_grid` cuts a grid image (PIL or tensor) into its cells in row-major
order. The one grid parser and cell cutter of psrl: the rewards, T2IS-Bench and PaCo-Reward's pair data use them.

The prompt format is PaCo-RL's (arXiv 2512.04784, Sec. "T2IS"; X-GenGroup/PaCo-RL@08caac6
``PaCo-GRPO/paco_grpo/utils.py``: ``extract_grid_info``, ``divide_prompt``, ``divide_image``)::

    FOUR-PANEL Images with a 2x2 grid layout <subject, style>.<what all panels share>. [TOP]-[LEFT]:<panel 1>.
    [TOP]-[RIGHT]:<panel 2>. [BOTTOM]-[LEFT]:<panel 3>. [BOTTOM]-[RIGHT]:<panel 4>.

* grid size: the first ``<rows> x <cols>`` in the text (``x``, ``⨉`` U+2A09 or ``×`` U+00D7, spaces allowed);
* sub-prompts: the text is split at every cell marker, a run of capitals, digits, hyphens and brackets followed by
  a colon (``[TOP-LEFT]:``, ``[TOP]-[RIGHT]:``, ``[LEFT]:``, ``PANEL2:``) that follows a ``.`` or ``"`` and
  whitespace; the ``.`` / ``"`` goes with the separator, and every chunk that does not end with ``.`` gets one;
* theme: the first chunk (everything before the first marker); the other chunks are the cells' sub-prompts in the
  order written, which PaCo's prompts write row-major (the order :func:`cut_grid` returns the cells in).

Where psrl differs, it refuses instead of guessing: a prompt without a grid size raises (PaCo falls back to 1x1),
an empty chunk raises (PaCo's ``p.strip()[-1]`` raises ``IndexError``), and a sub-prompt count that is not the cell
count is reported by :meth:`GridPrompt.cell_prompts` (PaCo's ``zip`` silently scores the shorter list).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from psrl.errors import RecordError
from psrl.images import MIN_SIDE

# the first "<rows> x <cols>"; PaCo's pattern with the multiplication sign U+00D7 added beside U+2A09
GRID_SIZE_RE = re.compile(r"(\d+)\s*[x\u2a09\u00d7]\s*(\d+)")
# a cell marker after the end of a sentence or a closing quote: '. [TOP-LEFT]:', '." [BOTTOM]-[RIGHT]:'
CELL_MARKER_RE = re.compile(r"[.\"]\s+([A-Z0-9\-\[\]]+):")


class GridPromptError(RecordError):
    """A prompt is not a usable grid prompt; the message names the record id and what is missing."""


@dataclass(frozen=True)
class GridPrompt:
    """A parsed grid prompt.

    Attributes:
        rows, cols: the grid size (``"2x3"`` is 2 rows of 3 cells), both >= 1.
        theme: the first chunk of the prompt, ending with ``.`` (what PaCo's consistency question quotes).
        sub_prompts: the chunks after the markers, each ending with ``.``, in the order written (may be empty:
            a prompt may name a grid without describing its cells).
        markers: the marker of each sub-prompt without its colon (``"[TOP]-[LEFT]"``), same length.
        record_id: the record the prompt came from (for messages).
    """

    rows: int
    cols: int
    theme: str
    sub_prompts: tuple[str, ...] = ()
    markers: tuple[str, ...] = ()
    record_id: str = "?"

    @property
    def num_cells(self) -> int:
        return self.rows * self.cols

    def cell_prompts(self) -> tuple[str, ...]:
        """The sub-prompt of each cell in row-major order.

        Raises:
            GridPromptError: the number of sub-prompts is not ``rows * cols``.
        """
        if len(self.sub_prompts) != self.num_cells:
            raise GridPromptError(f"record {self.record_id!r}: the prompt has {len(self.sub_prompts)} cell "
                                  f"sub-prompt(s) (markers {list(self.markers)}) for a {self.rows}x{self.cols} grid "
                                  f"of {self.num_cells} cells")
        return self.sub_prompts


def _sentence(chunk: str) -> str:
    chunk = chunk.strip()
    return chunk if not chunk or chunk.endswith(".") else chunk + "."


def grid_size(prompt: str, record_id: str = "?") -> tuple[int, int]:
    """``(rows, cols)`` of the first ``<rows> x <cols>`` in ``prompt``.

    Raises:
        GridPromptError: no grid size in the prompt, or a side of 0, naming ``record_id``.
    """
    m = GRID_SIZE_RE.search(prompt)
    if m is None:
        raise GridPromptError(f"record {record_id!r}: the prompt names no grid size (like '2x2' or '1x3'): "
                              f"{prompt[:80]!r}")
    rows, cols = int(m.group(1)), int(m.group(2))
    if rows < 1 or cols < 1:
        raise GridPromptError(f"record {record_id!r}: grid size {m.group(0)!r} has a side of 0")
    return rows, cols


def find_grid_size(text: str | None) -> tuple[int, int] | None:
    """:func:`grid_size` of ``text``, or ``None`` when it names none or a side is 0 (for callers that fall back,
    e.g. from a benchmark entry's layout to its prompt)."""
    try:
        return grid_size(text or "")
    except GridPromptError:
        return None


def divide_prompt(prompt: str) -> tuple[list[str], list[str]]:
    """``(chunks, markers)``: the prompt cut at every cell marker (the module docstring's rules), the theme first;
    each chunk stripped and ended with ``.`` (an empty chunk stays ``""``), each marker without its colon."""
    markers = [m.group(1) for m in CELL_MARKER_RE.finditer(prompt)]
    chunks = CELL_MARKER_RE.split(prompt)[::2]  # split() interleaves the captured markers; keep the text
    return [_sentence(c) for c in chunks], markers


def parse_grid_prompt(prompt: str, record_id: str = "?") -> GridPrompt:
    """Grid size, theme and cell sub-prompts of a T2IS prompt (the rules in the module docstring).

    Args:
        prompt: the full grid prompt.
        record_id: the record's id, named by every error.

    Raises:
        GridPromptError: no grid size, a side of 0, or an empty theme or sub-prompt.
    """
    rows, cols = grid_size(prompt, record_id)
    chunks, markers = divide_prompt(prompt)
    if not all(chunks):
        which = "theme" if not chunks[0] else "sub-prompt"
        raise GridPromptError(f"record {record_id!r}: the prompt has an empty {which} (markers {markers})")
    return GridPrompt(rows=rows, cols=cols, theme=chunks[0], sub_prompts=tuple(chunks[1:]), markers=tuple(markers),
                      record_id=record_id)


def parse_grid_records(records: Sequence, *, need_cell_prompts: bool = False) -> list[GridPrompt]:
    """:func:`parse_grid_prompt` of every record (``.id``, ``.prompt``), checked all at once.

    Args:
        records: the records.
        need_cell_prompts: also require one sub-prompt per cell (what sub-figure CLIP-T scores).

    Raises:
        GridPromptError: one message listing every bad record by id.
    """
    out, problems = [], []
    for r in records:
        try:
            g = parse_grid_prompt(r.prompt, r.id)
            if need_cell_prompts:
                g.cell_prompts()
            out.append(g)
        except GridPromptError as e:
            problems.append(str(e))
    if problems:
        raise GridPromptError(f"{len(problems)} of {len(records)} record(s) are not grid prompts: "
                              + "; ".join(problems))
    return out


def cell_boxes(width: int, height: int, rows: int, cols: int, *, min_side: int = MIN_SIDE,
               exact: bool = False) -> list[tuple[int, int, int, int]]:
    """Row-major ``(left, top, right, bottom)`` pixel boxes of the ``rows * cols`` cells of a ``width x height``
    grid image (left to right, then top to bottom).

    Each cell is ``(width // cols) x (height // rows)`` pixels from the top-left corner; the ``width % cols``
    columns and ``height % rows`` rows left over at the right and bottom edges belong to no cell (PaCo's
    ``divide_image``), unless ``exact`` refuses them (a grid that does not divide its image: the cells would not
    be the panels the prompt describes).

    Raises:
        ValueError: ``rows`` or ``cols`` < 1, a remainder with ``exact``, or cells smaller than ``min_side``
            (:data:`psrl.images.MIN_SIDE` by default, what every reward needs); the message gives the sizes.
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"grid size must be at least 1x1, got {rows}x{cols}")
    if exact and (width % cols or height % rows):
        raise ValueError(f"a {width}x{height} image does not divide into a {rows}x{cols} grid "
                         f"({width} px / {cols} columns, {height} px / {rows} rows)")
    cw, ch = width // cols, height // rows
    if min(cw, ch) < max(min_side, 1):
        raise ValueError(f"a {width}x{height} image cut into a {rows}x{cols} grid gives {cw}x{ch} cells, smaller "
                         f"than the minimum side {max(min_side, 1)}")
    return [(c * cw, r * ch, (c + 1) * cw, (r + 1) * ch) for r in range(rows) for c in range(cols)]


def cut_grid(image, rows: int, cols: int, *, min_side: int = MIN_SIDE, exact: bool = False) -> list:
    """The cells of a grid image in :func:`cell_boxes` order: PIL crops of a PIL image (any mode; cells keep it),
    or views ``[..., h, w]`` of a tensor / array ``[..., H, W]``. Raises ``ValueError`` as :func:`cell_boxes`."""
    if isinstance(image, Image.Image):
        return [image.crop(box) for box in cell_boxes(image.width, image.height, rows, cols, min_side=min_side,
                                                      exact=exact)]
    boxes = cell_boxes(int(image.shape[-1]), int(image.shape[-2]), rows, cols, min_side=min_side, exact=exact)
    return [image[..., top:bottom, left:right] for left, top, right, bottom in boxes]


__all__ = ["CELL_MARKER_RE", "GRID_SIZE_RE", "GridPrompt", "GridPromptError", "cell_boxes", "cut_grid",
           "divide_prompt", "find_grid_size", "grid_size", "parse_grid_prompt", "parse_grid_records"]
