"""The pocket generator: FLUX.1-Kontext's architecture at a size a CPU trains in minutes, built from diffusers and
transformers classes so that :class:`psrl.models.flux_kontext.FluxKontextPolicy` and diffusers'
``FluxKontextPipeline`` load it with ``from_pretrained`` like the real model.

* VAE: ``AutoencoderKL`` with three levels (4x downsampling: 64x64 RGB -> 16 latent channels at 16x16), 0.98M
  weights; its ``shift_factor`` / ``scaling_factor`` are measured on the training scenes after the VAE is trained
  (as SD3's and FLUX.1's were), so latents enter the flow at zero mean and unit variance.
* Transformer: ``FluxTransformer2DModel`` with 2 double-stream and 4 single-stream blocks, 4 heads of 32, latent
  2x2 packing (64 input channels), no guidance embedding (Kontext-style), 2.3M weights; RoPE axes (8, 12, 12)
  over the (frame, row, column) position ids Kontext gives the target (frame 0) and each reference (frame i).
* Text: a 2-layer CLIP text model (pooled width 64) and a 2-layer T5 encoder (width 64) over word-level
  vocabularies of the world's words (letters as fallback), frozen at their random initialisation: the
  transformer learns to read these fixed features.
* Scheduler: ``FlowMatchEulerDiscreteScheduler`` without shift: 64 image tokens are far below the 256 where
  FLUX's resolution-dependent shift starts.

Sizes follow FLUX.1-Kontext (Labs et al., arXiv 2506.15742, Section 3: rectified-flow transformer on 2x2-packed
latents, references appended as tokens with their own position-id frame) shrunk to CPU scale.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

# the packaged pretrained pocket generator (a diffusers FluxKontextPipeline folder), made by `psrl world pretrain`
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights" / "pocket-kontext"

POCKET_VAE_CONFIG: dict = dict(
    sample_size=64, in_channels=3, out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 64), layers_per_block=1, latent_channels=16, norm_num_groups=16,
    use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0, scaling_factor=1.0,
)

POCKET_TRANSFORMER_CONFIG: dict = dict(
    patch_size=1, in_channels=64, num_layers=2, num_single_layers=4, attention_head_dim=32,
    num_attention_heads=4, joint_attention_dim=64, pooled_projection_dim=64, guidance_embeds=False,
    axes_dims_rope=(8, 12, 12),
)

TEXT_WIDTH = 64

# one token each in the pocket tokenizers; anything else is spelled letter by letter
POCKET_WORDS: tuple[str, ...] = (
    "a", "an", "the", "and", "of", "on", "in", "at", "to", "with", "is", "are", "its", "it", "one", "two", "three",
    "four", "left", "right", "top", "bottom", "middle", "center", "above", "below", "next", "beside", "behind",
    "front", "side", "background", "scene", "picture", "image", "photo", "show", "shows", "place", "put", "draw",
    "circle", "square", "triangle", "diamond", "star", "cross", "red", "orange", "yellow", "green", "cyan", "blue",
    "purple", "magenta", "solid", "striped", "dotted", "stripes", "dots", "pink", "light", "mint", "cream",
    "lavender", "peach", "grey", "gray", "jumping", "jumps", "tilted", "rotated", "big", "small", "large", "row",
    "together", "first", "second", "third", "fourth", "subject", "subjects", "each", "other", "from", "far",
)


def pocket_vae(seed: int = 0, **overrides):
    """A freshly initialised pocket ``AutoencoderKL`` (``POCKET_VAE_CONFIG`` with ``overrides``), in eval mode."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**{**POCKET_VAE_CONFIG, **overrides}).eval()


def pocket_transformer(seed: int = 0, **overrides):
    """A freshly initialised pocket ``FluxTransformer2DModel`` (``POCKET_TRANSFORMER_CONFIG`` with ``overrides``)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(**{**POCKET_TRANSFORMER_CONFIG, **overrides}).eval()


def pocket_clip_tokenizer():
    """CLIP BPE whose merges spell each of :data:`POCKET_WORDS` as one token (letters otherwise)."""
    from psrl.models.tiny import tiny_clip_tokenizer_eos_last

    return tiny_clip_tokenizer_eos_last(words=POCKET_WORDS)


def pocket_t5_tokenizer():
    """T5 unigram vocabulary with each of :data:`POCKET_WORDS` as one likelier piece (letters as fallback)."""
    from psrl.models.tiny import tiny_t5_tokenizer

    return tiny_t5_tokenizer(words=POCKET_WORDS)


def pocket_components(seed: int = 0, vae=None, transformer=None) -> dict:
    """``FluxKontextPipeline`` kwargs for the pocket generator, freshly initialised from ``seed`` except the
    ``vae`` / ``transformer`` given (e.g. a trained VAE). Every module in eval mode."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from psrl.models.tiny import eval_modules, tiny_clip_text_encoder, tiny_t5_encoder

    tokenizer, tokenizer_2 = pocket_clip_tokenizer(), pocket_t5_tokenizer()
    return eval_modules(dict(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),
        vae=vae if vae is not None else pocket_vae(seed),
        transformer=transformer if transformer is not None else pocket_transformer(seed),
        text_encoder=tiny_clip_text_encoder(tokenizer, seed, hidden_size=TEXT_WIDTH),
        tokenizer=tokenizer,
        text_encoder_2=tiny_t5_encoder(tokenizer_2, seed, d_model=TEXT_WIDTH),
        tokenizer_2=tokenizer_2,
    ))


def save_pocket_pipeline(components: dict, out: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write ``components`` as a diffusers ``FluxKontextPipeline`` folder (``model_index.json`` + one subfolder per
    component, weights as safetensors in ``dtype``: fp16 halves the packaged size). Returns ``out``."""
    from diffusers import FluxKontextPipeline

    out = Path(out)
    cast = {k: (v.to(dtype) if isinstance(v, torch.nn.Module) else v) for k, v in components.items()}
    FluxKontextPipeline(**cast).save_pretrained(out, safe_serialization=True)
    for cfg_file in out.glob("*/config.json"):  # diffusers records where the weights were loaded from: a local path
        data = json.loads(cfg_file.read_text())
        if data.pop("_name_or_path", None) is not None:
            cfg_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    for v in components.values():  # .to() is in place for modules: give the caller its fp32 weights back
        if isinstance(v, torch.nn.Module):
            v.to(torch.float32)
    return out


def pipeline_bytes(folder: str | Path) -> int:
    """Total size of the weight files (``*.safetensors``) under ``folder``."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*.safetensors"))


__all__ = ["POCKET_TRANSFORMER_CONFIG", "POCKET_VAE_CONFIG", "POCKET_WORDS", "TEXT_WIDTH", "WEIGHTS_DIR",
           "pipeline_bytes", "pocket_clip_tokenizer", "pocket_components", "pocket_t5_tokenizer", "pocket_transformer",
           "pocket_vae", "save_pocket_pipeline"]
