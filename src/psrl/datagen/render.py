"""Stage 3, ``render``: the multi-subject target image of each prompt, from a text-to-image policy (FLUX)."""
from __future__ import annotations

from psrl.datagen.generation import RendererStage
from psrl.datagen.runner import kept
from psrl.images import save_image
from psrl.seeding import stable_seed
from psrl.data.records import Record

TARGET_DIR = "targets"


class RenderStage(RendererStage):
    name = "render"
    input_stage = "prompts"

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
