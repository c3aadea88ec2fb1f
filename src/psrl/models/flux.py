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

import contextlib
import logging
import random
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from psrl.data.records import Record
from psrl.models.base import Rollout, SamplingConfig, StepLogProb
from psrl.models.config import LoraConfig, ModelConfig
from psrl.models.lora import add_lora, has_lora, load_lora_weights, save_lora_weights
from psrl.sampling import StepPlan, plan_steps, resolution_shift_mu, sde_step_with_logprob

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


def unwrap_module(module: nn.Module) -> nn.Module:
    """Strip DistributedDataParallel / accelerate / torch.compile wrappers."""
    while True:
        inner = getattr(module, "module", None)
        if isinstance(inner, nn.Module):
            module = inner
            continue
        inner = getattr(module, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            module = inner
            continue
        return module


def window_rng(generator: Generator) -> random.Random:
    """A ``random.Random`` seeded from ``generator`` (the first one of a list): every rank that holds the same
    generator state draws the same Flow-GRPO-Fast window."""
    g = generator[0] if isinstance(generator, (list, tuple)) else generator
    seed = torch.randint(0, 2**31 - 1, (1,), generator=g, device=g.device if g is not None else "cpu")
    return random.Random(int(seed))


class FluxPolicy:
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

    Rollout layout: ``latents [B, T + 1, N, C]`` fp32 packed (``N = (H/16)(W/16)`` tokens for FLUX.1, ``C = 64``),
    ``log_probs [B, T]`` fp32 (0 on ODE steps), ``sigmas [T + 1]`` and ``timesteps [B, T]`` (0..1000 scale) on the
    CPU, ``noisy [T]`` bool. ``cond``: ``prompt_embeds [B, L, D]`` (T5, ``L = max_sequence_length``) and
    ``pooled_prompt_embeds [B, D']`` (CLIP), in the frozen dtype. ``meta``: ``height``, ``width``, ``guidance``
    (float, or ``None`` when the transformer has no guidance embedding), ``noise_level``, ``kind``, ``reduce``,
    ``cps_compat``, ``num_steps``. Rollouts of one policy and sampling config concatenate with ``Rollout.cat``.
    """

    lora_prefix = "transformer"

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
            if next(module.parameters()).dtype != dtype:  # diffusers warns on every .to(dtype), even a no-op
                module.to(dtype=dtype)
        self.lora_config = lora
        if lora is not None:
            add_lora(self.transformer, lora)
            if lora.path:
                self.load_lora(lora.path)
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
        from psrl.models.loading import load_flux_components, torch_dtype_from_name

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
            components = load_flux_components(model_cfg.path, torch_dtype=dtype)
        return cls(components, lora=model_cfg.lora, dtype=dtype, device=device,
                   max_sequence_length=model_cfg.max_sequence_length,
                   gradient_checkpointing=model_cfg.gradient_checkpointing, offload_frozen=model_cfg.offload_frozen)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.text_encoder, self.text_encoder_2, self.vae]

    # ------------------------------------------------------------------ device / modes
    def to(self, device) -> "FluxPolicy":
        self.device = torch.device(device)
        self.module.to(self.device)
        frozen_device = "cpu" if self.offload_frozen else self.device
        for m in self.frozen_modules():
            m.to(frozen_device)
        return self

    def train(self, mode: bool = True) -> None:
        """Only the transformer changes mode; the frozen encoders and VAE always stay in eval mode."""
        self.module.train(mode)

    def set_module(self, module: nn.Module) -> None:
        """Use a wrapped transformer (DDP, accelerate) for forward passes; saving unwraps it."""
        if unwrap_module(module) is not self.transformer:
            raise ValueError("set_module expects the policy's own transformer, possibly wrapped")
        self.module = module

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.transformer.parameters() if p.requires_grad)

    @contextlib.contextmanager
    def disable_lora(self):
        """Run the base model (the KL reference). Gradient flags of the LoRA weights are restored on exit."""
        if not has_lora(self.transformer):
            yield
            return
        flags = [(p, p.requires_grad) for p in self.transformer.parameters()]
        self.transformer.disable_adapters()
        try:
            yield
        finally:
            self.transformer.enable_adapters()
            for p, flag in flags:
                p.requires_grad_(flag)

    def save_lora(self, path) -> None:
        """Write ``pytorch_lora_weights.safetensors`` (diffusers format) into directory ``path`` (or to ``path`` if it
        ends in ``.safetensors``); loadable with ``FluxPipeline.load_lora_weights``."""
        save_lora_weights(self.transformer, path, prefix=self.lora_prefix)

    def load_lora(self, path) -> None:
        """Load a diffusers-format LoRA (file or directory); a mismatching file raises ``ModelLoadError``."""
        load_lora_weights(self.transformer, path, prefix=self.lora_prefix)

    @contextlib.contextmanager
    def _frozen_on_device(self, module: nn.Module):
        if not self.offload_frozen or self.device.type == "cpu":
            yield module
            return
        module.to(self.device)
        try:
            yield module
        finally:
            module.to("cpu")

    @contextlib.contextmanager
    def _eval_mode(self):
        was_training = self.module.training
        self.module.eval()
        try:
            yield
        finally:
            self.module.train(was_training)

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
        """Per-sample conditioning, batch-first. Each distinct prompt is encoded once and shared by its group."""
        prompts = [r.prompt for r in records]
        unique = list(dict.fromkeys(prompts))
        embeds, pooled = self.encode_prompts(unique)
        index = torch.tensor([unique.index(p) for p in prompts], device=self.device)
        return {"prompt_embeds": embeds[index], "pooled_prompt_embeds": pooled[index]}

    # ------------------------------------------------------------------ geometry and schedule
    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """Unpacked latent ``(h, w)``; raises for a size FLUX cannot pack."""
        multiple = self.vae_scale_factor * 2
        if height % multiple or width % multiple:
            raise ValueError(f"height and width must be multiples of {multiple} for this model "
                             f"(VAE scale {self.vae_scale_factor} x 2x2 packing), got {height}x{width}")
        return height // self.vae_scale_factor, width // self.vae_scale_factor

    def schedule(self, num_steps: int, image_seq_len: int) -> tuple[Tensor, Tensor]:
        """``(sigmas [T + 1], timesteps [T])`` float32 on the CPU, computed by the scheduler itself as
        ``FluxPipeline`` does: ``set_timesteps(sigmas=linspace(1, 1/T, T), mu=calculate_shift(seq_len))``."""
        cfg = self.scheduler.config
        mu = resolution_shift_mu(image_seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                                 cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        if getattr(cfg, "use_flow_sigmas", False):
            self.scheduler.set_timesteps(num_inference_steps=num_steps, device="cpu", mu=mu)
        else:
            sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
            self.scheduler.set_timesteps(sigmas=sigmas, device="cpu", mu=mu)
        return self.scheduler.sigmas.float().cpu().clone(), self.scheduler.timesteps.float().cpu().clone()

    def initial_noise(self, batch: int, latent_h: int, latent_w: int, generator: Generator) -> Tensor:
        """Packed fp32 noise drawn like ``FluxPipeline.prepare_latents`` (``randn_tensor`` on ``[B, C, h, w]``)."""
        from diffusers.utils.torch_utils import randn_tensor

        if isinstance(generator, (list, tuple)) and len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch}")
        noise = randn_tensor((batch, self.latent_channels, latent_h, latent_w), generator=generator,
                             device=self.device, dtype=torch.float32)
        return pack_latents(noise)

    # ------------------------------------------------------------------ the model
    def velocity(self, latents: Tensor, timesteps: Tensor, cond: dict[str, Tensor], meta: dict) -> Tensor:
        """Transformer prediction (fp32) for packed ``latents [B, N, C]`` at ``timesteps [B]`` (0..1000 scale)."""
        dtype = self.dtype
        b = latents.shape[0]
        lat_h, lat_w = self.latent_size(meta["height"], meta["width"])
        embeds = cond["prompt_embeds"].to(self.device, dtype)
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full((b,), float(meta["guidance"]), device=self.device, dtype=torch.float32)
        out = self.module(
            hidden_states=latents.to(self.device, dtype),
            timestep=timesteps.to(self.device, dtype) / 1000,
            guidance=guidance,
            pooled_projections=cond["pooled_prompt_embeds"].to(self.device, dtype),
            encoder_hidden_states=embeds,
            txt_ids=torch.zeros(embeds.shape[1], 3, device=self.device, dtype=dtype),
            img_ids=latent_image_ids(lat_h // 2, lat_w // 2, device=self.device, dtype=dtype),
            return_dict=False,
        )[0]
        return out.float()

    @torch.no_grad()
    def decode(self, latents: Tensor, height: int, width: int) -> Tensor:
        """Packed latents -> images ``[B, 3, H, W]`` float32 in ``[0, 1]``."""
        lat_h, lat_w = self.latent_size(height, width)
        with self._frozen_on_device(self.vae) as vae:
            x = unpack_latents(latents.float(), lat_h, lat_w)
            x = x / vae.config.scaling_factor + vae.config.shift_factor
            image = vae.decode(x.to(next(vae.parameters()).device, self.dtype), return_dict=False)[0]
        return (image.float().to(self.device) * 0.5 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode_images(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Images ``[B, 3, H, W]`` in ``[0, 1]`` -> packed, scaled and shifted latents (fp32)."""
        with self._frozen_on_device(self.vae) as vae:
            x = images.to(next(vae.parameters()).device, self.dtype) * 2 - 1
            lat = vae.encode(x).latent_dist.sample(generator=generator)
            lat = (lat.float() - vae.config.shift_factor) * vae.config.scaling_factor
        return pack_latents(lat.to(self.device))

    # ------------------------------------------------------------------ sampling
    def _meta(self, sampling: SamplingConfig, noise_level: float) -> dict:
        return {
            "height": sampling.height, "width": sampling.width,
            "guidance": float(sampling.guidance_scale) if self.guidance_embeds else None,
            "noise_level": float(noise_level), "kind": sampling.sde_kind, "reduce": sampling.log_prob_reduce,
            "cps_compat": sampling.cps_compat, "num_steps": sampling.num_steps,
        }

    def _start(self, records: Sequence[Record], sampling: SamplingConfig, generator: Generator,
               same_noise_per_group: bool):
        lat_h, lat_w = self.latent_size(sampling.height, sampling.width)
        noise = self.initial_noise(len(records), lat_h, lat_w, generator)
        if same_noise_per_group:
            first = {}
            for i, r in enumerate(records):
                first.setdefault((r.id, r.prompt), i)
            noise = noise[torch.tensor([first[(r.id, r.prompt)] for r in records], device=noise.device)]
        sigmas, timesteps = self.schedule(sampling.num_steps, noise.shape[1])
        return noise, sigmas, timesteps

    def plan(self, sampling: SamplingConfig, generator: Generator) -> StepPlan:
        """Which steps are noisy/trained for ``sampling``; the ``fast_window`` start is drawn from ``generator``."""
        rng = window_rng(generator) if sampling.train_steps == "fast_window" else None
        window = tuple(sampling.window_range) if sampling.window_range is not None else None
        return plan_steps(sampling.num_steps, sampling.train_steps, k=sampling.train_k, window_range=window,
                          steps=sampling.noise_steps, rng=rng)

    @torch.no_grad()
    def rollout(self, records: Sequence[Record], sampling: SamplingConfig, generator: Generator = None, *,
                plan: StepPlan | None = None) -> Rollout:
        """Sample one trajectory per record: SDE steps (noise ``sampling.noise_level``) where the plan says noisy,
        ODE elsewhere; keeps every latent and per-step log-prob. The transformer runs in eval mode (restored after).

        ``generator``: one generator, one per sample, or ``None``; the initial noise, then (for ``fast_window``) the
        window, then the step noise are drawn from it in that order. ``plan`` overrides the plan drawn here.
        """
        records = list(records)
        noise, sigmas, timesteps = self._start(records, sampling, generator, sampling.same_noise_per_group)
        plan = plan if plan is not None else self.plan(sampling, generator)
        if plan.num_steps != sampling.num_steps:
            raise ValueError(f"plan has {plan.num_steps} steps, sampling.num_steps is {sampling.num_steps}")
        cond = self.encode_conditions(records, sampling)
        meta = self._meta(sampling, sampling.noise_level)
        b, steps = len(records), sampling.num_steps
        latents, log_probs = [noise], torch.zeros(b, steps, device=self.device)
        x = noise
        with self._eval_mode():
            for i in range(steps):
                v = self.velocity(x, timesteps[i].expand(b), cond, meta)
                level = sampling.noise_level if plan.noisy[i] else 0.0
                x, log_probs[:, i], _, _ = sde_step_with_logprob(
                    x, v, sigmas[i], sigmas[i + 1], level, generator=generator, kind=sampling.sde_kind,
                    reduce=sampling.log_prob_reduce, cps_compat=sampling.cps_compat)
                latents.append(x)
        images = self.decode(x, sampling.height, sampling.width)
        return Rollout(
            records=records, images=images, latents=torch.stack(latents, dim=1), log_probs=log_probs,
            sigmas=sigmas, timesteps=timesteps.expand(b, steps).clone(), noisy=torch.tensor(plan.noisy),
            trained_steps=tuple(plan.trained), cond=cond, meta=meta)

    def log_prob(self, rollout: Rollout, step: int) -> StepLogProb:
        """Recompute step ``step`` of ``rollout`` with the current weights (differentiable through the LoRA).

        Uses the module's current mode (the trainer decides train/eval). Before any update, on the same batch,
        this reproduces ``rollout.log_probs[:, step]``; on a different sub-batch the transformer's kernels may
        round differently (~1e-6).
        """
        steps = rollout.latents.shape[1] - 1
        if not 0 <= step < steps:
            raise IndexError(f"step {step} out of range for a rollout of {steps} steps")
        meta = rollout.meta
        x = rollout.latents[:, step].to(self.device)
        v = self.velocity(x, rollout.timesteps[:, step], rollout.cond, meta)
        level = meta["noise_level"] if bool(rollout.noisy[step]) else 0.0
        sigma, sigma_next = rollout.sigmas[step], rollout.sigmas[step + 1]
        _, log_prob, mean, std = sde_step_with_logprob(
            x, v, sigma, sigma_next, level, prev_sample=rollout.latents[:, step + 1].to(self.device),
            kind=meta["kind"], reduce=meta["reduce"], cps_compat=meta["cps_compat"])
        dt = torch.full((x.shape[0],), float(sigma_next - sigma), device=self.device)
        return StepLogProb(log_prob=log_prob, mean=mean, std=std, dt=dt)

    @torch.no_grad()
    def generate(self, records: Sequence[Record], sampling: SamplingConfig, generator: Generator = None) -> Tensor:
        """Deterministic ODE sampling (``noise_level`` ignored), any steps and size: ``[B, 3, H, W]`` in [0, 1]."""
        records = list(records)
        x, sigmas, timesteps = self._start(records, sampling, generator, sampling.same_noise_per_group)
        cond = self.encode_conditions(records, sampling)
        meta = self._meta(sampling, 0.0)
        with self._eval_mode():
            for i in range(sampling.num_steps):
                v = self.velocity(x, timesteps[i].expand(x.shape[0]), cond, meta)
                x, _, _, _ = sde_step_with_logprob(x, v, sigmas[i], sigmas[i + 1], 0.0)
        return self.decode(x, sampling.height, sampling.width)

    def flow_matching_loss(self, records: Sequence[Record], targets: Tensor, sigmas: Tensor,
                           generator: torch.Generator | None = None, *, guidance_scale: float = 3.5) -> Tensor:
        """SFT loss: ``mean((v_pred - (noise - x0))^2)`` in fp32, with ``x0`` the VAE latents of ``targets``
        (``[B, 3, H, W]`` in [0, 1]) and ``x_sigma = (1 - sigma) x0 + sigma noise`` for ``sigmas [B]`` in (0, 1]."""
        records = list(records)
        if targets.ndim != 4 or targets.shape[0] != len(records):
            raise ValueError(f"targets must be [B, 3, H, W] with B = {len(records)}, got {tuple(targets.shape)}")
        height, width = int(targets.shape[-2]), int(targets.shape[-1])
        self.latent_size(height, width)
        x0 = self.encode_images(targets, generator)
        from diffusers.utils.torch_utils import randn_tensor
        noise = randn_tensor(x0.shape, generator=generator, device=self.device, dtype=torch.float32)
        s = sigmas.to(self.device, torch.float32).view(-1, 1, 1)
        x_t = (1 - s) * x0 + s * noise
        sampling = SamplingConfig(height=height, width=width, guidance_scale=guidance_scale)
        with torch.no_grad():
            cond = self.encode_conditions(records, sampling)
        v = self.velocity(x_t, s.view(-1) * 1000, cond, self._meta(sampling, 0.0))
        return ((v - (noise - x0)) ** 2).mean()


__all__ = ["FluxPolicy", "latent_image_ids", "pack_latents", "unpack_latents", "unwrap_module", "window_rng"]
