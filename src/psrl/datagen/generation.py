"""Model access for the image-making stages, kept behind one small callable so tests can swap in anything.

A *renderer* maps ``(records, seeds) -> images [B, 3, H, W] in [0, 1]``. Each image's initial noise comes from its
own CPU generator seeded with its sample's seed, so an image does not depend on which batch or rank made it.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from psrl.datagen.config import DataPipelineConfig, GenerationConfig
from psrl.datagen.runner import BaseStage
from psrl.data.records import Record, resolve_records

log = logging.getLogger(__name__)

Renderer = Callable[[Sequence[Record], Sequence[int]], Tensor]


def policy_renderer(gen: GenerationConfig, device: torch.device | str, *, dataset: str | Path | None = None
                    ) -> Renderer:
    """A renderer over ``build_policy(gen.model)``'s ODE ``generate`` with ``gen``'s steps, size and guidance.

    ``dataset``: the folder the records' ``subjects[i].image`` paths are relative to; each batch is resolved under it
    (:func:`psrl.data.records.resolve_records`) before the policy sees it, as every consumer receives records.

    Raises:
        RecordError: from a render call, when a batch's image path is absolute or escapes ``dataset``.
    """
    from psrl.sampling import SamplingConfig
    from psrl.models.factory import build_policy

    model_cfg = gen.model
    policy = build_policy(model_cfg, device)
    sampling = SamplingConfig(num_steps=gen.num_steps, height=gen.height, width=gen.width,
                              guidance_scale=gen.guidance_scale, noise_level=0.0)
    log.info("renderer: %s (%s) on %s, %d steps at %dx%d", model_cfg.name, model_cfg.path, device, gen.num_steps,
             gen.width, gen.height)

    def render(records: Sequence[Record], seeds: Sequence[int]) -> Tensor:
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        batch = resolve_records(records, dataset, source="renderer") if dataset is not None else list(records)
        return policy.generate(batch, sampling, generators)

    return render


class RendererStage(BaseStage):
    """A stage whose images come from a renderer: ``renderer`` when given (tests), else :func:`policy_renderer`
    over the stage's own config section (``cfg.<name>``, a :class:`GenerationConfig`), its records' images resolved
    under the dataset. Built in :meth:`setup`; a stage that may need no image (``reedit``) calls
    :meth:`get_renderer` on first use instead."""

    def __init__(self, cfg: DataPipelineConfig, dataset: str | Path, device="cpu", renderer: Renderer | None = None):
        super().__init__(cfg, dataset, device)
        self.renderer = renderer
        self.batch_size = getattr(cfg, self.name).batch_size

    def setup(self) -> None:
        self.get_renderer()

    def get_renderer(self) -> Renderer:
        if self.renderer is None:
            self.renderer = policy_renderer(getattr(self.cfg, self.name), self.device, dataset=self.dataset)
        return self.renderer
