"""Tiny, random-weight, offline components, part 2: Qwen-Image-Edit-Plus, Stable Diffusion 3, FLUX.1-Kontext.

Built in code from a seed, tokenizers made in memory, every module in ``eval()`` mode (dropout would make the same
seed give different images). Shapes follow diffusers' own dummy test components, with these fixes:

* Qwen-Image-Edit-Plus: the VLM processor needs a subclass without a video processor (no torchvision);
  the subclass must live in an importable module that also has ``ProcessorMixin`` in its namespace so a saved
  pipeline reloads; the pipeline resizes every input to fixed areas, see
  :func:`qwen_edit_plus_image_areas`.
* SD3: T5 ``d_model`` 64 so the two CLIP widths (2 x 32) fit in the joint width without cropping.
* Kontext: the tiny FLUX components of :mod:`psrl.models.tiny` (the same transformer serves both pipelines).

This module imports transformers at the top on purpose: the processor subclasses must be importable classes.
"""
from __future__ import annotations

import contextlib

import torch
from transformers import ProcessorMixin  # noqa: F401  (must be in this namespace for pipeline reloads, Q2)

from psrl.models.qwen_processor import Qwen2_5_VLImageOnlyProcessor, Qwen2VLImageOnlyProcessor
from psrl.models.tiny import (eval_modules, tiny_clip_text_encoder, tiny_clip_tokenizer, tiny_flux_components,
                              tiny_t5_encoder, tiny_t5_tokenizer)

QWEN_SPECIALS = ["<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_qwen_tokenizer(extra_special_tokens=(), answer_words=()):
    """Byte-level BPE with the 256 byte symbols only (no merges) plus Qwen's chat and vision special tokens.
    ``extra_special_tokens`` are added as specials (HPSv3's ``<|Reward|>``); ``answer_words`` become single tokens,
    as "Yes"/"No" are in the real Qwen vocabulary, so a judge's first-token P(Yes) is well defined."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": [*QWEN_SPECIALS, *extra_special_tokens]})
    if answer_words:
        tok.add_tokens(list(answer_words))
    tok.chat_template = QWEN_CHAT_TEMPLATE
    return tok


def tiny_qwen_vl_processor(tokenizer=None, cls=Qwen2VLImageOnlyProcessor, min_pixels: int = 56 * 56,
                           max_pixels: int = 112 * 112):
    """Image-only Qwen-VL processor; ``min/max_pixels`` bound the vision grid (56x56 -> 4 image tokens)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = tokenizer if tokenizer is not None else tiny_qwen_tokenizer()
    return cls(image_processor=Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels),
               tokenizer=tokenizer, chat_template=tokenizer.chat_template or QWEN_CHAT_TEMPLATE)


