"""T2IS grid prompts and grids, pure: the parser (grid size, theme, cell sub-prompts split at PaCo's markers), the
row-major cell cutter (against numpy slicing) and the judge-answer cache in front of the VLM judge."""
import math

import numpy as np
import pytest
from PIL import Image

from psrl.data.grid_prompt import (GridPromptError, cell_boxes, cut_grid, divide_prompt, find_grid_size, grid_size,
                                   parse_grid_prompt, parse_grid_records)
from psrl.data.records import Record

pytestmark = pytest.mark.unit

# PaCo's layout (X-GenGroup/PaCo-RL@08caac6 PaCo-GRPO/dataset/T2IS): "<N>-PANEL Images with a RxC grid layout
# <theme>.<shared look>. [TOP]-[LEFT]:<cell> ..."; the texts here are our own
FOX = ("FOUR-PANEL Images with a 2x2 grid layout a red fox in watercolor style.All panels keep the same fox. "
       "[TOP]-[LEFT]:The fox sleeps under a tree. [TOP]-[RIGHT]:The fox runs through snow. "
       "[BOTTOM]-[LEFT]:The fox drinks from a stream. [BOTTOM]-[RIGHT]:The fox watches the moon.")


def test_paco_2x2_prompt_gives_size_theme_and_four_cells_in_order():
    g = parse_grid_prompt(FOX, "fox")
    assert (g.rows, g.cols, g.num_cells) == (2, 2, 4)
    # the theme is the whole first chunk: "style.All" (no space) is not a marker, the last "." is restored
    assert g.theme == ("FOUR-PANEL Images with a 2x2 grid layout a red fox in watercolor style.All panels keep the "
                       "same fox.")
    assert g.markers == ("[TOP]-[LEFT]", "[TOP]-[RIGHT]", "[BOTTOM]-[LEFT]", "[BOTTOM]-[RIGHT]")
    assert g.cell_prompts() == ("The fox sleeps under a tree.", "The fox runs through snow.",
                                "The fox drinks from a stream.", "The fox watches the moon.")


@pytest.mark.parametrize("size, rows, cols", [("2x2", 2, 2), ("2\u2a092", 2, 2), ("2\u00d72", 2, 2), ("1 x 3", 1, 3),
                                              ("3x1", 3, 1), ("2 \u00d7 3", 2, 3)])
def test_grid_size_spellings(size, rows, cols):
    assert grid_size(f"Images with a {size} grid layout of a cat", "r") == (rows, cols)


def test_the_first_grid_size_wins_and_single_word_markers_split():
    p = ("THREE-PANEL Images with a 1x3 grid layout a kite on a 4x4 truck. [LEFT]:The kite rises. "
         "[MIDDLE]:The kite loops. [RIGHT]:The kite lands")
    g = parse_grid_prompt(p, "kite")
    assert (g.rows, g.cols) == (1, 3) and g.markers == ("[LEFT]", "[MIDDLE]", "[RIGHT]")
    assert g.cell_prompts() == ("The kite rises.", "The kite loops.", "The kite lands.")  # "." added to the last
    hyphen = parse_grid_prompt("A 2x2 grid of owls. [TOP-LEFT]:a. [TOP-RIGHT]:b. [BOTTOM-LEFT]:c. [BOTTOM-RIGHT]:d.")
    assert hyphen.markers == ("[TOP-LEFT]", "[TOP-RIGHT]", "[BOTTOM-LEFT]", "[BOTTOM-RIGHT]")
    assert hyphen.sub_prompts == ("a.", "b.", "c.", "d.") and hyphen.theme == "A 2x2 grid of owls."


def test_markers_need_a_sentence_end_before_them_as_in_paco():
    # a closing quote ends a chunk too (PaCo's separator takes the quote with it); "NOTE:" after a comma and
    # lower-case "left:" are text, not markers
    p = 'A 1x2 grid. [LEFT]:A sign says "OPEN." [RIGHT]:A shop, NOTE: closed, left: empty.'
    g = parse_grid_prompt(p, "shop")
    assert g.markers == ("[LEFT]", "[RIGHT]")
    assert g.sub_prompts == ('A sign says "OPEN.', "A shop, NOTE: closed, left: empty.")


def test_a_prompt_without_a_grid_or_with_an_empty_chunk_is_an_error_naming_the_record():
    with pytest.raises(GridPromptError, match=r"record 'sea-1': the prompt names no grid size"):
        parse_grid_prompt("a calm sea at dawn", "sea-1")
    with pytest.raises(GridPromptError, match=r"record 'z'.*'0x2' has a side of 0"):
        parse_grid_prompt("a 0x2 grid. [LEFT]:a. [RIGHT]:b.", "z")
    with pytest.raises(GridPromptError, match=r"record 'e': the prompt has an empty sub-prompt"):
        parse_grid_prompt("A 1x2 grid of cats. [LEFT]:. [RIGHT]:A cat.", "e")


def test_cell_prompts_must_match_the_cell_count_and_records_are_checked_together():
    three = parse_grid_prompt("A 2x2 grid. [A]:a. [B]:b. [C]:c.", "three")
    assert three.sub_prompts == ("a.", "b.", "c.")
    with pytest.raises(GridPromptError, match=r"record 'three': the prompt has 3 cell sub-prompt\(s\).*2x2 grid of 4"):
        three.cell_prompts()
    no_cells = parse_grid_prompt("a 2x2 grid of the same cat in four moods", "moods")  # consistency needs no cells
    assert no_cells.sub_prompts == () and no_cells.theme.endswith("moods.")
    records = [Record(id="ok", prompt=FOX), Record(id="plain", prompt="a cat"),
               Record(id="moods", prompt=no_cells.theme)]
    assert [g.record_id for g in parse_grid_records(records[::2])] == ["ok", "moods"]
    with pytest.raises(GridPromptError, match=r"1 of 3 record\(s\).*'plain'"):
        parse_grid_records(records)
    with pytest.raises(GridPromptError, match=r"2 of 3 record\(s\).*'plain'.*'moods'"):
        parse_grid_records(records, need_cell_prompts=True)


