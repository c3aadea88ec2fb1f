"""``psrl reward-model pairs``: grids -> cells -> labelled pairs, as resumable, shardable stages of the data
pipeline's machinery (:func:`psrl.datagen.runner.run_stage`: one manifest line per sample, finished samples
skipped on the next run, ranks of ``accelerate launch`` / ``torchrun`` each take a share and rank 0 merges).

Stages, in one dataset folder:

1. ``pair_cells``: each grid image is cut into its cells (:mod:`psrl.reward_model.grids`), saved as
   ``cells/<grid id>/<k>.png``. Rejected (counted in ``stats.json``, the line named in ``detail``): an input line
   that is not valid, an unreadable or missing image, no grid size, a grid that does not divide the image.
2. ``pair_labels`` (with a teacher): every pair of cells of a grid is sent to the teacher judge (an
   OpenAI-compatible VLM server through :class:`psrl.rewards.vlm.transports.RemoteTransport`, or a local one) with
   the PaCo prompt; a reply whose first word is not Yes or No is rejected with the raw text kept.

Then :func:`export_pairs` writes ``pairs.jsonl`` (every labelled pair), ``train.jsonl`` / ``heldout.jsonl`` (split
by grid) and ``to_label.csv`` (pairs still without a label: fill its ``label`` column and pass it as ``--labels``).
Human labels (``--labels``) are joined at export, so a labels file can grow between runs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from psrl.config import check_range
from psrl.datagen.manifest import read_kept
from psrl.datagen.runner import BaseStage, kept, rejected
from psrl.data.records import RecordError, image_filename, resolve_under
from psrl.images import IMAGE_SUFFIXES, ImageLoadError, load_image, save_image
from psrl.data.grid_prompt import cell_boxes, find_grid_size
from psrl.reward_model.grids import GridError, cell_pairs, parse_grid_spec
from psrl.fileio import jsonl_lines
from psrl.reward_model.pairs import (PairExample, not_json, parse_judge_reply, read_labels, response_from_label,
                                     split_heldout, write_pairs)
from psrl.rewards.vlm.prompts import PACO_TEMPLATES, paco_prompt

logger = logging.getLogger(__name__)

CELLS_STAGE, LABELS_STAGE = "pair_cells", "pair_labels"
CELLS_DIR = "cells"


# alike on purpose: a typed field list, the shape of every config section
@dataclass
class TeacherConfig:
    """The judge that labels pairs.

    Attributes:
        transport: ``remote`` (an OpenAI-compatible server: vLLM, sglang, an API) or ``local`` (transformers).
        url: the server's base URL, e.g. http://127.0.0.1:8000/v1 (remote).
        model: the model name the server expects (remote).
        api_key_env: environment variable holding the API key (remote; the key itself is never written).
        path: model folder or hub id (local).
        max_new_tokens: longest reply (answer and reasons).
        temperature: sampling temperature of the reply (0 = greedy).
        timeout, retries, max_concurrency: per-request timeout in seconds, retries, parallel requests (remote).
        batch_size: pairs per stage batch (and per local forward pass).
    """

    # alike on purpose: the endpoint fields of datagen's EndpointConfig (the same names), under a judge's defaults,
    # plus the local transport's
    transport: Literal["remote", "local"] = "remote"
    url: str | None = None
    model: str = "default"
    api_key_env: str | None = None
    path: str | None = None
    max_new_tokens: int = 512
    temperature: float = 0.0
    timeout: float = 120.0
    retries: int = 3
    max_concurrency: int = 8
    batch_size: int = 16

    def __post_init__(self):
        check_range(self, ("max_new_tokens", "batch_size"), 1, section="teacher")


@dataclass
class PairsConfig:
    """How grids become labelled pairs (saved as ``<dir>/pairs_config.json``; a re-run reuses it).

    Attributes:
        grids: a JSONL of grids (``{"id", "image", "prompt", "theme"?, "grid"?}``, image paths relative to the
            file's folder) or a folder of grid images each with a ``<stem>.txt`` prompt.
        grid: the grid size for every image (``2x2``); empty: each line's ``grid``, else the first ``RxC`` in its
            prompt.
        template: the PaCo prompt (``v1`` with the theme, ``v3`` without) or a custom text with ``{theme}``.
        teacher: the labelling judge; no ``url`` (remote) or ``path`` (local) means no teacher.
        labels: a human labels CSV/JSONL (``id,label,reason``); joined at export, taking precedence.
        heldout_fraction: the share of grids written to heldout.jsonl instead of train.jsonl.
        seed: seed of the held-out split.
    """

    grids: str = ""
    grid: str = ""
    template: str = "v1"
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    labels: str | None = None
    heldout_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self):
        if self.grid:
            parse_grid_spec(self.grid)
        check_range(self, "heldout_fraction", 0, 1, hi_open=True)
        if self.template not in PACO_TEMPLATES and "{theme}" not in self.template and len(self.template) < 20:
            # a typo such as "v2" would otherwise become the whole prompt (paco_prompt passes unknown names through)
            raise ValueError(f"template {self.template!r} is neither a PaCo template ({sorted(PACO_TEMPLATES)}) nor "
                             "a prompt text (a custom text has a {theme} slot or is at least 20 characters)")

    @property
    def has_teacher(self) -> bool:
        return bool(self.teacher.url if self.teacher.transport == "remote" else self.teacher.path)


# ---------------------------------------------------------------------------------------------- inputs
def read_grids(source: str | Path) -> tuple[Path, list[dict]]:
    """``(root the image paths are relative to, [{"id", "image", "prompt", "theme", "grid", "where", "error"?}])``.
    A line that cannot be used carries ``error: (reason, detail)`` and becomes a rejected sample, so it is
    counted with the others.

    Raises:
        RecordError: the source does not exist.
    """
    source = Path(source)
    if source.is_dir():
        items = []
        for img in sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            item = {"id": img.stem, "image": img.name, "where": str(img), "grid": None}
            txt = img.with_suffix(".txt")
            if not txt.is_file():
                item["error"] = ("no_prompt", f"{img}: no prompt file {txt.name} beside it")
            else:
                item["prompt"] = item["theme"] = txt.read_text().strip()
            items.append(item)
        return source, items
    if not source.is_file():
        raise RecordError(f"grids not found: {source} (a JSONL file or a folder of images with .txt prompts)")
    items, seen = [], set()
    for where, d in jsonl_lines(source):
        item = {"id": f"line-{where.rpartition(':')[2]}", "where": where, "grid": None}
        if problem := not_json(where, d):
            item["error"] = ("bad_line", problem)
            items.append(item)
            continue
        ok = isinstance(d, dict) and all(isinstance(d.get(k), str) and d[k].strip() for k in ("id", "image", "prompt"))
        if not ok:
            item["error"] = ("bad_line", f"{where}: a grid line needs non-empty strings id, image and prompt")
        elif d["id"] in seen:
            item["error"] = ("bad_line", f"{where}: duplicate grid id {d['id']!r}")
        else:
            seen.add(d["id"])
            item.update(id=d["id"], image=d["image"], prompt=d["prompt"], theme=d.get("theme") or d["prompt"],
                        grid=d.get("grid"))
        items.append(item)
    return source.parent, items


# ---------------------------------------------------------------------------------------------- stages
class CellsStage(BaseStage):
    """Cut each grid into cells (``pair_cells``)."""

    name = CELLS_STAGE
    batch_size = 8

    def __init__(self, cfg: PairsConfig, dataset: str | Path):
        self.cfg, self.dataset = cfg, Path(dataset)
        self.root, self.items = read_grids(cfg.grids)

    def inputs(self, dataset: Path) -> list[dict]:
        return self.items

    def _grid(self, item: dict) -> tuple[int, int]:
        spec = self.cfg.grid or item.get("grid")
        if spec:
            return parse_grid_spec(spec)
        size = find_grid_size(item["prompt"])
        if size is None:
            raise GridError("no grid size: the prompt names no ROWSxCOLS (pass --grid 2x2)")
        return size

    def process(self, batch: list[dict]) -> list[dict]:
        return [self._one(item) for item in batch]

    def _one(self, item: dict) -> dict:
        if "error" in item:
            return rejected({k: v for k, v in item.items() if k != "error"}, *item["error"])
        where = item["where"]
        try:
            rows, cols = self._grid(item)
        except GridError as e:
            return rejected(item, "no_grid_size" if "no grid size" in str(e) else "bad_grid", f"{where}: {e}")
        try:
            image = load_image(resolve_under(self.root, item["image"], what=f"{where}: image"))
        except (ImageLoadError, RecordError) as e:
            return rejected(item, "image_unreadable", f"{where}: {e}")
        try:
            if rows * cols < 2:
                raise ValueError(f"a {rows}x{cols} grid has fewer than 2 cells")
            boxes = cell_boxes(image.width, image.height, rows, cols, min_side=1, exact=True)
        except ValueError as e:
            return rejected(item, "grid_does_not_divide", f"{where}: {e}")
        folder = Path(CELLS_DIR) / image_filename(item["id"], "")
        cells = []
        for k, box in enumerate(boxes):
            rel = (folder / f"{k}.png").as_posix()
            save_image(image.crop(box), self.dataset / rel)
            cells.append(rel)
        return kept(item, cells=cells, grid=f"{rows}x{cols}")

    def extra_stats(self, entries: list[dict]) -> dict:
        return {"cells": sum(len(e.get("cells") or []) for e in entries)}


def pair_entries(dataset: str | Path, template: str) -> list[dict]:
    """Every pair of cells of every kept grid: ``{"id": "<grid>:<i>-<j>", "images", "prompt", "group", "where"}``."""
    out = []
    for g in read_kept(dataset, CELLS_STAGE):
        text = paco_prompt(template, g["theme"])
        for i, j in cell_pairs(len(g["cells"])):
            out.append({"id": f"{g['id']}:{i}-{j}", "images": [g["cells"][i], g["cells"][j]], "prompt": text,
                        "group": g["id"], "where": f"{g['where']} cells {i},{j}"})
    return out


class LabelsStage(BaseStage):
    """Ask the teacher judge about every pair (``pair_labels``)."""

    name = LABELS_STAGE

    def __init__(self, cfg: PairsConfig, dataset: str | Path, device="cpu", transport=None):
        self.cfg, self.dataset, self.device = cfg, Path(dataset), device
        self.transport = transport
        self.batch_size = cfg.teacher.batch_size

    def inputs(self, dataset: Path) -> list[dict]:
        return pair_entries(dataset, self.cfg.template)

    def setup(self) -> None:
        if self.transport is None:
            from psrl.rewards.vlm.transports import build_transport

            t = self.cfg.teacher  # build_transport takes the keys of both transports and uses its own
            self.transport = build_transport(transport=t.transport, url=t.url, model=t.model,
                                             api_key_env=t.api_key_env, timeout=t.timeout, retries=t.retries,
                                             max_concurrency=t.max_concurrency, path=t.path, device=self.device,
                                             batch_size=t.batch_size)

    def process(self, batch: list[dict]) -> list[dict]:
        from psrl.rewards.isolation import Failed
        from psrl.rewards.vlm.transports import JudgeRequest

        out: list[dict | None] = [None] * len(batch)
        requests, index = [], []
        for n, e in enumerate(batch):
            try:
                images = [load_image(self.dataset / p) for p in e["images"]]
            except ImageLoadError as err:
                out[n] = rejected(e, "image_unreadable", f"{e['where']}: {err}")
                continue
            requests.append(JudgeRequest(images, e["prompt"]))
            index.append(n)
        t = self.cfg.teacher
        replies = self.transport.generate(requests, t.max_new_tokens, t.temperature) if requests else []
        for n, reply in zip(index, replies):
            e = batch[n]
            if isinstance(reply, Failed):
                out[n] = rejected(e, "teacher_failed", f"{e['where']}: {reply.reason}")
                continue
            response, why = parse_judge_reply(reply)
            out[n] = (kept(e, response=response) if response is not None
                      else rejected(e, "unparsable_reply", f"{e['where']}: {why}", raw=reply))
        return out

    def extra_stats(self, entries: list[dict]) -> dict:
        yes = sum(1 for e in entries if e.get("status") == "kept" and e["response"].startswith("Yes"))
        return {"yes": yes, "no": sum(1 for e in entries if e.get("status") == "kept") - yes}


# ---------------------------------------------------------------------------------------------- export
def export_pairs(dataset: str | Path, cfg: PairsConfig) -> dict:
    """Write ``pairs.jsonl``, ``train.jsonl``, ``heldout.jsonl`` and ``to_label.csv`` in ``dataset`` from the
    teacher's labels and/or the human labels file (human labels win). Returns counts, including every problem of
    the labels file (``label_problems``: lines naming the file, line and reason; those pairs stay unlabelled)."""
    import csv
    import io

    from psrl.datagen.manifest import manifest_path, read_manifest
    from psrl.fileio import write_text_atomic

    dataset = Path(dataset)
    pairs = pair_entries(dataset, cfg.template)
    teacher = {}
    if manifest_path(dataset, LABELS_STAGE).is_file():
        teacher = {e["id"]: e["response"] for e in read_manifest(dataset, LABELS_STAGE) if e["status"] == "kept"}
    human, problems = read_labels(cfg.labels) if cfg.labels else ({}, [])
    known = {p["id"] for p in pairs}
    unknown = sorted(set(human) - known)
    for pid in unknown:
        problems.append(f"{human[pid][2]}: pair {pid!r} is not a pair of this dataset")
    examples, unlabelled = [], []
    for p in pairs:
        if p["id"] in human:
            label, reason, _ = human[p["id"]]
            response = response_from_label(label, reason)
        elif p["id"] in teacher:
            response = teacher[p["id"]]
        else:
            unlabelled.append(p)
            continue
        examples.append(PairExample(id=p["id"], images=tuple(p["images"]), prompt=p["prompt"], response=response,
                                    group=p["group"]))
    train, held = split_heldout(examples, cfg.heldout_fraction, cfg.seed)
    write_pairs(examples, dataset / "pairs.jsonl")
    write_pairs(train, dataset / "train.jsonl")
    write_pairs(held, dataset / "heldout.jsonl")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["id", "label", "reason", "image_a", "image_b", "prompt"])
    for p in unlabelled:
        writer.writerow([p["id"], "", "", *p["images"], p["prompt"]])
    write_text_atomic(dataset / "to_label.csv", buf.getvalue())
    counts = {"pairs": len(pairs), "labelled": len(examples), "yes": sum(e.label == "Yes" for e in examples),
              "no": sum(e.label == "No" for e in examples), "human": sum(1 for p in pairs if p["id"] in human),
              "teacher": sum(1 for p in pairs if p["id"] in teacher and p["id"] not in human),
              "unlabelled": len(unlabelled), "train": len(train), "heldout": len(held),
              "label_problems": problems}
    for line in problems:
        logger.warning("labels: %s", line)
    return counts


__all__ = ["CELLS_STAGE", "LABELS_STAGE", "CellsStage", "LabelsStage", "PairsConfig", "TeacherConfig",
           "export_pairs", "pair_entries", "read_grids"]
