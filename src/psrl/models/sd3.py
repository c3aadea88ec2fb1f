"""Stable Diffusion 3 / 3.5 policy (Flow-GRPO's main model) over the components of diffusers'
``StableDiffusion3Pipeline``: real classifier-free guidance with the negative prompt ``""`` (Flow-GRPO's SD3
setting, yifan123/flow_grpo@ac4c86e ``scripts/train_sd3.py``), unpacked ``[B, C, h, w]`` latents, the scheduler's
own schedule.

With ``guidance_scale > 1`` the rollout, the log-prob recompute and generation all use the CFG-combined velocity
``v_u + w (v_c - v_u)`` (Flow-GRPO's ``train.cfg=True``); ``guidance_scale <= 1`` is the no-CFG setting of the
``*_nocfg`` recipes. SFT (:meth:`flow_matching_loss`) uses the conditional branch only.

``cfg_grad`` (set by the trainer from ``train.cfg_grad``): ``both`` back-propagates through both CFG branches, the
true gradient of the policy that sampled; ``cond_only`` detaches the unconditional prediction, as Flow-GRPO does
(yifan123/flow_grpo@ac4c86e scripts/train_sd3.py ``compute_log_prob``). The forward value is the same either way.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from psrl.data.records import Record
from psrl.sampling import SamplingConfig
from psrl.models.config import ModelConfig
from psrl.models.flow_policy import FlowPolicyBase, scheduler_schedule, unique_records
from psrl.models.truncation import quiet_logger

# diffusers logs "The following part of your input was truncated ..." here at every encode_prompt call
_PIPELINE_LOGGER = "diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3"

# alike on purpose: the (library, class) table of models.loading.FLUX_COMPONENT_SPEC, for SD3
SD3_COMPONENT_SPEC: dict[str, tuple[str, str]] = {
    "transformer": ("diffusers", "SD3Transformer2DModel"),
    "vae": ("diffusers", "AutoencoderKL"),
    "text_encoder": ("transformers", "CLIPTextModelWithProjection"),
    "text_encoder_2": ("transformers", "CLIPTextModelWithProjection"),
    "text_encoder_3": ("transformers", "T5EncoderModel"),
    "tokenizer": ("transformers", "AutoTokenizer"),
    "tokenizer_2": ("transformers", "AutoTokenizer"),
    "tokenizer_3": ("transformers", "AutoTokenizer"),
    "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler"),
}


class SD3Policy(FlowPolicyBase):
    """SD3 behind the :class:`psrl.models.base.Policy` protocol.

    Built like every policy (:class:`FlowPolicyBase`): ``SD3Policy(components, cfg, device)`` with the kwargs of
    ``StableDiffusion3Pipeline`` (transformer, vae, three text encoders and tokenizers, scheduler; the T5 pair may
    be ``None``) and the model config (dtype, LoRA, memory options); ``model.args.negative_prompt`` (``""``). The
    VAE stays fp32 whatever the dtype (``KEEP_FP32``).
    """

    name = "sd3"
    COMPONENT_SPEC = SD3_COMPONENT_SPEC
    OPTIONAL_COMPONENTS = ("text_encoder_3", "tokenizer_3")
    ARGS = ("negative_prompt",)
    KEEP_FP32 = ("vae",)  # decodes in fp32 whatever the dtype (Flow-GRPO keeps the VAE in fp32)

    @classmethod
    def tiny_components(cls, cfg: ModelConfig) -> dict:
        from psrl.models.tiny_more import tiny_sd3_components

        return tiny_sd3_components(cfg.tiny_seed)

    def init_components(self, components: dict) -> list:
        from diffusers import StableDiffusion3Pipeline

        self.negative_prompt = str(self.cfg.args.get("negative_prompt", ""))
        self.pipe = StableDiffusion3Pipeline(**{k: v for k, v in components.items()
                                                if k not in ("image_encoder", "feature_extractor")})
        self.pipe.set_progress_bar_config(disable=True)
        self.transformer = self.pipe.transformer
        self.vae = self.pipe.vae
        self.vae_scale_factor = self.pipe.vae_scale_factor
        self.patch_size = self.transformer.config.patch_size
        self.text_encoders = [m for m in (self.pipe.text_encoder, self.pipe.text_encoder_2, self.pipe.text_encoder_3)
                              if m is not None]
        self._negative: dict[str, Tensor] | None = None
        self.cfg_grad = "both"  # the trainer sets train.cfg_grad
        return [*self.text_encoders, self.vae]

    # ------------------------------------------------------------------ hooks
    def _encode_prompts(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        with torch.no_grad(), self._frozen_on_device(*self.text_encoders):
            embeds, _, pooled, _ = self.pipe.encode_prompt(
                prompt=prompts, prompt_2=None, prompt_3=None, do_classifier_free_guidance=False,
                device=self.device, max_sequence_length=self.cfg.max_sequence_length)
        return embeds.to(self.dtype), pooled.to(self.dtype)

    def encode(self, records: Sequence[Record], sampling: SamplingConfig):
        uniq, where = unique_records(records)
        # warned once per record here (CLIP-L and CLIP-G share one BPE; T5 reads model.max_sequence_length); the
        # pipeline's own warning, repeated at every step without the record, is silenced
        pipe = self.pipe
        self._warn_truncated(uniq, pipe.tokenizer, pipe.tokenizer_max_length, "CLIP", "CLIP")
        if pipe.text_encoder_3 is not None and pipe.tokenizer_3 is not None:
            self._warn_truncated(uniq, pipe.tokenizer_3, self.cfg.max_sequence_length, "T5",
                                 "model.max_sequence_length")
        with quiet_logger(_PIPELINE_LOGGER, "The following part of your input was truncated"):
            embeds, pooled = self._encode_prompts([r.prompt for r in uniq])
        idx = torch.as_tensor(where, device=embeds.device)
        return {"prompt_embeds": embeds[idx], "pooled_prompt_embeds": pooled[idx]}, {}

    def _negative_embeds(self) -> dict[str, Tensor]:
        if self._negative is None:
            e, p = self._encode_prompts([self.negative_prompt])
            self._negative = {"prompt_embeds": e, "pooled_prompt_embeds": p}
        return self._negative

    def initial_noise(self, n: int, sampling: SamplingConfig, generator) -> Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        h, w = self.latent_size(sampling.height, sampling.width)
        shape = (n, self.transformer.config.in_channels, h, w)
        return randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)

    def schedule(self, sampling: SamplingConfig):
        """The pipeline's schedule: ``scheduler.set_timesteps(num_steps)`` (static shift 3 for SD3), with ``mu``
        from the image sequence length when the scheduler uses dynamic shifting."""
        seq_len = None
        if self.pipe.scheduler.config.get("use_dynamic_shifting", False):
            h, w = self.latent_size(sampling.height, sampling.width)
            seq_len = (h // self.patch_size) * (w // self.patch_size)
        # 1.16: StableDiffusion3Pipeline's max_shift default
        return scheduler_schedule(self.pipe.scheduler, sampling.num_steps, image_seq_len=seq_len, max_shift=1.16)

    def predict(self, latents: Tensor, timesteps: Tensor, cond: dict[str, Tensor], meta: dict,
                guidance: bool = True) -> Tensor:
        scale = float(meta["sampling"].guidance_scale)
        embeds, pooled = cond["prompt_embeds"], cond["pooled_prompt_embeds"]
        x = latents.to(self.dtype)
        t = timesteps.to(latents.device, torch.float32)
        if guidance and scale > 1:
            b = latents.shape[0]
            neg = self._negative_embeds()
            embeds = torch.cat([neg["prompt_embeds"].expand(b, -1, -1), embeds])
            pooled = torch.cat([neg["pooled_prompt_embeds"].expand(b, -1), pooled])
            out = self._forward(hidden_states=torch.cat([x, x]), timestep=torch.cat([t, t]),
                                encoder_hidden_states=embeds, pooled_projections=pooled).float()
            uncond, text = out.chunk(2)
            if self.cfg_grad == "cond_only":
                uncond = uncond.detach()  # Flow-GRPO: the update moves the conditional branch only
            return uncond + scale * (text - uncond)
        return self._forward(hidden_states=x, timestep=t, encoder_hidden_states=embeds,
                             pooled_projections=pooled).float()

    @torch.no_grad()
    def decode(self, latents: Tensor, meta: dict) -> Tensor:
        cfg = self.vae.config
        with self._frozen_on_device(self.vae):
            z = latents.to(self.device, torch.float32) / cfg.scaling_factor + cfg.shift_factor
            image = self.vae.decode(z, return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode_targets(self, images: Tensor, meta: dict) -> Tensor:
        cfg = self.vae.config
        with self._frozen_on_device(self.vae):
            dist = self.vae.encode(images.to(self.device, torch.float32) * 2 - 1).latent_dist
        return (dist.mode() - cfg.shift_factor) * cfg.scaling_factor


__all__ = ["SD3_COMPONENT_SPEC", "SD3Policy"]
