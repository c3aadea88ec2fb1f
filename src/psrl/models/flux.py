"""``FluxPolicy``: FLUX.1 (dev or schnell layout) behind the :class:`psrl.models.base.Policy` protocol.

The policy drives diffusers components directly (no pipeline object) so that a rollout keeps every latent and the
log-prob of every step, and ``log_prob`` can recompute a step with the current weights. Everything a generation
depends on is reproduced from ``diffusers.FluxPipeline``: prompt encoding (CLIP pooled + T5 sequence), 2x2 latent
packing and position ids, the initial noise (``randn_tensor`` on the unpacked shape), the sigma schedule (the
scheduler's own ``set_timesteps(sigmas=linspace(1, 1/T, T), mu=shift(seq_len))``), ``timestep / 1000``, distilled
guidance when ``transformer.config.guidance_embeds`` and VAE decoding, so that with ``noise_level=0`` the output equals
the pipeline's (tested to < 1e-4 in fp32).

Subclasses (FLUX-Kontext and other reference-conditioned FLUX variants) override :meth:`encode_conditions` (extra
per-sample tensors in ``cond``) and :meth:`velocity` (e.g. appending reference tokens to the sequence).
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from psrl.data.records import Record
from psrl.models.config import LoraConfig, ModelConfig
from psrl.models.flow_policy import FlowPolicyBase, scheduler_schedule, unwrap_module, window_rng
from psrl.models.lora_merge import prepare_lora
from psrl.models.quantization import is_quantized
from psrl.sampling import SamplingConfig, resolution_shift_mu

logger = logging.getLogger(__name__)

Generator = torch.Generator | list[torch.Generator] | None


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

    Args:
        components: ``FluxPipeline`` kwargs: ``transformer``, ``vae``, ``text_encoder`` (CLIP), ``text_encoder_2``
            (T5), ``tokenizer``, ``tokenizer_2``, ``scheduler`` (a ``FlowMatchEulerDiscreteScheduler``).
        lora: adapter added to the transformer (``None``: no adapter, all weights frozen).
        dtype: dtype of the frozen weights (``torch.dtype`` or ``"float32" | "bfloat16" | "float16"``); LoRA weights
            and all SDE / log-prob math stay fp32.
        device: where the transformer runs (and the encoders/VAE unless ``offload_frozen``).
        max_sequence_length: T5 token budget (FLUX.1-dev: 512; the pipeline caps it at 512).
        gradient_checkpointing: recompute transformer activations in the backward pass.
        offload_frozen: keep text encoders and VAE on the CPU, moving each to ``device`` only while it runs.

    The rollout, log-prob recompute, generation and SFT loss are :class:`FlowPolicyBase`'s; this class supplies
    FLUX's hooks. Rollout layout: ``latents [B, T + 1, N, C]`` fp32 packed (``N = (H/16)(W/16)`` tokens for FLUX.1,
    ``C = 64``), ``log_probs [B, T]`` fp32 (0 on ODE steps), ``sigmas [T + 1]`` and ``timesteps [B, T]`` (0..1000
    scale) on the CPU, ``noisy [T]`` bool. ``cond``: ``prompt_embeds [B, L, D]`` (T5, ``L = max_sequence_length``)
    and ``pooled_prompt_embeds [B, D']`` (CLIP), in the frozen dtype. ``meta``: ``height``, ``width``, ``guidance``
    (float, or ``None`` when the transformer has no guidance embedding) and the ``sampling`` config.
    """

    def __init__(self, components: dict, *, lora: LoraConfig | None = None, dtype: Any = torch.float32,
                 device: Any = "cpu", max_sequence_length: int = 512, gradient_checkpointing: bool = False,
                 offload_frozen: bool = False):
        missing = [k for k in ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                               "scheduler") if components.get(k) is None]
        if missing:
            raise ValueError(f"FluxPolicy components are missing {missing}")
        if isinstance(dtype, str):
            from psrl.models.loading import torch_dtype_from_name
            dtype = torch_dtype_from_name(dtype)
        if not 1 <= max_sequence_length <= 512:
            raise ValueError(f"max_sequence_length must be in [1, 512] (FLUX's T5 budget), got {max_sequence_length}")
        self.dtype = dtype
        self.device = torch.device(device)
        self.max_sequence_length = max_sequence_length
        self.offload_frozen = offload_frozen
        self.transformer: nn.Module = components["transformer"]
        self.vae: nn.Module = components["vae"]
        self.text_encoder: nn.Module = components["text_encoder"]
        self.text_encoder_2: nn.Module = components["text_encoder_2"]
        self.tokenizer = components["tokenizer"]
        self.tokenizer_2 = components["tokenizer_2"]
        self.scheduler = components["scheduler"]
        for module in (*self.frozen_modules(), self.transformer):
            module.requires_grad_(False)
            module.eval()
            # diffusers warns on every .to(dtype), even a no-op; a quantized model's dtype was fixed when loaded
            if next(module.parameters()).dtype != dtype and not is_quantized(module):
                module.to(dtype=dtype)
        self.lora_config = lora
        if lora is not None:
            prepare_lora(self.transformer, lora, prefix=self.lora_prefix)
        if gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        self.module: nn.Module = self.transformer
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_channels = self.transformer.config.in_channels // 4
        self.guidance_embeds = bool(getattr(self.transformer.config, "guidance_embeds", False))
        self.to(self.device)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, model_cfg: ModelConfig, device: Any = "cpu") -> "FluxPolicy":
        """Build from a :class:`ModelConfig`: ``path: tiny`` gives the offline tiny components (seed ``tiny_seed``;
        ``args.guidance_embeds`` picks dev-like (default) or schnell-like), anything else is loaded with
        ``from_pretrained`` (hub id or local pipeline folder). ``args`` may only hold ``guidance_embeds`` (tiny)."""
        from psrl.config import ConfigError
        from psrl.models.loading import FLUX_COMPONENT_SPEC, load_policy_components, torch_dtype_from_name

        unknown = sorted(set(model_cfg.args) - {"guidance_embeds"})
        if unknown:
            raise ConfigError(f"model.args.{unknown[0]}: unknown option for the flux policy (known: guidance_embeds)")
        dtype = torch_dtype_from_name(model_cfg.dtype)
        if model_cfg.path == "tiny":
            from psrl.models.tiny import tiny_flux_components
            components = tiny_flux_components(seed=model_cfg.tiny_seed,
                                              guidance_embeds=bool(model_cfg.args.get("guidance_embeds", True)))
        else:
            if "guidance_embeds" in model_cfg.args:
                raise ConfigError("model.args.guidance_embeds only applies to model.path: tiny (a loaded model's "
                                  "transformer config decides)")
            components = load_policy_components(model_cfg, FLUX_COMPONENT_SPEC, device)
        return cls(components, lora=model_cfg.lora, dtype=dtype, device=device,
                   max_sequence_length=model_cfg.max_sequence_length,
                   gradient_checkpointing=model_cfg.gradient_checkpointing, offload_frozen=model_cfg.offload_frozen)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.text_encoder, self.text_encoder_2, self.vae]

    def to(self, device) -> "FluxPolicy":
        self.device = torch.device(device)
        self.module.to(self.device)
        frozen_device = "cpu" if self.offload_frozen else self.device
        for m in self.frozen_modules():
            m.to(frozen_device)
        return self

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

    # ------------------------------------------------------------------ geometry and schedule
    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """Unpacked latent ``(h, w)``; raises for a size FLUX cannot pack."""
        multiple = self.vae_scale_factor * 2
        if height % multiple or width % multiple:
            raise ValueError(f"height and width must be multiples of {multiple} for this model "
                             f"(VAE scale {self.vae_scale_factor} x 2x2 packing), got {height}x{width}")
        return height // self.vae_scale_factor, width // self.vae_scale_factor

    def sigma_schedule(self, num_steps: int, image_seq_len: int) -> tuple[Tensor, Tensor]:
        """``(sigmas [T + 1], timesteps [T])`` float32 on the CPU, computed by the scheduler itself as
        ``FluxPipeline`` does: ``set_timesteps(sigmas=linspace(1, 1/T, T), mu=calculate_shift(seq_len))``."""
        cfg = self.scheduler.config
        mu = resolution_shift_mu(image_seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                                 cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        sigmas = None if getattr(cfg, "use_flow_sigmas", False) else np.linspace(1.0, 1 / num_steps, num_steps)
        return scheduler_schedule(self.scheduler, num_steps, sigmas=sigmas, mu=mu)

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
        """FLUX's guidance is distilled into an embedding (no CFG branch), so ``guidance`` changes nothing."""
        return self.velocity(latents, timesteps, cond, meta)

    def velocity(self, latents: Tensor, timesteps: Tensor, cond: dict[str, Tensor], meta: dict) -> Tensor:
        """Transformer prediction (fp32) for packed ``latents [B, N, C]`` at ``timesteps [B]`` (0..1000 scale)."""
        dtype = self.dtype
        b = latents.shape[0]
        lat_h, lat_w = self.latent_size(meta["height"], meta["width"])
        embeds = cond["prompt_embeds"].to(self.device, dtype)
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full((b,), float(meta["guidance"]), device=self.device, dtype=torch.float32)
        out = self._forward(
            hidden_states=latents.to(self.device, dtype),
            timestep=timesteps.to(self.device, dtype) / 1000,
            guidance=guidance,
            pooled_projections=cond["pooled_prompt_embeds"].to(self.device, dtype),
            encoder_hidden_states=embeds,
            txt_ids=torch.zeros(embeds.shape[1], 3, device=self.device, dtype=dtype),
            img_ids=latent_image_ids(lat_h // 2, lat_w // 2, device=self.device, dtype=dtype),
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
        with self._frozen_on_device(self.vae) as vae:
            x = images.to(next(vae.parameters()).device, self.dtype) * 2 - 1
            lat = vae.encode(x).latent_dist.mode()
            lat = (lat.float() - vae.config.shift_factor) * vae.config.scaling_factor
        return pack_latents(lat.to(self.device))


__all__ = ["FluxPolicy", "latent_image_ids", "pack_latents", "unpack_latents", "unwrap_module", "window_rng"]
