"""Stage 3, ``render``: the multi-subject target image of each prompt, from a text-to-image policy (FLUX)."""
from __future__ import annotations

from pathlib import Path

from psrl.datagen.config import DataPipelineConfig
from psrl.datagen.generation import Renderer, policy_renderer
from psrl.datagen.runner import BaseStage, kept
from psrl.images import save_image
from psrl.seeding import stable_seed
from psrl.data.records import Record

TARGET_DIR = "targets"


class RenderStage(BaseStage):
    name = "render"
    input_stage = "prompts"

    # alike on purpose: BaseStage's shape (a model or client injected by tests, else built in setup)
    def __init__(self, cfg: DataPipelineConfig, dataset: str | Path, device="cpu", renderer: Renderer | None = None):
        super().__init__(cfg, dataset, device)
        self.renderer = renderer
        self.batch_size = cfg.render.batch_size

    def setup(self) -> None:
        if self.renderer is None:
            self.renderer = policy_renderer(self.cfg.render, self.device)

    def process(self, batch: list[dict]) -> list[dict]:
        records = [Record(id=e["id"], prompt=e["prompt"]) for e in batch]
        seeds = [stable_seed(e["seed"], "render", bits=31) for e in batch]
        images = self.renderer(records, seeds)
        out = []
        for e, image, seed in zip(batch, images, seeds):
            rel = f"{TARGET_DIR}/{e['id']}.png"
            save_image(image, self.dataset / rel)
            out.append(kept(e, target=rel, render_seed=seed,
                            target_size=[int(image.shape[-1]), int(image.shape[-2])]))
        return out
