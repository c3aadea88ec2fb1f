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

from psrl.datagen.config import GenerationConfig
from psrl.data.records import Record

log = logging.getLogger(__name__)

Renderer = Callable[[Sequence[Record], Sequence[int]], Tensor]


def policy_renderer(gen: GenerationConfig, device: torch.device | str, *, data_root: str | Path | None = None
                    ) -> Renderer:
    """A renderer over ``build_policy(gen.model)``'s ODE ``generate`` with ``gen``'s steps, size and guidance.

    ``data_root`` is where reference-conditioned policies resolve ``subjects[i].image``; it is given to the policy
    as ``model.args.data_root`` unless the config already sets one.
    """
    from dataclasses import replace

    from psrl.sampling import SamplingConfig
    from psrl.models.factory import build_policy

    model_cfg = gen.model
    if data_root is not None and gen.model.name != "flux" and "data_root" not in model_cfg.args:
        model_cfg = replace(model_cfg, args={**model_cfg.args, "data_root": str(data_root)})
    policy = build_policy(model_cfg, device)
    sampling = SamplingConfig(num_steps=gen.num_steps, height=gen.height, width=gen.width,
                              guidance_scale=gen.guidance_scale, noise_level=0.0)
    log.info("renderer: %s (%s) on %s, %d steps at %dx%d", model_cfg.name, model_cfg.path, device, gen.num_steps,
             gen.width, gen.height)

    def render(records: Sequence[Record], seeds: Sequence[int]) -> Tensor:
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        return policy.generate(list(records), sampling, generators)

    return render
