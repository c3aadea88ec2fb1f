"""``FluxPolicy``: FLUX.1 (dev or schnell layout) behind the :class:`psrl.models.base.Policy` protocol.

The policy drives diffusers components directly (no pipeline object) so that a rollout keeps every latent and the
log-prob of every step, and ``log_prob`` can recompute a step with the current weights. Everything a generation
depends on is reproduced from ``diffusers.FluxPipeline``: prompt encoding (CLIP pooled + T5 sequence), 2x2 latent
packing and position ids, the initial noise (``randn_tensor`` on the unpacked shape), the sigma schedule (the
scheduler's own ``set_timesteps(sigmas=linspace(1, 1/T, T), mu=shift(seq_len))``), ``timestep / 1000``, distilled
guidance when ``transformer.config.guidance_embeds`` and VAE decoding, so that with ``noise_level=0`` the output equals
the pipeline's (tested to < 1e-4 in fp32).

Subclasses (FLUX-Kontext and other reference-conditioned FLUX variants) override :meth:`encode_conditions` (extra
per-sample tensors in ``cond``) and :meth:`predict` (e.g. appending reference tokens to the sequence).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from psrl.data.records import Record
from psrl.models.config import ModelConfig
from psrl.models.flow_policy import FlowPolicyBase, Generator, scheduler_schedule
from psrl.models.loading import FLUX_COMPONENT_SPEC
from psrl.sampling import SamplingConfig


# ----------------------------------------------------------------------------- packing helpers (FLUX layout)
def pack_latents(latents: Tensor) -> Tensor:
    """``[B, C, h, w]`` -> ``[B, (h/2)(w/2), 4C]``: FLUX's 2x2 patch packing (``FluxPipeline._pack_latents``)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(latents: Tensor, latent_h: int, latent_w: int) -> Tensor:
    """Inverse of :func:`pack_latents` for an unpacked latent size ``latent_h x latent_w`` (both even)."""
    b, _, c4 = latents.shape
    x = latents.view(b, latent_h // 2, latent_w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, latent_h, latent_w)


def latent_image_ids(packed_h: int, packed_w: int, *, first: float = 0.0, device=None, dtype=torch.float32) -> Tensor:
    """``[packed_h * packed_w, 3]`` position ids ``(first, row, col)`` (``FluxPipeline._prepare_latent_image_ids``;
    Kontext marks reference tokens with ``first = 1``)."""
    ids = torch.zeros(packed_h, packed_w, 3)
    ids[..., 0] = first
    ids[..., 1] = ids[..., 1] + torch.arange(packed_h)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(packed_w)[None, :]
    return ids.reshape(packed_h * packed_w, 3).to(device=device, dtype=dtype)


class FluxPolicy(FlowPolicyBase):
    """FLUX.1 text-to-image policy with a LoRA on the transformer.

    Built like every policy (:class:`FlowPolicyBase`): ``FluxPolicy(components, cfg, device)`` with the
    ``FluxPipeline`` kwargs (``transformer``, ``vae``, ``text_encoder`` (CLIP), ``text_encoder_2`` (T5),
    ``tokenizer``, ``tokenizer_2``, ``scheduler``, a ``FlowMatchEulerDiscreteScheduler``) and a
    :class:`ModelConfig`: ``dtype`` of the frozen weights (LoRA weights and all SDE / log-prob math stay fp32),
    ``lora`` (``None``: no adapter), ``max_sequence_length`` (the T5 budget, 1..512: FLUX.1-dev's 512),
    ``gradient_checkpointing``, ``offload_frozen`` (text encoders and VAE on the CPU, visiting ``device`` only
    while they run). ``model.args``: ``guidance_embeds`` (``path: tiny`` only: dev-like, the default, or
    schnell-like).

    The rollout, log-prob recompute, generation and SFT loss are :class:`FlowPolicyBase`'s; this class supplies
    FLUX's hooks. Rollout layout: ``latents [B, T + 1, N, C]`` fp32 packed (``N = (H/16)(W/16)`` tokens for FLUX.1,
    ``C = 64``), ``log_probs [B, T]`` fp32 (0 on ODE steps), ``sigmas [T + 1]`` and ``timesteps [B, T]`` (0..1000
    scale) on the CPU, ``noisy [T]`` bool. ``cond``: ``prompt_embeds [B, L, D]`` (T5, ``L = max_sequence_length``)
    and ``pooled_prompt_embeds [B, D']`` (CLIP), in the frozen dtype. ``meta``: ``height``, ``width``, ``guidance``
    (float, or ``None`` when the transformer has no guidance embedding) and the ``sampling`` config.
    """

    name = "flux"
    COMPONENT_SPEC = FLUX_COMPONENT_SPEC
    TINY_ARGS = ("guidance_embeds",)

    @classmethod
    def tiny_components(cls, cfg: ModelConfig) -> dict:
        from psrl.models.tiny import tiny_flux_components

        return tiny_flux_components(seed=cfg.tiny_seed, guidance_embeds=bool(cfg.args.get("guidance_embeds", True)))

    def init_components(self, components: dict) -> list[nn.Module]:
        self.max_sequence_length = self.cfg.max_sequence_length
        if not 1 <= self.max_sequence_length <= 512:
            raise ValueError(f"max_sequence_length must be in [1, 512] (FLUX's T5 budget), got "
                             f"{self.max_sequence_length}")
        self.transformer: nn.Module = components["transformer"]
        self.vae: nn.Module = components["vae"]
        self.text_encoder: nn.Module = components["text_encoder"]
        self.text_encoder_2: nn.Module = components["text_encoder_2"]
        self.tokenizer = components["tokenizer"]
        self.tokenizer_2 = components["tokenizer_2"]
        self.scheduler = components["scheduler"]
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.patch_size = 2  # FLUX packs 2x2 latent patches into one token
        self.latent_channels = self.transformer.config.in_channels // 4
        self.guidance_embeds = bool(getattr(self.transformer.config, "guidance_embeds", False))
        return [self.text_encoder, self.text_encoder_2, self.vae]

    # ------------------------------------------------------------------ conditioning
    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """``(prompt_embeds [U, L, D], pooled_prompt_embeds [U, D'])`` for a list of prompts, exactly as
        ``FluxPipeline.encode_prompt`` (CLIP padded to its max length, pooled; T5 padded to max_sequence_length)."""
        prompts = list(prompts)
        with self._frozen_on_device(self.text_encoder) as clip:
            ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            pooled = clip(ids.to(next(clip.parameters()).device), output_hidden_states=False).pooler_output
        with self._frozen_on_device(self.text_encoder_2) as t5:
            ids = self.tokenizer_2(prompts, padding="max_length", max_length=self.max_sequence_length,
                                   truncation=True, return_tensors="pt").input_ids
            embeds = t5(ids.to(next(t5.parameters()).device), output_hidden_states=False)[0]
        return embeds.to(self.device), pooled.to(self.device)

    def encode_conditions(self, records: Sequence[Record], sampling: SamplingConfig) -> dict[str, Tensor]:
        """Per-sample conditioning, batch-first. Each distinct prompt is encoded once and shared by its group. A
        prompt longer than CLIP's 77 tokens or T5's ``max_sequence_length`` is truncated, as by ``FluxPipeline``,
        with a warning once per record naming the tokens dropped."""
        self._warn_truncated(records, self.tokenizer, self.tokenizer.model_max_length, "CLIP",
                             "CLIP (the pooled embedding)")
        self._warn_truncated(records, self.tokenizer_2, self.max_sequence_length, "T5", "model.max_sequence_length")
        prompts = [r.prompt for r in records]
        unique = list(dict.fromkeys(prompts))
        embeds, pooled = self.encode_prompts(unique)
        index = torch.tensor([unique.index(p) for p in prompts], device=self.device)
        return {"prompt_embeds": embeds[index], "pooled_prompt_embeds": pooled[index]}

    def encode(self, records: Sequence[Record], sampling: SamplingConfig) -> tuple[dict[str, Tensor], dict]:
        self.latent_size(sampling.height, sampling.width)
        meta = {"height": sampling.height, "width": sampling.width,
                "guidance": float(sampling.guidance_scale) if self.guidance_embeds else None}
        return self.encode_conditions(records, sampling), meta

    # ------------------------------------------------------------------ schedule
    def sigma_schedule(self, num_steps: int, image_seq_len: int) -> tuple[Tensor, Tensor]:
        """``(sigmas [T + 1], timesteps [T])`` float32 on the CPU, computed by the scheduler itself as
        ``FluxPipeline`` does: ``set_timesteps(sigmas=linspace(1, 1/T, T), mu=calculate_shift(seq_len))``."""
        use_flow_sigmas = getattr(self.scheduler.config, "use_flow_sigmas", False)
        sigmas = None if use_flow_sigmas else np.linspace(1.0, 1 / num_steps, num_steps)
        return scheduler_schedule(self.scheduler, num_steps, sigmas=sigmas, image_seq_len=image_seq_len)

    def schedule(self, sampling: SamplingConfig) -> tuple[Tensor, Tensor]:
        lat_h, lat_w = self.latent_size(sampling.height, sampling.width)
        return self.sigma_schedule(sampling.num_steps, (lat_h // 2) * (lat_w // 2))

    def initial_noise(self, n: int, sampling: SamplingConfig, generator: Generator) -> Tensor:
        """Packed fp32 noise drawn like ``FluxPipeline.prepare_latents`` (``randn_tensor`` on ``[B, C, h, w]``)."""
        from diffusers.utils.torch_utils import randn_tensor

        if isinstance(generator, (list, tuple)) and len(generator) != n:
            raise ValueError(f"got {len(generator)} generators for a batch of {n}")
        lat_h, lat_w = self.latent_size(sampling.height, sampling.width)
        noise = randn_tensor((n, self.latent_channels, lat_h, lat_w), generator=generator,
                             device=self.device, dtype=torch.float32)
        return pack_latents(noise)

    # ------------------------------------------------------------------ the model
    def predict(self, latents: Tensor, timesteps: Tensor, cond: dict[str, Tensor], meta: dict,
                guidance: bool = True) -> Tensor:
        """Transformer prediction (fp32) for packed ``latents [B, N, C]`` at ``timesteps [B]`` (0..1000 scale).
        FLUX's guidance is distilled into an embedding (no CFG branch), so ``guidance`` changes nothing."""
        lat_h, lat_w = self.latent_size(meta["height"], meta["width"])
        img_ids = latent_image_ids(lat_h // 2, lat_w // 2, device=self.device, dtype=self.dtype)
        return self._flux_forward(latents, timesteps, cond["prompt_embeds"], cond["pooled_prompt_embeds"], img_ids,
                                  meta)

    def _flux_forward(self, hidden: Tensor, timesteps: Tensor, embeds: Tensor, pooled: Tensor, img_ids: Tensor,
                      meta: dict) -> Tensor:
        """One transformer call (fp32 out) on packed tokens ``hidden [B, N, C]`` with position ids ``img_ids [N, 3]``
        and the prompt's T5 ``embeds [B, L, D]`` and CLIP ``pooled [B, D']``; ``timesteps [B]`` on the 0..1000
        scale, distilled guidance from ``meta`` when the transformer embeds it."""
        dtype = self.dtype
        embeds = embeds.to(self.device, dtype)
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full((hidden.shape[0],), float(meta["guidance"]), device=self.device, dtype=torch.float32)
        out = self._forward(
            hidden_states=hidden.to(self.device, dtype),
            timestep=timesteps.to(self.device, dtype) / 1000,
            guidance=guidance,
            pooled_projections=pooled.to(self.device, dtype),
            encoder_hidden_states=embeds,
            txt_ids=torch.zeros(embeds.shape[1], 3, device=self.device, dtype=dtype),
            img_ids=img_ids,
        )
        return out.float()

    @torch.no_grad()
    def decode(self, latents: Tensor, meta: dict) -> Tensor:
        """Packed latents -> images ``[B, 3, H, W]`` float32 in ``[0, 1]``."""
        lat_h, lat_w = self.latent_size(meta["height"], meta["width"])
        with self._frozen_on_device(self.vae) as vae:
            x = unpack_latents(latents.float(), lat_h, lat_w)
            x = x / vae.config.scaling_factor + vae.config.shift_factor
            image = vae.decode(x.to(next(vae.parameters()).device, self.dtype), return_dict=False)[0]
        return (image.float().to(self.device) * 0.5 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode_targets(self, images: Tensor, meta: dict) -> Tensor:
        """Images ``[B, 3, H, W]`` in ``[0, 1]`` -> packed, scaled and shifted latents (fp32). The posterior mode,
        as Kontext encodes its references, so an SFT step depends on its seed only through noise and sigmas."""
        self.latent_size(images.shape[-2], images.shape[-1])
        return pack_latents(self._vae_encode(images.to(self.dtype) * 2 - 1))

    def _vae_encode(self, x: Tensor) -> Tensor:
        """Images ``[B, 3, H, W]`` in ``[-1, 1]`` -> the VAE posterior's mode, shifted and scaled: ``[B, C, h, w]``
        fp32 on the policy's device."""
        with self._frozen_on_device(self.vae) as vae:
            lat = vae.encode(x.to(next(vae.parameters()).device, self.dtype)).latent_dist.mode()
            lat = (lat.float() - vae.config.shift_factor) * vae.config.scaling_factor
        return lat.to(self.device)


__all__ = ["FluxPolicy", "latent_image_ids", "pack_latents", "unpack_latents"]