@pytest.mark.parametrize("rows, cols, w, h", [(2, 2, 32, 32), (2, 3, 35, 21), (1, 3, 50, 9), (3, 1, 8, 26)])
def test_cut_grid_is_row_major_numpy_slicing_with_the_remainder_dropped(rows, cols, w, h):
    """The one cell cutter, PIL and tensor alike, against numpy slicing (the oracle)."""
    import torch

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    cells = cut_grid(Image.fromarray(arr), rows, cols)
    ch, cw = h // rows, w // cols
    expected = [arr[r * ch:(r + 1) * ch, c * cw:(c + 1) * cw] for r in range(rows) for c in range(cols)]
    assert len(cells) == rows * cols
    for cell, want in zip(cells, expected):
        assert cell.size == (cw, ch) and np.array_equal(np.asarray(cell), want)
    tensor_cells = cut_grid(torch.from_numpy(arr).permute(2, 0, 1), rows, cols)  # [3, H, W] -> [3, h, w] views
    assert [np.array_equal(c.permute(1, 2, 0).numpy(), want) for c, want in zip(tensor_cells, expected)] == \
        [True] * (rows * cols)
    divides = w % cols == 0 and h % rows == 0
    if divides:
        assert cell_boxes(w, h, rows, cols, exact=True) == cell_boxes(w, h, rows, cols)
    else:
        with pytest.raises(ValueError, match=rf"a {w}x{h} image does not divide into a {rows}x{cols} grid"):
            cell_boxes(w, h, rows, cols, exact=True)


def test_find_grid_size_and_divide_prompt():
    assert find_grid_size("2x2") == (2, 2) and find_grid_size("a 1⨉4 strip") == (1, 4)
    assert find_grid_size("2 × 3") == (2, 3)
    assert find_grid_size("four panels") is None and find_grid_size("0x2") is None and find_grid_size(None) is None
    # the '.' or '"' before a marker goes with the separator; every chunk ends with '.'; an empty one stays empty
    chunks, markers = divide_prompt('A 1x2 grid of "cats." [LEFT]:a cat. [RIGHT]:')
    assert chunks == ['A 1x2 grid of "cats.', "a cat.", ""] and markers == ["[LEFT]", "[RIGHT]"]


def test_cut_grid_refuses_cells_under_the_minimum_side():
    with pytest.raises(ValueError, match=r"16x16 image cut into a 1x3 grid gives 5x16 cells, smaller than the "
                                         r"minimum side 8"):
        cut_grid(Image.new("RGB", (16, 16)), 1, 3)
    with pytest.raises(ValueError, match="at least 1x1"):
        cut_grid(Image.new("RGB", (16, 16)), 0, 2)
    assert len(cut_grid(Image.new("RGB", (16, 16)), 1, 3, min_side=4)) == 3


# ------------------------------------------------------------------------------------------ the judge cache
class CountingJudge:
    """A judge that answers P(Yes) = the first image's red level / 255 and records what it was asked; a text
    containing "fail" is answered with a failure."""

    def __init__(self):
        self.asked = []

    def p_yes(self, requests):
        self.asked.append(len(requests))
        return [(math.nan, "judge down", False) if "fail" in r.text else (r.images[0].getpixel((0, 0))[0] / 255,
                                                                           None, False) for r in requests]


def _req(red, text="same?", size=(8, 8)):
    from psrl.rewards.vlm.transports import JudgeRequest

    return JudgeRequest([Image.new("RGB", size, (red, 0, 0)), Image.new("RGB", size, (0, 0, 0))], text)


def test_cache_sends_a_question_once_per_call_and_remembers_only_scored_answers():
    from psrl.rewards.vlm.cache import CachedPYes

    judge = CountingJudge()
    cache = CachedPYes(judge, max_entries=8)
    out = cache.p_yes([_req(51), _req(51), _req(102), _req(51, "fail"), _req(51, "fail")])
    assert judge.asked == [3] and [p for p, _, _ in out[:3]] == [0.2, 0.2, 0.4]
    assert all(math.isnan(p) and why == "judge down" for p, why, _ in out[3:])
    cache.p_yes([_req(51), _req(102), _req(51, "fail")])  # the failure is asked again, the answers are not
    assert judge.asked == [3, 1] and (cache.hits, cache.misses) == (2 + 2, 3 + 1)
    cache.p_yes([_req(51, size=(8, 9))])  # another size is another question, even with the same colour
    assert judge.asked[-1] == 1


def test_cache_is_fifo_bounded_and_size_zero_keeps_nothing_across_calls():
    from psrl.rewards.vlm.cache import CachedPYes

    judge = CountingJudge()
    cache = CachedPYes(judge, max_entries=1)
    cache.p_yes([_req(1)])
    cache.p_yes([_req(2)])   # evicts red 1
    cache.p_yes([_req(2), _req(1)])
    assert judge.asked == [1, 1, 1]
    off = CachedPYes(CountingJudge(), max_entries=0)
    off.p_yes([_req(1), _req(1)])
    off.p_yes([_req(1)])
    assert off.judge.asked == [1, 1]
    with pytest.raises(ValueError, match="cache_size must be an integer >= 0"):
        CachedPYes(judge, max_entries=-1)
