"""The T2IS-Bench metrics (rules and sources in :mod:`psrl.bench.t2is`), as rewards ``psrl bench eval`` builds by
dotted path (``psrl.bench.t2is_metrics:T2ISConsistency``). Each takes grid images ``[B, 3, H, W]`` in [0, 1] and
the records of :func:`psrl.bench.t2is.parse_entry` (``tags["grid"]``, ``criteria``, ``alignment``), cuts the cells
(:func:`psrl.data.grid_prompt.cut_grid`) and returns one score per set in [0, 1] (CellMean: the inner reward's unit).
A set that cannot be scored is NaN with the reason, for that set alone; judge options are those of
:mod:`psrl.rewards.vlm_rewards` (``path``, ``transport``, ``url``, ``model``, ...).
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from psrl.bench.t2is import CONSISTENCY_QUESTION, VQASCORE_QUESTION
from psrl.data.grid_prompt import cut_grid
from psrl.data.records import Record
from psrl.rewards.base import RewardOutput, build_reward
from psrl.rewards.images import to_pil_images
from psrl.rewards.vlm.transports import JudgeRequest
from psrl.rewards.vlm_rewards import _judge


def _cells(image, record) -> list:
    grid = record.tags.get("grid")
    if not grid:
        raise ValueError(f"record {record.id} has no grid size (tags['grid'])")
    return cut_grid(image, int(grid[0]), int(grid[1]), min_side=1)


class _JudgeMetric:
    """Builds requests per set, asks the judge for P(Yes) once for the whole batch, and reduces per set."""

    def __init__(self, device, dimension: str, canonicalize: bool, judge_kwargs: dict):
        self.dimension = dimension
        self.judge = _judge(device, judge_kwargs, canonicalize=canonicalize)

    def _requests(self, cells: list, record) -> tuple[list[JudgeRequest], list[int]]:
        """``(requests, group of each request)`` for the grid's ``cells`` (PIL images): the set score is the mean over
        groups of the mean in a group."""
        raise NotImplementedError

    def __call__(self, images, records: Sequence) -> RewardOutput:
        n = len(records)
        failures: list[str | None] = [None] * n
        spans, requests, groups = {}, [], []
        for b, (image, record) in enumerate(zip(images, records)):
            try:
                pils, why = to_pil_images(_cells(image, record))
                if any(why):
                    raise ValueError(f"cell unusable: {next(w for w in why if w)}")
                reqs, grp = self._requests(pils, record)
            except ValueError as e:  # a missing grid, criterion list or question list: this set only
                failures[b] = str(e)
                continue
            spans[b] = (len(requests), len(requests) + len(reqs))
            requests += reqs
            groups += grp
        answers = self.judge.p_yes(requests)
        scores = torch.full((n,), float("nan"))
        per_group: list[list[float] | None] = [None] * n
        for b, (s, e) in spans.items():
            bad = [why for _, why, _ in answers[s:e] if why]
            if bad:
                failures[b] = f"{self.dimension}: {bad[0]}"
                continue
            by_group: dict[int, list[float]] = {}
            for (p, _, _), g in zip(answers[s:e], groups[s:e]):
                by_group.setdefault(g, []).append(p)
            per_group[b] = [sum(v) / len(v) for _, v in sorted(by_group.items())]
            scores[b] = sum(per_group[b]) / len(per_group[b])
        return RewardOutput(scores=scores, failures=failures, details={"group_scores": per_group})


class T2ISConsistency(_JudgeMetric):
    """Identity / Style / Logic: mean over the dimension's criteria of the mean P(Yes) over cell pairs i < j.
    ``judge_size``: the side both cells are resized to (T2IS-Eval asks for 512x512)."""

    name = "t2is_consistency"

    def __init__(self, device="cpu", *, dimension: str, judge_size: int = 512, canonicalize: bool = False,
                 **judge_kwargs):
        if dimension not in ("Identity", "Style", "Logic"):
            raise ValueError(f"t2is_consistency: dimension must be Identity, Style or Logic, got {dimension!r}")
        super().__init__(device, dimension, canonicalize, judge_kwargs)
        self.judge_size = int(judge_size)

    def _requests(self, cells, record):
        texts = list((record.tags.get("criteria") or {}).get(self.dimension, {}).values())
        if not texts:
            raise ValueError(f"case {record.tags.get('case')}: no {self.dimension} criteria")
        side = (self.judge_size, self.judge_size)
        pils = [p.resize(side) for p in cells]
        reqs, groups = [], []
        for g, text in enumerate(texts):
            for a, b in itertools.combinations(pils, 2):
                reqs.append(JudgeRequest([a, b], CONSISTENCY_QUESTION.format(criterion=text)))
                groups.append(g)
        return reqs, groups


class T2ISAlignment(_JudgeMetric):
    """Entity / Attribute / Relation: P(Yes) to the VQAScore question for each of a cell's questions, averaged per
    cell, then over the cells (every cell has its own list, from ``prompt_alignment.json``)."""

    name = "t2is_alignment"

    def __init__(self, device="cpu", *, dimension: str, question: str = VQASCORE_QUESTION,
                 canonicalize: bool = False, **judge_kwargs):
        if dimension not in ("Entity", "Attribute", "Relation"):
            raise ValueError(f"t2is_alignment: dimension must be Entity, Attribute or Relation, got {dimension!r}")
        super().__init__(device, dimension, canonicalize, judge_kwargs)
        self.question = question

    def _requests(self, cells, record):
        per_cell = record.tags.get("alignment")
        if not per_cell:
            raise ValueError(f"case {record.tags.get('case')}: no prompt-alignment criteria (prompt_alignment.json)")
        reqs, groups = [], []
        for g, (pil, crit) in enumerate(zip(cells, per_cell)):
            questions = crit.get(self.dimension) if isinstance(crit, dict) else None
            if not questions:
                raise ValueError(f"case {record.tags.get('case')}: image {g} has no {self.dimension} questions")
            for q in questions:
                reqs.append(JudgeRequest([pil], self.question.format(text=q)))
                groups.append(g)
        return reqs, groups


class CellMean:
    """Any psrl reward (``reward`` + its ``args``) on every cell of the grid, cell records carrying the cell's
    sub-prompt (the whole prompt when the prompt has no per-cell markers); the set's score is the mean, NaN with
    the first cell's reason when a cell is unscorable."""

    name = "cell_mean"

    def __init__(self, device="cpu", *, reward: str = "aesthetic", args: dict | None = None):
        self.inner = build_reward(reward, dict(args or {}), device=device)
        self.name = f"cell_mean({reward})"

    def __call__(self, images, records: Sequence) -> RewardOutput:
        n = len(records)
        scores = torch.full((n,), float("nan"))
        failures: list[str | None] = [None] * n
        per_cell: list[list[float] | None] = [None] * n
        for b, (image, record) in enumerate(zip(images, records)):
            try:
                cells = _cells(image, record)
            except ValueError as e:
                failures[b] = str(e)
                continue
            subs = record.tags.get("sub_prompts") or [record.prompt] * len(cells)
            cell_records = [Record(id=f"{record.id}#{i}", prompt=p, tags=dict(record.tags))
                            for i, p in enumerate(subs)]
            out = self.inner(torch.stack(cells), cell_records)
            vals = out.scores.tolist()
            bad = [f for f in out.failures if f]
            if bad:
                failures[b] = f"cell: {bad[0]}"
                continue
            per_cell[b] = vals
            scores[b] = sum(vals) / len(vals)
        return RewardOutput(scores=scores, failures=failures, details={"cell_scores": per_cell})
