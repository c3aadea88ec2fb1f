"""Text-to-image-set (T2IS) rewards: the image is a grid of panels asked for by a grid prompt
(:mod:`psrl.data.grid_prompt`), cut into cells in row-major order and scored cell by cell (PaCo-RL, arXiv
2512.04784; X-GenGroup/PaCo-RL@08caac6 ``PaCo-GRPO/paco_grpo/rewards/consistency_scorer.py`` and
``subfig_clipT.py``; the recipe is ``configs/paco_t2is.yaml``).

* ``t2is_consistency``: the mean over all ``C(n, 2)`` cell pairs ``(i, j)``, ``i < j`` (one order, as PaCo) of the
  VLM judge's P(Yes) (:mod:`psrl.rewards.vlm.judge`) for "do these two panels keep style, logic and identity?",
  asked with PaCo's template v1 quoting the prompt's theme (a local Qwen2.5-VL such as PaCo-Reward-7B, or a vLLM
  server); identical pairs are asked once (:class:`psrl.rewards.vlm.cache.CachedPYes`). Score in [0, 1].
* ``t2is_clip_t``: sub-figure CLIP-T, the mean over cells of the cosine between the CLIP image embedding of a cell
  and the CLIP text embedding of its sub-prompt (PaCo: OpenCLIP ViT-H-14 laion2b_s32b_b79k, the default here as
  its transformers port). Score in [-1, 1] (about 0.2-0.4 for a matching cell). Text over 77 CLIP tokens is
  truncated, as PaCo's tokenizer does.

PickScore on the whole grid with the full prompt is the ``pickscore`` reward as it is.

NaN policy (one sample only, with the reason in ``failures``): the image is unusable (NaN pixels, too small); the
prompt names no grid size or has an empty chunk (:class:`psrl.data.grid_prompt.GridPromptError`, naming the record
id); the cells would be under :data:`psrl.images.MIN_SIDE` pixels; ``t2is_consistency``: the grid has one cell
(no pair), or any pair's judge call failed or its P(Yes) is undetermined; ``t2is_clip_t``: the prompt's sub-prompt
count is not the cell count, or the CLIP model failed on a cell. PaCo scores all of these 0.0 (or zips the
shorter list); a default would look like a real judgement to the advantages.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor

from psrl.data.grid_prompt import GridPrompt, cut_grid, parse_grid_prompt
from psrl.data.records import Record
from psrl.rewards.base import RewardOutput
from psrl.rewards.images import scorable_images
from psrl.rewards.isolation import Failed, per_item
from psrl.rewards.preference import _ClipRewardBase
from psrl.rewards.vlm.cache import DEFAULT_MAX_ENTRIES, CachedPYes
from psrl.rewards.vlm.prompts import paco_prompt
from psrl.rewards.vlm.transports import JudgeRequest
from psrl.rewards.vlm_rewards import _PairwiseBase

DEFAULT_CLIP = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # PaCo's open_clip ViT-H-14 laion2b_s32b_b79k


def grid_cells(image, record: Record) -> tuple[GridPrompt, list]:
    """``(parsed prompt, cells row-major)`` of one generated grid.

    Raises:
        ValueError: the prompt is not a grid prompt (:class:`psrl.data.grid_prompt.GridPromptError`, naming the
            record id) or the cells would be too small.
    """
    grid = parse_grid_prompt(record.prompt, record.id)
    return grid, cut_grid(image, grid.rows, grid.cols)


class T2ISConsistencyReward(_PairwiseBase):
    """``t2is_consistency``: mean P(Yes) over the ``C(n, 2)`` cell pairs of each grid, in [0, 1] (NaN + reason as
    in the module docstring).

    Args:
        device: where a local judge runs.
        template: ``v1`` (PaCo-GRPO's T2IS question, quoting the theme), ``v3`` (no theme) or a custom string
            with an optional ``{theme}`` slot.
        canonicalize: sum every case/whitespace variant of Yes/No.
        cache_size: judge answers kept across calls (0: only duplicates within a call are shared).
        **judge_kwargs: the judge options of :mod:`psrl.rewards.vlm_rewards` (``path``, ``adapter_path``,
            ``endpoint``/``url``, ``model``, ...).

    Score range: [0, 1], a mean of P(Yes).
    NaN policy: an unusable image, a prompt that is not a grid prompt, cells under the minimum side, a grid of one
        cell, or a pair whose judge call failed or whose P(Yes) is undetermined, for that sample (module
        docstring).

    Raises:
        ValueError, TypeError: a bad template, cache size or judge option (at construction).
    """

    name = "t2is_consistency"

    def __init__(self, device="cpu", *, template: str = "v1", canonicalize: bool = False,
                 cache_size: int = DEFAULT_MAX_ENTRIES, **judge_kwargs):
        if not isinstance(template, str) or not template:
            raise ValueError(f"t2is_consistency: template must be 'v1', 'v3' or a prompt string, got {template!r}")
        super().__init__(device, canonicalize, judge_kwargs)
        self.template = template
        self.judge = CachedPYes(self.judge, cache_size)

    def __call__(self, images: Tensor | Sequence, records: Sequence[Record]) -> RewardOutput:
        grids: list[str | None] = [None] * len(records)

        def make(b, gen, rec: Record):
            grid, cells = grid_cells(gen, rec)
            grids[b] = f"{grid.rows}x{grid.cols}"
            if len(cells) < 2:
                raise ValueError(f"record {rec.id!r}: a {grids[b]} grid has no pair of cells")
            text = paco_prompt(self.template, grid.theme)
            return [JudgeRequest([a, c], text) for a, c in itertools.combinations(cells, 2)]

        scores, failures, per_pair, bounded = self._score_pairs(
            images, records, make, lambda p: sum(p) / len(p),
            reason=lambda bad, got: f"{len(bad)} of {len(got)} cell pair(s) unscored: {bad[0]}")
        return RewardOutput(scores=scores, failures=failures,
                            details={"p_yes_pairs": per_pair, "p_yes_bounded": bounded, "grid": grids})


class T2ISClipTReward(_ClipRewardBase):
    """``t2is_clip_t``: mean over the cells of each grid of ``cos(CLIP_image(cell), CLIP_text(sub-prompt))``, in
    [-1, 1] (NaN + reason as in the module docstring); ``details["cell_cosine"]`` holds each cell's cosine.

    Args:
        device: where the CLIP model runs.
        path: a transformers CLIP checkpoint (hub id or folder) or ``tiny``.
        dtype: model dtype (default: bf16 on CUDA, fp32 on CPU).
        batch_size: cells per forward pass.

    Score range: [-1, 1], a mean of cosines (about 0.2-0.4 for a matching cell).
    NaN policy: an unusable image, a prompt that is not a grid prompt, cells under the minimum side, a sub-prompt
        count that is not the cell count, or a CLIP failure on a cell, for that sample (module docstring).

    Raises:
        ModelLoadError: the checkpoint cannot be loaded.
    """

    name = "t2is_clip_t"

    def __init__(self, device="cpu", *, path: str = DEFAULT_CLIP, dtype=None, batch_size: int = 32):
        super().__init__(path, device, dtype, batch_size, "t2is_clip_t model")

    def __call__(self, images: Tensor | Sequence, records: Sequence[Record]) -> RewardOutput:
        pils, failures, idx = scorable_images(images, records, self.name)
        items: list[tuple[int, object, str]] = []  # (sample, cell image, its sub-prompt), all samples flattened
        for b in idx:
            try:
                grid, cells = grid_cells(pils[b], records[b])
                texts = grid.cell_prompts()
            except ValueError as e:
                failures[b] = str(e)
                continue
            items += [(b, cell, text) for cell, text in zip(cells, texts)]

        def cosines(batch):
            img, txt = self._embed([c for _, c, _ in batch], [t for _, _, t in batch])
            return (img * txt).sum(-1)

        per_cell: list[list[float]] = [[] for _ in records]
        for (b, _, _), c in zip(items, per_item(cosines, items, f"{self.name} model")):
            if isinstance(c, Failed):
                failures[b] = failures[b] or c.reason
            else:
                per_cell[b].append(float(c))
        scores = torch.full((len(records),), float("nan"))
        for b in {b for b, _, _ in items}:
            if not failures[b]:
                scores[b] = sum(per_cell[b]) / len(per_cell[b])
        return RewardOutput(scores=scores, failures=failures, details={"cell_cosine": per_cell})


__all__ = ["T2ISClipTReward", "T2ISConsistencyReward", "grid_cells"]
