"""``FluxKontextPolicy``: FLUX.1-Kontext with 1..n reference images per record (PSR's base model).

Each reference is loaded under the data root, resized by the UNO rule (:class:`~psrl.models.references.
ReferenceResize`), VAE-encoded once per record (``argmax`` latents as ``FluxKontextPipeline``), 2x2-packed and
appended after the target tokens; the transformer output is sliced back to the target tokens. The reference tokens
live in ``Rollout.cond`` so the group and every recomputed step reuse them; a bounded cache also keeps them across
rollouts and SFT batches.

Position ids of the reference tokens (``model.args.position_ids``; PSR, arXiv 2512.01236: its frame-wise
positional encoding and the positional-encoding ablation; UNO, arXiv 2504.02160: UnoPE):

* ``psr`` (default): reference ``i`` (1-based) gets ``(i, row, col)`` on its own un-offset grid: the offset is on
  the first ("frame") axis only. With one reference this is exactly stock Kontext (``(1, row, col)``).
* ``uno``: UNO's diagonal layout: every reference gets first-axis ``1`` (Kontext's context marker; UNO itself, on
  FLUX.1-dev, uses 0) and its rows and columns are shifted past the target and all previous references
  (``H_off = H_target + sum of previous h``, likewise for ``W``).
* ``uno_h`` / ``uno_w``: the height-only / width-only offsets of PSR's ablation.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Sequence

import torch
from torch import Tensor

from psrl.config import ConfigError
from psrl.data.records import Record
from psrl.sampling import SamplingConfig
from psrl.models.config import ModelConfig
from psrl.models.flow_policy import group_by_key, pad_rows, reorder, unique_records
from psrl.models.flux import FluxPolicy, latent_image_ids, pack_latents
from psrl.models.references import ReferenceLoader, ReferenceResize, check_distinct_ids, pil_to_model_input

logger = logging.getLogger(__name__)

POSITION_SCHEMES = ("psr", "uno", "uno_h", "uno_w")
_ARGS = ("position_ids", "max_references", "reference_long_side_single", "reference_long_side_multi",
         "reference_multiple", "data_root", "guidance_embeds", "reference_cache_size")


def reference_position_ids(shapes: Sequence[tuple[int, int]], target_hw: tuple[int, int], scheme: str) -> Tensor:
    """``[sum h_i w_i, 3]`` position ids for references of packed sizes ``shapes`` after a target of packed size
    ``target_hw`` under ``scheme`` (see the module docstring). Pure function."""
    if scheme not in POSITION_SCHEMES:
        raise ValueError(f"position_ids must be one of {POSITION_SCHEMES}, got {scheme!r}")
    parts = []
    h_off, w_off = target_hw
    for i, (h, w) in enumerate(shapes):
        if scheme == "psr":
            ids = latent_image_ids(h, w, first=float(i + 1))
        else:
            ids = latent_image_ids(h, w, first=1.0)
            if scheme in ("uno", "uno_h"):
                ids[:, 1] += h_off
            if scheme in ("uno", "uno_w"):
                ids[:, 2] += w_off
            h_off, w_off = h_off + h, w_off + w
        parts.append(ids)
    return torch.cat(parts)


class FluxKontextPolicy(FluxPolicy):
    """FLUX.1-Kontext policy with up to ``max_references`` references per record.

    Args:
        components: ``FluxKontextPipeline`` kwargs (the FLUX set).
        position_ids: ``psr`` | ``uno`` | ``uno_h`` | ``uno_w``.
        max_references: records with more references are an error naming the record.
        resize: the reference resize rule; ``multiple`` defaults to the VAE scale times 2.
        data_root: folder the records' reference paths are relative to.
        reference_cache_size: encoded reference sets kept across calls (0 disables the cache).
        **flux_kwargs: as :class:`FluxPolicy` (lora, dtype, device, ...).

    Extra rollout ``cond``: ``ref_latents [B, L_max, 4C]`` (zero-padded), ``ref_ids [B, L_max, 3]``, ``ref_len [B]``.
    """

    def __init__(self, components: dict, *, position_ids: str = "psr", max_references: int = 4,
                 resize: ReferenceResize | None = None, data_root=None, reference_cache_size: int = 256,
                 **flux_kwargs):
        if position_ids not in POSITION_SCHEMES:
            raise ConfigError(f"model.args.position_ids: must be one of {', '.join(POSITION_SCHEMES)}, "
                              f"got {position_ids!r}")
        super().__init__(components, **flux_kwargs)
        self.position_ids = position_ids
        multiple = self.vae_scale_factor * 2
        self.resize = resize if resize is not None else ReferenceResize(multiple=multiple)
        if self.resize.multiple % multiple:
            raise ConfigError(f"model.args.reference_multiple: must be a multiple of {multiple} (VAE scale x 2x2 "
                              f"packing), got {self.resize.multiple}")
        self.references = ReferenceLoader(data_root, max_references=max_references)
        self.reference_cache_size = reference_cache_size
        self._ref_cache: OrderedDict[Any, tuple[Tensor, list[tuple[int, int]]]] = OrderedDict()

    @property
    def data_root(self):
        return self.references.data_root

    @data_root.setter
    def data_root(self, value):
        from pathlib import Path

        self.references.data_root = Path(value)
        self._ref_cache.clear()

    @classmethod
    def from_config(cls, model_cfg: ModelConfig, device: Any = "cpu") -> "FluxKontextPolicy":
        """``model.args``: ``position_ids`` (psr), ``max_references`` (4), ``reference_long_side_single`` (512),
        ``reference_long_side_multi`` (320), ``reference_multiple`` (VAE scale x 2), ``data_root`` (.),
        ``reference_cache_size`` (256) and, for ``path: tiny`` only, ``guidance_embeds`` (true: Kontext-dev is
        guidance-distilled)."""
        from psrl.models.loading import FLUX_COMPONENT_SPEC, load_policy_components, torch_dtype_from_name

        args = dict(model_cfg.args)
        unknown = sorted(set(args) - set(_ARGS))
        if unknown:
            raise ConfigError(f"model.args.{unknown[0]}: unknown option for flux_kontext (known: {', '.join(_ARGS)})")
        dtype = torch_dtype_from_name(model_cfg.dtype)
        if model_cfg.path == "tiny":
            from psrl.models.tiny_more import tiny_kontext_components

            components = tiny_kontext_components(model_cfg.tiny_seed, bool(args.get("guidance_embeds", True)))
        else:
            if "guidance_embeds" in args:
                raise ConfigError("model.args.guidance_embeds only applies to model.path: tiny")
            components = load_policy_components(model_cfg, FLUX_COMPONENT_SPEC, device)
        vae_scale = 2 ** (len(components["vae"].config.block_out_channels) - 1)
        try:
            resize = ReferenceResize(long_side_single=args.get("reference_long_side_single", 512),
                                     long_side_multi=args.get("reference_long_side_multi", 320),
                                     multiple=int(args.get("reference_multiple", vae_scale * 2)))
        except ValueError as e:
            raise ConfigError(f"model.args: {e}") from e
        return cls(components, position_ids=str(args.get("position_ids", "psr")),
                   max_references=int(args.get("max_references", 4)), resize=resize,
                   data_root=args.get("data_root"), reference_cache_size=int(args.get("reference_cache_size", 256)),
                   lora=model_cfg.lora, dtype=dtype, device=device, max_sequence_length=model_cfg.max_sequence_length,
                   gradient_checkpointing=model_cfg.gradient_checkpointing, offload_frozen=model_cfg.offload_frozen)

    # ------------------------------------------------------------------ references
    @torch.no_grad()
    def encode_references(self, record: Record) -> tuple[Tensor, list[tuple[int, int]]]:
        """``(packed tokens [L, 4C] fp32, packed (h, w) per reference)`` for one record, VAE-encoded once."""
        key = (record.id, tuple(s.image for s in record.subjects), self.resize, str(self.references.data_root))
        if key in self._ref_cache:
            self._ref_cache.move_to_end(key)
            return self._ref_cache[key]
        images = self.references.load(record)
        n = len(images)
        tokens, shapes = [], []
        with self._frozen_on_device(self.vae) as vae:
            vae_device = next(vae.parameters()).device
            for img in images:
                x = pil_to_model_input(self.resize.apply(img, n, record.id)).to(vae_device, self.dtype)
                lat = vae.encode(x).latent_dist.mode()
                lat = (lat.float() - vae.config.shift_factor) * vae.config.scaling_factor
                tokens.append(pack_latents(lat)[0])
                shapes.append((lat.shape[2] // 2, lat.shape[3] // 2))
        out = (torch.cat(tokens).to(self.device), shapes)
        if self.reference_cache_size > 0:
            self._ref_cache[key] = out
            if len(self._ref_cache) > self.reference_cache_size:
                self._ref_cache.popitem(last=False)
        return out

    def encode_conditions(self, records: Sequence[Record], sampling: SamplingConfig) -> dict[str, Tensor]:
        """Prompt embeddings (as FLUX) plus each record's reference tokens and position ids, padded to the batch's
        longest reference sequence (``ref_len`` holds the true lengths)."""
        records = list(records)
        check_distinct_ids(records)
        cond = super().encode_conditions(records, sampling)
        lat_h, lat_w = self.latent_size(sampling.height, sampling.width)
        uniq, where = unique_records(records)
        toks, ids = [], []
        for r in uniq:
            t, shapes = self.encode_references(r)
            toks.append(t)
            ids.append(reference_position_ids(shapes, (lat_h // 2, lat_w // 2), self.position_ids).to(self.device))
        width = max(t.shape[0] for t in toks)
        tok_pad, lengths = pad_rows(toks, width, "reference tokens")
        ids_pad, _ = pad_rows(ids, width, "reference ids")
        idx = torch.as_tensor(where, device=self.device)
        cond.update(ref_latents=tok_pad.to(self.device)[idx], ref_ids=ids_pad.to(self.device)[idx],
                    ref_len=lengths.to(self.device)[idx])
        return cond

    # ------------------------------------------------------------------ the model
    def velocity(self, latents: Tensor, timesteps: Tensor, cond: dict[str, Tensor], meta: dict) -> Tensor:
        """Target tokens followed by the sample's reference tokens; samples sharing a reference layout run as one
        batch, on unpadded sequences (so results equal ``FluxKontextPipeline``'s)."""
        dtype, b, n = self.dtype, latents.shape[0], latents.shape[1]
        lat_h, lat_w = self.latent_size(meta["height"], meta["width"])
        target_ids = latent_image_ids(lat_h // 2, lat_w // 2, device=self.device, dtype=dtype)
        lengths = cond["ref_len"].tolist()
        keys = [(int(lengths[i]), cond["ref_ids"][i, : int(lengths[i])].cpu().numpy().tobytes()) for i in range(b)]
        parts = []
        timesteps = timesteps.to(self.device)
        for idx in group_by_key(keys):
            ix = torch.as_tensor(idx, device=self.device)
            length = int(lengths[idx[0]])
            embeds = cond["prompt_embeds"][ix].to(self.device, dtype)
            hidden = torch.cat([latents[ix].to(self.device, dtype),
                                cond["ref_latents"][ix, :length].to(self.device, dtype)], dim=1)
            img_ids = torch.cat([target_ids, cond["ref_ids"][idx[0], :length].to(self.device, dtype)])
            guidance = None
            if self.guidance_embeds:
                guidance = torch.full((len(idx),), float(meta["guidance"]), device=self.device, dtype=torch.float32)
            out = self._forward(
                hidden_states=hidden, timestep=timesteps[ix].to(dtype) / 1000, guidance=guidance,
                pooled_projections=cond["pooled_prompt_embeds"][ix].to(self.device, dtype),
                encoder_hidden_states=embeds,
                txt_ids=torch.zeros(embeds.shape[1], 3, device=self.device, dtype=dtype),
                img_ids=img_ids)
            parts.append((idx, out[:, :n].float()))
        return reorder(parts, b)


__all__ = ["POSITION_SCHEMES", "FluxKontextPolicy", "reference_position_ids"]