def tiny_qwen_vl_config(tokenizer, model_type: str = "qwen2_5_vl"):
    """A 2-layer, width-16 ``Qwen2_5_VLConfig`` (``model_type`` ``qwen2_5_vl``) or ``Qwen2VLConfig``
    (``qwen2_vl``) over ``tokenizer``'s chat and vision special tokens (from :func:`tiny_qwen_tokenizer`)."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ["<|endoftext|>", "<|im_end|>", *QWEN_SPECIALS]}
    text = {
        "vocab_size": len(tokenizer), "hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 2,
        "rope_parameters": {"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 1000000.0},
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
    }
    if model_type == "qwen2_5_vl":
        cls, vision = Qwen2_5_VLConfig, {"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
                                         "out_hidden_size": 16, "fullatt_block_indexes": [1]}
    elif model_type == "qwen2_vl":
        cls, vision = Qwen2VLConfig, {"depth": 2, "embed_dim": 16, "hidden_size": 16, "num_heads": 2, "mlp_ratio": 2}
    else:
        raise ValueError(f"model_type must be qwen2_5_vl or qwen2_vl, got {model_type!r}")
    return cls(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
               video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
               vision_end_token_id=ids["<|vision_end|>"])


def tiny_qwen_image_edit_plus_components(seed: int = 0) -> dict:
    """Kwargs for ``QwenImageEditPlusPipeline(**c)``; shapes follow diffusers' dummy components.

    The tiny VAE downsamples x4 (the real one x8), so output sizes must be multiples of 8.
    """
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    tokenizer = tiny_qwen_tokenizer()
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4,     # in_channels == 4 * vae z_dim (2x2 packing)
        num_layers=2, attention_head_dim=16, num_attention_heads=3,
        joint_attention_dim=16,                           # == text encoder hidden size
        guidance_embeds=False, axes_dims_rope=(8, 4, 4),  # sums to attention_head_dim
    )
    torch.manual_seed(seed)
    z_dim = 4
    vae = AutoencoderKLQwenImage(
        base_dim=z_dim * 6, z_dim=z_dim, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True],
        latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim,
    )
    # Qwen-Image's scheduler knobs: exponential, resolution-dependent shift
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, base_image_seq_len=256,
        max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential",
    )
    config = tiny_qwen_vl_config(tokenizer, "qwen2_5_vl")
    torch.manual_seed(seed)
    text_encoder = Qwen2_5_VLForConditionalGeneration(config)
    return eval_modules(dict(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                             processor=tiny_qwen_vl_processor(tokenizer), transformer=transformer))


@contextlib.contextmanager
def qwen_edit_plus_image_areas(condition_area: int = 32 * 32, vae_area: int = 32 * 32):
    """Temporarily set the areas ``QwenImageEditPlusPipeline`` resizes every input image to (384^2 for the VLM,
    1024^2 for the VAE), which it reads from module globals at call time. Used to compare the pipeline with
    :class:`psrl.models.qwen_edit_plus.QwenImageEditPlusPolicy` at tiny sizes (the policy takes the areas as
    options and never patches anything)."""
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as m

    old = m.CONDITION_IMAGE_SIZE, m.VAE_IMAGE_SIZE
    m.CONDITION_IMAGE_SIZE, m.VAE_IMAGE_SIZE = condition_area, vae_area
    try:
        yield
    finally:
        m.CONDITION_IMAGE_SIZE, m.VAE_IMAGE_SIZE = old


def tiny_sd3_components(seed: int = 0) -> dict:
    """Kwargs for ``StableDiffusion3Pipeline(**c)``; prompt embeddings are 77 CLIP + ``max_sequence_length`` T5
    tokens wide 64. The VAE does not downsample (``vae_scale_factor = 1``) and SD3 has no 2x2 packing."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    tokenizer, tokenizer_2, tokenizer_3 = tiny_clip_tokenizer(), tiny_clip_tokenizer(), tiny_t5_tokenizer()
    text_encoder = tiny_clip_text_encoder(tokenizer, seed, with_projection=True)
    text_encoder_2 = tiny_clip_text_encoder(tokenizer_2, seed + 1, with_projection=True)
    text_encoder_3 = tiny_t5_encoder(tokenizer_3, seed, d_model=64)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=1, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,   # == num_attention_heads * attention_head_dim
        joint_attention_dim=64,      # == T5 d_model >= 2 * CLIP hidden size (CLIP embeds are zero-padded to it)
        pooled_projection_dim=64,    # == 2 * CLIP projection_dim
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
        latent_channels=4, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5305,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)   # the SD3 / SD3.5 scheduler setting
    return eval_modules(dict(scheduler=scheduler, vae=vae, transformer=transformer, text_encoder=text_encoder,
                             tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                             text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3))


def tiny_kontext_components(seed: int = 0, guidance_embeds: bool = True) -> dict:
    """Kwargs for ``FluxKontextPipeline(**c, image_encoder=None, feature_extractor=None)``: the tiny FLUX set.
    FLUX.1-Kontext-dev is guidance-distilled (embedded guidance, 2.5 in Flow-GRPO's Kontext config), hence
    ``guidance_embeds=True`` by default. Pass ``max_area=h*w, _auto_resize=False`` to the pipeline at tiny sizes."""
    return tiny_flux_components(seed, guidance_embeds=guidance_embeds)


__all__ = [
    "QWEN_CHAT_TEMPLATE",
    "QWEN_SPECIALS",
    "Qwen2VLImageOnlyProcessor",
    "Qwen2_5_VLImageOnlyProcessor",
    "qwen_edit_plus_image_areas",
    "tiny_kontext_components",
    "tiny_qwen_image_edit_plus_components",
    "tiny_qwen_tokenizer",
    "tiny_qwen_vl_config",
    "tiny_qwen_vl_processor",
    "tiny_sd3_components",
]
