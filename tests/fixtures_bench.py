"""A small PSRBench-format data root built in code (tiny PNG references, all seven subsets, a few bad entries),
a DreamBench-format folder, and light test metrics / a test policy usable by dotted path (``fixtures_bench:X``)
from subprocesses (put ``tests/`` on ``PYTHONPATH``)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from psrl.rewards.base import RewardOutput

COLORS = {"cat": (220, 120, 40), "dog": (120, 80, 40), "crab": (200, 30, 30), "calculator": (60, 60, 70),
          "airplane": (200, 200, 210), "trolley": (40, 120, 200), "zebra": (240, 240, 240), "car": (30, 30, 160),
          "ring": (230, 200, 40), "helicopter": (20, 150, 60)}

# (subset, instruction, categories) of the good entries; two per subset
GOOD = {
    "Attribute": [("The cat is wearing a cape and the crab is wearing a crown.", ["cat", "crab"]),
                  ("The dog wears a scarf and the cat wears a hat.", ["dog", "cat"])],
    "Action": [("The cat stretches and the dog runs in a backyard.", ["cat", "dog"]),
               ("The crab walks while the cat sleeps.", ["crab", "cat"])],
    "Background": [("The calculator on a sunny kitchen counter next to the ring.", ["calculator", "ring"]),
                   ("The car and the trolley in a snowy street.", ["car", "trolley"])],
    "Position": [("The airplane is above the trolley, near a runway at dawn.", ["airplane", "trolley"]),
                 ("The cat is to the left of the dog in a garden.", ["cat", "dog"])],
    "Complex": [("The zebra stands near a dusty road while the car idles in the background.", ["zebra", "car"]),
                ("The dog sits next to the calculator in a colorful playroom full of toys.", ["dog", "calculator"])],
    "Three": [("The ring and the car and the cat are in a desert.", ["ring", "car", "cat"]),
              ("The dog and the crab and the trolley on a beach.", ["dog", "crab", "trolley"])],
    "Four": [("The helicopter and the ring and the car and the cat in a desert.", ["helicopter", "ring", "car", "cat"]),  # noqa: E501
             ("The dog and the zebra and the airplane and the calculator at night.",
              ["dog", "zebra", "airplane", "calculator"])],
}
ANIMALS = {"cat", "dog", "crab", "zebra"}


def ref_path(category: str) -> str:
    return f"{'animals' if category in ANIMALS else 'subjects'}/{category}.png"


def _png(path: Path, color, size=(24, 20), mode="RGB") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", size, color)
    # a darker square so crops and detectors see some structure
    im.paste(tuple(c // 2 for c in color), (4, 4, 14, 12))
    im.convert(mode).save(path)


def entry(instruction: str, categories: list[str]) -> dict:
    d = {"instruction": instruction, "input_path": [ref_path(c) for c in categories]}
    for i, c in enumerate(categories, 1):
        d[f"category{i}"] = c
    return d


def make_psrbench(root: str | Path, *, bad: bool = True, per_subset: int = 2) -> Path:
    """Write the fixture data root. ``bad=True`` adds the deliberately bad entries listed in :data:`BAD`."""
    root = Path(root)
    for cat, color in COLORS.items():
        _png(root / ref_path(cat), color, mode="RGBA" if cat == "crab" else "RGB")
    for subset, items in GOOD.items():
        data = [entry(i, c) for i, c in items[:per_subset]]
        if bad:
            data += BAD.get(subset, [])
        (root / f"{subset}.json").write_text(json.dumps(data, indent=1))
    if bad:
        (root / "subjects" / "broken.png").write_bytes(b"not a png")
        (root / "Extra.json").write_text("[]")
    return root


# the bad entries, appended after the good ones (so their index is per_subset, per_subset + 1, ...)
BAD = {
    "Attribute": [entry("The cat and the ghost.", ["cat", "ghost"])],                       # missing file
    "Action": [{"instruction": "The cat runs.", "input_path": ["animals/cat.png", "animals/dog.png"],
                "category1": "cat"}],                                                         # count mismatch
    "Background": [{"instruction": "Escape.", "input_path": ["../outside.png", "subjects/car.png"],
                    "category1": "car", "category2": "car"}],                                 # escapes the root
    "Position": [entry("The airplane and the trolley at dawn.", ["airplane", "trolley"])],   # no relation
    "Complex": [{"instruction": "Broken file.", "input_path": ["subjects/broken.png", "subjects/car.png"],
                 "category1": "thing", "category2": "car"}],                                 # unreadable image
}


def make_dreambench(root: str | Path, subjects=("backpack", "cat", "dog")) -> Path:
    root = Path(root)
    for k, s in enumerate(subjects):
        for j in range(2):
            _png(root / s / f"0{j}.jpg", (40 * k + 20, 100, 200 - 30 * j))
    return root


class ColorPolicy:
    """A deterministic stand-in generator for benchmark plumbing tests: a flat image whose colour comes from the
    per-sample generator, with the first reference's colour pasted in a corner."""

    def __init__(self, size: int = 32):
        self.size = size
        self.calls = 0

    @classmethod
    def from_config(cls, model_cfg, device="cpu"):  # so `model.name: fixtures_bench:ColorPolicy` builds it
        return cls(**model_cfg.args)

    def load_lora(self, path):
        raise NotImplementedError("ColorPolicy has no LoRA")

    def generate(self, records, sampling, generator=None):
        self.calls += 1
        gens = generator if isinstance(generator, list) else [generator] * len(records)
        out = []
        for rec, g in zip(records, gens):
            color = torch.rand(3, 1, 1, generator=g)
            img = color.expand(3, self.size, self.size).clone()
            img[:, : self.size // 2, : self.size // 2] = 0.5
            out.append(img)
        return torch.stack(out)


class SlowMeanColor:
    """mean_color-like metric with a per-call sleep (to kill an evaluation midway) and NaN for prompts that
    contain 'ghost'. Also marks every call in a log file when ``log`` is set (to count recomputation)."""

    name = "slow_mean_color"

    def __init__(self, sleep: float = 0.0, log: str | None = None):
        # PSRL_TEST_METRIC_SLEEP slows a run down without changing the metric config (and so its hash)
        self.sleep = float(os.environ.get("PSRL_TEST_METRIC_SLEEP", sleep))
        self.log = log

    def __call__(self, images, records):
        if self.sleep:
            time.sleep(self.sleep)
        if self.log:
            with open(self.log, "a") as f:
                f.writelines(f"{r.id} {float(img.float().mean()):.6f}\n" for r, img in zip(records, images))
        scores = images.float().mean(dim=(1, 2, 3))
        failures = [None] * len(records)
        for i, r in enumerate(records):
            if "wears a scarf" in r.prompt:
                scores[i] = float("nan")
                failures[i] = "judge reply had no score"
        return RewardOutput(scores=scores, details={"judge_text": [f"[Thought]: ok [Score]: {s:.1f}" for s in
                                                                   scores.tolist()]}, failures=failures)


class RaisingOnCrab:
    """Raises for any batch containing a crab subject (to test per-sample retry of a failing batch)."""

    name = "raising_on_crab"

    def __call__(self, images, records):
        if any(s.phrase == "crab" for r in records for s in r.subjects):
            raise RuntimeError("detector crashed on crab")
        return RewardOutput(scores=torch.ones(len(records)))


class WordyJudge:
    """A judge that never writes a score: NaN for every sample, with a reason that holds colons (as real judge
    replies do), to test that failure summaries keep reasons whole."""

    name = "wordy_judge"

    def __call__(self, images, records):
        reason = "judge reply has no parsable '[Score]': I would rate it 8/10: the dog is clear"
        return RewardOutput(scores=torch.full((len(records),), float("nan")), failures=[reason] * len(records))


def metric_set_for_tests(log: str | None = None, sleep: float = 0.0) -> dict:
    """A plain-data metric set over test rewards (for ``parse_metrics`` / ``--metrics``)."""
    slow = {"reward": "fixtures_bench:SlowMeanColor", "args": {"sleep": sleep, "log": log}}
    return {
        "subject_consistency": {"reward": "fixtures_bench:RaisingOnCrab"},
        "semantic_alignment": {"default": slow, "per_subset": {"Position": {"reward": "mean_color"}}},
        "aesthetics": {"reward": "mean_color", "scale": 0.1},
    }
