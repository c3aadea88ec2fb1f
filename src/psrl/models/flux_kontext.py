"""``FluxKontextPolicy``: FLUX.1-Kontext with 1..n reference images per record (PSR's base model).

Each reference (a resolved path of the record) is loaded, resized by the UNO rule (:class:`~psrl.models.references.
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

from typing import Sequence

import torch
from torch import Tensor

from psrl.cache import BoundedCache
from psrl.config import ConfigError
from psrl.data.records import Record
from psrl.sampling import SamplingConfig
from psrl.models.config import ModelConfig
from psrl.models.flow_policy import group_by_key, pad_rows, reorder, unique_records
from psrl.models.flux import FluxPolicy, latent_image_ids, pack_latents
from psrl.models.references import ReferenceLoader, ReferenceResize, check_distinct_ids, pil_to_model_input

POSITION_SCHEMES = ("psr", "uno", "uno_h", "uno_w")


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

    Built like every policy: ``FluxKontextPolicy(components, cfg, device)`` with the ``FluxKontextPipeline``
    kwargs (the FLUX set). ``model.args``: ``position_ids`` (``psr`` | ``uno`` | ``uno_h`` | ``uno_w``; psr),
    ``max_references`` (4; a record with more is an error naming it), ``reference_long_side_single`` (512),
    ``reference_long_side_multi`` (320), ``reference_multiple`` (the VAE scale x 2), ``reference_cache_size``
    (encoded reference images kept across calls, 256; 0 disables) and, for ``path: tiny`` only, ``guidance_embeds``
    (true: Kontext-dev is guidance-distilled). Records reach the policy with their reference paths resolved (a
    root in the args is read only for the data pipeline's renderers, see
    :class:`psrl.models.references.ReferenceLoader`).

    Extra rollout ``cond``: ``ref_latents [B, L_max, 4C]`` (zero-padded), ``ref_ids [B, L_max, 3]``, ``ref_len [B]``.
    """

    name = "flux_kontext"
    ARGS = ("position_ids", "max_references", "reference_long_side_single", "reference_long_side_multi",
            "reference_multiple", "reference_cache_size")

    @classmethod
    def tiny_components(cls, cfg: ModelConfig) -> dict:
        from psrl.models.tiny_more import tiny_kontext_components

        return tiny_kontext_components(cfg.tiny_seed, bool(cfg.args.get("guidance_embeds", True)))

    def init_components(self, components: dict) -> list:
        frozen = super().init_components(components)
        args = self.cfg.args
        self.position_ids = str(args.get("position_ids", "psr"))
        if self.position_ids not in POSITION_SCHEMES:
            raise ConfigError(f"model.args.position_ids: must be one of {', '.join(POSITION_SCHEMES)}, "
                              f"got {self.position_ids!r}")
        multiple = self.vae_scale_factor * 2
        try:
            self.resize = ReferenceResize(long_side_single=args.get("reference_long_side_single", 512),
                                          long_side_multi=args.get("reference_long_side_multi", 320),
                                          multiple=int(args.get("reference_multiple", multiple)))
        except ValueError as e:
            raise ConfigError(f"model.args: {e}") from e
        if self.resize.multiple % multiple:
            raise ConfigError(f"model.args.reference_multiple: must be a multiple of {multiple} (VAE scale x 2x2 "
                              f"packing), got {self.resize.multiple}")
        self.references = ReferenceLoader(max_references=int(args.get("max_references", 4)))
        try:  # key -> (packed tokens, packed (h, w))
            self._ref_cache = BoundedCache(int(args.get("reference_cache_size", 256)), eviction="lru")
        except ValueError as e:
            raise ConfigError(f"model.args.reference_cache_size: {e}") from e
        return frozen

    # ------------------------------------------------------------------ references
    @torch.no_grad()
    def encode_references(self, record: Record) -> tuple[Tensor, list[tuple[int, int]]]:
        """``(packed tokens [L, 4C] fp32, packed (h, w) per reference)`` for one record.

        Each reference image is VAE-encoded once per size class (single or multi-reference long side) and kept
        (``reference_cache_size`` images, least recently used out): subjects recur across records (PSRBench,
        DreamBench and the pocket world reuse each subject's image in many prompts), so a per-record cache missed
        almost always and SFT spent half its time re-encoding the same images."""
        paths = self.references.paths(record)
        n = len(paths)
        tokens, shapes = [], []
        for path in paths:
            key = (path, n == 1, self.resize)
            hit = self._ref_cache.get(key)
            if hit is None:
                hit = self._encode_reference(self.references.load_one(record, path), n, record.id)
                self._ref_cache.put(key, hit)
            tokens.append(hit[0])
            shapes.append(hit[1])
        return torch.cat(tokens).to(self.device), shapes

    def _encode_reference(self, img, n: int, record_id: str) -> tuple[Tensor, tuple[int, int]]:
        """One reference image resized for a record of ``n`` references -> ``(tokens [l, 4C] fp32, (h, w))``."""
        lat = self._vae_encode(pil_to_model_input(self.resize.apply(img, n, record_id)))
        return pack_latents(lat)[0], (lat.shape[2] // 2, lat.shape[3] // 2)

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
    def predict(self, latents: Tensor, timesteps: Tensor, cond: dict[str, Tensor], meta: dict,
                guidance: bool = True) -> Tensor:
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
            hidden = torch.cat([latents[ix].to(self.device, dtype),
                                cond["ref_latents"][ix, :length].to(self.device, dtype)], dim=1)
            img_ids = torch.cat([target_ids, cond["ref_ids"][idx[0], :length].to(self.device, dtype)])
            out = self._flux_forward(hidden, timesteps[ix], cond["prompt_embeds"][ix],
                                     cond["pooled_prompt_embeds"][ix], img_ids, meta)
            parts.append((idx, out[:, :n]))
        return reorder(parts, b)


__all__ = ["POSITION_SCHEMES", "FluxKontextPolicy", "reference_position_ids"]
