"""Stage 1, ``subjects``: plan the samples. Each sample draws 2-4 distinct categories from a vocabulary and the
task it will serve (3 subjects -> Three, 4 -> Four, 2 -> one of Attribute/Action/Background/Position/Complex).

Every sample gets its own seed derived from the config seed and its index, recorded in the manifest; later stages
derive their randomness from it, so a sample's content does not depend on batching, sharding or resumption.
"""
from __future__ import annotations

import random
from collections import Counter
from importlib import resources
from pathlib import Path

from psrl.datagen.config import DataPipelineConfig
from psrl.datagen.runner import BaseStage, kept
from psrl.errors import PsrlError
from psrl.seeding import stable_seed

ID_WIDTH = 7


def sample_id(index: int) -> str:
    return f"{index:0{ID_WIDTH}d}"


def phrase_of(category: str) -> str:
    """The text phrase of a vocabulary name: its first ``/`` alternative, lower-cased (``"Cabinet/Shelf"`` ->
    ``"cabinet"``). The phrase is what prompts say and what the detector is asked for."""
    return category.split("/")[0].strip().lower()


def load_vocabulary(path: str | Path | None = None) -> list[str]:
    """Category names, one per line (blank lines and ``#`` comments skipped); ``None`` = shipped Objects365.
    Names whose phrases coincide are merged (first one kept): a sample's subjects must be distinguishable."""
    if path is None:
        text = resources.files("psrl.datagen").joinpath("assets/objects365.txt").read_text()
        where = "objects365.txt"
    else:
        p = Path(path)
        if not p.is_file():
            raise PsrlError(f"vocabulary file not found: {p}")
        text, where = p.read_text(), str(p)
    names, seen = [], set()
    for line in text.splitlines():
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if phrase_of(name) and phrase_of(name) not in seen:
            seen.add(phrase_of(name))
            names.append(name)
    if len(names) < 4:
        raise PsrlError(f"{where}: a vocabulary needs at least 4 distinct categories, found {len(names)}")
    return names


def plan_sample(index: int, vocab: list[str], cfg: DataPipelineConfig) -> dict:
    """The subjects and task of sample ``index`` (pure: same inputs, same plan)."""
    seed = stable_seed(cfg.seed, "sample", index, bits=31)
    rng = random.Random(seed)
    n = rng.choices(cfg.subjects.counts, weights=cfg.subjects.count_weights)[0]
    categories = rng.sample(vocab, n)
    task = {3: "Three", 4: "Four"}.get(n) or rng.choice(cfg.subjects.two_subject_tasks)
    return {"id": sample_id(index), "index": index, "seed": seed, "task": task, "categories": categories,
            "phrases": [phrase_of(c) for c in categories]}


class SubjectsStage(BaseStage):
    name = "subjects"
    input_stage = None
    batch_size = 256

    def __init__(self, cfg: DataPipelineConfig, dataset=None, device=None):  # plans need no files or models
        super().__init__(cfg, dataset, device)
        self.vocab = load_vocabulary(cfg.subjects.vocab)

    def inputs(self, dataset: Path) -> list[dict]:
        return [{"id": sample_id(i), "index": i} for i in range(self.cfg.subjects.num_samples)]

    def process(self, batch: list[dict]) -> list[dict]:
        return [kept(plan_sample(e["index"], self.vocab, self.cfg)) for e in batch]

    def extra_stats(self, entries: list[dict]) -> dict:
        by_task = Counter(e["task"] for e in entries)
        return {"vocabulary": len(self.vocab), "tasks": dict(sorted(by_task.items()))}
