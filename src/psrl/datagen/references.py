"""Stage 5, ``references``: re-render every subject crop in a new context with a single-subject reference model
(FLUX.1 Kontext), so that training references are not pixel copies of the target (PSR's guard against the
copy-paste shortcut, arXiv 2512.01236).

Each crop gets the instruction "The same <subject> on a plain white background." or "The same <subject> <a scene
other than the target's>." (``references.white_background_prob``), and its own seed. A crop the model refuses
(unreadable, too small or too elongated for its latent grid) rejects the sample (``reference_error``).
"""
from __future__ import annotations

import random
from pathlib import Path

from psrl.datagen import templates
from psrl.datagen.config import DataPipelineConfig
from psrl.datagen.generation import Renderer, RendererStage
from psrl.datagen.runner import kept, rejected
from psrl.images import save_image
from psrl.seeding import stable_seed
from psrl.data.records import Record, RecordError, SubjectRef

REFERENCE_DIR = "references"


class ReferencesStage(RendererStage):
    name = "references"
    input_stage = "ground"

    def __init__(self, cfg: DataPipelineConfig, dataset: str | Path, device="cpu", renderer: Renderer | None = None):
        super().__init__(cfg, dataset, device, renderer)
        # a batch of samples holds 2-4 references each; the renderer gets references.batch_size at a time
        self.batch_size = max(1, cfg.references.batch_size // 2)

    def jobs(self, e: dict) -> list[tuple[Record, int, str]]:
        """One (record, seed, output path) per subject of sample ``e``."""
        rng = random.Random(stable_seed(e["seed"], "references", bits=31))
        scene = (e.get("slots") or {}).get("scene")
        out = []
        for i, (phrase, crop) in enumerate(zip(e["phrases"], e["crops"])):
            text = templates.reference_instruction(phrase, rng, self.cfg.references.white_background_prob, scene)
            record = Record(id=f"{e['id']}_{i}", prompt=text, subjects=(SubjectRef(image=crop, phrase=phrase),))
            out.append((record, stable_seed(e["seed"], "reference", i, bits=31), f"{REFERENCE_DIR}/{e['id']}_{i}.png"))
        return out

    def process(self, batch: list[dict]) -> list[dict]:
        jobs = [(e["id"], job) for e in batch for job in self.jobs(e)]
        failed: dict[str, str] = {}
        step = self.cfg.references.batch_size
        for start in range(0, len(jobs), step):
            chunk = jobs[start:start + step]
            try:
                self._render([job for _, job in chunk])
            except RecordError:
                # a bad crop (unreadable, too small or elongated for the model): find it, keep the others
                for sid, job in chunk:
                    try:
                        self._render([job])
                    except RecordError as err:
                        failed.setdefault(sid, str(err))
        out = []
        for e in batch:
            if e["id"] in failed:
                out.append(rejected(e, "reference_error", failed[e["id"]]))
                continue
            mine = [job for sid, job in jobs if sid == e["id"]]
            out.append(kept(e, references=[rel for _, _, rel in mine],
                            reference_prompts=[r.prompt for r, _, _ in mine]))
        return out

    def _render(self, jobs: list[tuple[Record, int, str]]) -> None:
        images = self.renderer([r for r, _, _ in jobs], [s for _, s, _ in jobs])
        for (_, _, rel), image in zip(jobs, images):
            save_image(image, self.dataset / rel)
