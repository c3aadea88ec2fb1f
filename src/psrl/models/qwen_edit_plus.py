"""Qwen-Image-Edit-Plus (2509) policy over the components of diffusers' ``QwenImageEditPlusPipeline``.

Reproduces the pipeline (huggingface/diffusers@v0.42.1
``src/diffusers/pipelines/qwenimage/pipeline_qwenimage_edit_plus.py``):

* every reference image is resized to two fixed areas whatever the output size: ``condition_area`` (384^2) for the
  VLM prompt ("Picture i: <vision tokens>" under the edit template) and ``vae_area`` (1024^2) for the reference
  latents, aspect ratio kept, sides rounded to multiples of 32; both are options here (the pipeline reads module
  globals), so tests and low-resolution training need no patching;
* reference latents (VAE ``argmax``, normalised by the VAE's latents mean/std) are packed 2x2 and appended after the
  target tokens; ``img_shapes`` lists the target and every reference for the transformer's positional encoding;
  the prediction is sliced back to the target tokens;
* true CFG: a second transformer call with the negative prompt (encoded with the same images), combined as
  ``v_n + w (v_c - v_n)`` and rescaled per token to the conditional prediction's norm, when ``guidance_scale > 1``
  and ``negative_prompt`` is not ``null``; ``cfg_grad`` (``train.cfg_grad``): ``cond_only`` detaches the negative
  branch in the update as Flow-GRPO does, ``both`` (default) keeps the true gradient;
* the pipeline takes one prompt per call (it raises for batches); here prompt encodings are computed per
  record and samples sharing a layout run through the transformer as one batch.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from psrl.config import ConfigError
from psrl.data.records import Record
from psrl.sampling import SamplingConfig
from psrl.models.config import ModelConfig
from psrl.models.flow_policy import FlowPolicyBase, group_by_key, pad_rows, reorder, scheduler_schedule, unique_records
from psrl.models.references import ReferenceLoader, check_distinct_ids

# alike on purpose: the (library, class) table of models.loading.FLUX_COMPONENT_SPEC, for Qwen-Image-Edit
QWEN_EDIT_PLUS_COMPONENT_SPEC: dict[str, tuple[str, str]] = {
    "transformer": ("diffusers", "QwenImageTransformer2DModel"),
    "vae": ("diffusers", "AutoencoderKLQwenImage"),
    "text_encoder": ("transformers", "Qwen2_5_VLForConditionalGeneration"),
    "tokenizer": ("transformers", "AutoTokenizer"),
    "processor": ("transformers", "AutoProcessor"),
    "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler"),
}

class QwenImageEditPlusPolicy(FlowPolicyBase):
    """Qwen-Image-Edit-Plus behind the :class:`psrl.models.base.Policy` protocol.

    Built like every policy (:class:`FlowPolicyBase`): ``QwenImageEditPlusPolicy(components, cfg, device)`` with
    the ``QwenImageEditPlusPipeline`` kwargs. ``model.args``: ``condition_area`` (384*384), ``vae_area``
    (1024*1024), ``negative_prompt`` (``" "``: the pipeline enables true CFG only with a negative prompt; ``null``
    turns CFG off whatever the scale, which is what PaCo's released Qwen config effectively ran),
    ``max_references`` (4; the model card recommends 1-3). Records reach the policy with their reference paths
    resolved (a root in the args is read only for the data pipeline's renderers, see
    :class:`psrl.models.references.ReferenceLoader`).

    Rollout ``cond`` (batch-first, zero-padded, true lengths alongside): ``prompt_embeds``/``prompt_len``,
    ``negative_embeds``/``negative_len`` (when CFG can run), ``ref_latents``/``ref_len`` and ``ref_shapes
    [B, max_references, 2]`` (packed h, w of each reference; 0 = absent).
    """

    name = "qwen_image_edit_plus"
    COMPONENT_SPEC = QWEN_EDIT_PLUS_COMPONENT_SPEC
    ARGS = ("condition_area", "vae_area", "negative_prompt", "max_references")

    @classmethod
    def tiny_components(cls, cfg: ModelConfig) -> dict:
        from psrl.models.tiny_more import tiny_qwen_image_edit_plus_components

        return tiny_qwen_image_edit_plus_components(cfg.tiny_seed)

    def init_components(self, components: dict) -> list:
        from diffusers import QwenImageEditPlusPipeline

        args = self.cfg.args
        self.condition_area = int(args.get("condition_area", 384 * 384))
        self.vae_area = int(args.get("vae_area", 1024 * 1024))
        for key in ("condition_area", "vae_area"):
            if getattr(self, key) < 32 * 32:
                raise ConfigError(f"model.args.{key}: must be >= {32 * 32} (sides are multiples of 32), "
                                  f"got {getattr(self, key)}")
        self.negative_prompt = args.get("negative_prompt", " ")
        self.cfg_grad = "both"  # the trainer sets train.cfg_grad
        self.references = ReferenceLoader(max_references=int(args.get("max_references", 4)))
        self.pipe = QwenImageEditPlusPipeline(**components)
        self.pipe.set_progress_bar_config(disable=True)
        self.transformer = self.pipe.transformer
        if getattr(self.transformer.config, "guidance_embeds", False):
            raise ConfigError("qwen_image_edit_plus: guidance-distilled transformers (guidance_embeds) are not "
                              "supported; use a true-CFG checkpoint")
        self.vae = self.pipe.vae
        self.text_encoder = self.pipe.text_encoder
        self.vae_scale_factor = self.pipe.vae_scale_factor
        self.patch_size = 2  # 2x2 latent patches per token
        self.latent_channels = self.pipe.latent_channels
        return [self.text_encoder, self.vae]

    def use_cfg(self, sampling: SamplingConfig) -> bool:
        return self.negative_prompt is not None and float(sampling.guidance_scale) > 1

    # ------------------------------------------------------------------ conditioning
    @torch.no_grad()
    def _encode_record(self, record: Record, cfg_on: bool) -> dict:
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_dimensions

        images = self.references.load(record)
        proc = self.pipe.image_processor
        cond_images, vae_images, shapes = [], [], []
        for img in images:
            ratio = img.width / img.height
            cw, ch = calculate_dimensions(self.condition_area, ratio)
            vw, vh = calculate_dimensions(self.vae_area, ratio)
            cond_images.append(proc.resize(img, ch, cw))
            vae_images.append(proc.preprocess(img, vh, vw).unsqueeze(2))
            shapes.append((vh // self.vae_scale_factor // 2, vw // self.vae_scale_factor // 2))
        out = {}
        with self._frozen_on_device(self.text_encoder):
            # no truncation: diffusers' encode_prompt reads the whole prompt (it ignores max_sequence_length)
            out["prompt"] = self.pipe.encode_prompt(prompt=[record.prompt], image=cond_images,
                                                    device=self.device)[0][0]
            if cfg_on:
                out["negative"] = self.pipe.encode_prompt(prompt=[self.negative_prompt], image=cond_images,
                                                          device=self.device)[0][0]
        tokens = []
        with self._frozen_on_device(self.vae):
            for x in vae_images:
                lat = self.pipe._encode_vae_image(x.to(self.device, self.vae.dtype), generator=None)
                _, z, _, h, w = lat.shape
                tokens.append(self.pipe._pack_latents(lat, 1, z, h, w)[0].float())
        out["ref"] = torch.cat(tokens)
        out["shapes"] = shapes
        return out

    def encode(self, records: Sequence[Record], sampling: SamplingConfig):
        records = list(records)
        check_distinct_ids(records)
        self.latent_size(sampling.height, sampling.width)
        cfg_on = self.use_cfg(sampling)
        uniq, where = unique_records(records)
        enc = [self._encode_record(r, cfg_on) for r in uniq]
        idx = torch.as_tensor(where, device=self.device)
        cond = {}
        names = [("prompt", "prompt_embeds", "prompt_len"), ("ref", "ref_latents", "ref_len")]
        if cfg_on:
            names.append(("negative", "negative_embeds", "negative_len"))
        for key, name, length in names:
            rows = [e[key] for e in enc]
            padded, lengths = pad_rows(rows, max(r.shape[0] for r in rows), name)
            cond[name], cond[length] = padded.to(self.device)[idx], lengths.to(self.device)[idx]
        shapes = torch.zeros(len(uniq), self.references.max_references, 2, dtype=torch.long)
        for u, e in enumerate(enc):
            shapes[u, : len(e["shapes"])] = torch.tensor(e["shapes"])
        cond["ref_shapes"] = shapes.to(self.device)[idx]
        return cond, {}

    # ------------------------------------------------------------------ sampling hooks
    def initial_noise(self, n: int, sampling: SamplingConfig, generator) -> Tensor:
        """Packed noise drawn as ``prepare_latents`` does (``randn_tensor`` on ``[B, 1, z, h, w]``)."""
        from diffusers.utils.torch_utils import randn_tensor

        h, w = self.latent_size(sampling.height, sampling.width)
        noise = randn_tensor((n, 1, self.latent_channels, h, w), generator=generator, device=self.device,
                             dtype=torch.float32)
        return self.pipe._pack_latents(noise, n, self.latent_channels, h, w)

    def schedule(self, sampling: SamplingConfig):
        """``set_timesteps(sigmas=linspace(1, 1/T, T), mu=calculate_shift(target tokens))`` as the pipeline."""
        h, w = self.latent_size(sampling.height, sampling.width)
        n = sampling.num_steps
        return scheduler_schedule(self.pipe.scheduler, n, sigmas=np.linspace(1.0, 1 / n, n),
                                  image_seq_len=(h // 2) * (w // 2))

    def predict(self, latents: Tensor, timesteps: Tensor, cond: dict[str, Tensor], meta: dict,
                guidance: bool = True) -> Tensor:
        sampling: SamplingConfig = meta["sampling"]
        cfg_on = guidance and self.use_cfg(sampling) and "negative_embeds" in cond
        h, w = self.latent_size(sampling.height, sampling.width)
        b, n = latents.shape[:2]
        lengths = {k: cond[k].tolist() for k in ("prompt_len", "ref_len", "negative_len") if k in cond}
        shapes = cond["ref_shapes"].tolist()
        keys = [(tuple(v[i] for v in lengths.values()), tuple(map(tuple, shapes[i]))) for i in range(b)]
        t = timesteps.to(self.device, self.dtype) / 1000
        parts = []
        for idx in group_by_key(keys):
            ix = torch.as_tensor(idx, device=self.device)
            i0 = idx[0]
            ref_len = int(lengths["ref_len"][i0])
            hidden = torch.cat([latents[ix].to(self.dtype), cond["ref_latents"][ix, :ref_len].to(self.dtype)], dim=1)
            img_shapes = [[(1, h // 2, w // 2), *[(1, rh, rw) for rh, rw in shapes[i0] if rh]]] * len(idx)

            def run(embeds: str, length: str) -> Tensor:
                text = cond[embeds][ix, : int(lengths[length][i0])].to(self.dtype)
                out = self._forward(hidden_states=hidden, timestep=t[ix], guidance=None,
                                    encoder_hidden_states_mask=None, encoder_hidden_states=text,
                                    img_shapes=img_shapes)
                return out[:, :n]

            v = run("prompt_embeds", "prompt_len")
            if cfg_on:
                v_neg = run("negative_embeds", "negative_len")
                if self.cfg_grad == "cond_only":
                    v_neg = v_neg.detach()  # Flow-GRPO: the update moves the conditional branch only
                comb = v_neg + float(sampling.guidance_scale) * (v - v_neg)
                # the pipeline rescales the guided prediction to the conditional one's per-token norm
                v = comb * (torch.norm(v, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))
            parts.append((idx, v.float()))
        return reorder(parts, b)

    @torch.no_grad()
    def decode(self, latents: Tensor, meta: dict) -> Tensor:
        sampling: SamplingConfig = meta["sampling"]
        c = self.vae.config
        x = self.pipe._unpack_latents(latents.float(), sampling.height, sampling.width, self.vae_scale_factor)
        with self._frozen_on_device(self.vae):
            x = x.to(self.device, self.vae.dtype)
            mean = torch.tensor(c.latents_mean).view(1, c.z_dim, 1, 1, 1).to(x.device, x.dtype)
            inv_std = 1.0 / torch.tensor(c.latents_std).view(1, c.z_dim, 1, 1, 1).to(x.device, x.dtype)
            image = self.vae.decode(x / inv_std + mean, return_dict=False)[0][:, :, 0]
        return (image.float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode_targets(self, images: Tensor, meta: dict) -> Tensor:
        with self._frozen_on_device(self.vae):
            x = (images.to(self.device, self.vae.dtype) * 2 - 1).unsqueeze(2)
            lat = self.pipe._encode_vae_image(x, generator=None)
        b, z, _, h, w = lat.shape
        return self.pipe._pack_latents(lat, b, z, h, w).float()


__all__ = ["QWEN_EDIT_PLUS_COMPONENT_SPEC", "QwenImageEditPlusPolicy"]
