"""Tiny, random-weight, fully offline FLUX components for tests, CPU demos and configs (``model.path: tiny``).

Everything is built in code from a seed: no file is downloaded and nothing touches the Hub. Tokenizers are built in
memory from hand-made vocabularies (character-level), so prompts tokenize to readable, deterministic ids.

Every module is put in ``eval()`` mode: constructors leave modules in training mode and the tiny T5 has dropout, so
without it the same seed gives different images.
"""
from __future__ import annotations

import string

import torch

# Characters the tiny tokenizers know; anything else maps to the unknown token.
TINY_CHARS = list(string.ascii_lowercase + string.digits + ".,!?'-")


def tiny_clip_tokenizer(model_max_length: int = 77):
    """Character-level CLIP BPE: every char and ``char + '</w>'`` is a token, no merges; specials at ids 0/1."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in TINY_CHARS:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def tiny_clip_tokenizer_eos_last(model_max_length: int = 77,
                                 words=("a", "photo", "of", "dog", "cat", "red", "person")):
    """Character-level CLIP BPE plus whole-word merges for ``words``; ``<|startoftext|>``/``<|endoftext|>`` get the
    two highest ids as in real CLIP (OWL-ViT/OWLv2 pool the text at ``input_ids.argmax()``). Merges are tuples."""
    from transformers import CLIPTokenizer

    vocab, merges = {}, []
    for c in TINY_CHARS:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    for w in words:
        pieces = list(w[:-1]) + [w[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            vocab.setdefault(pieces[0] + pieces[1], len(vocab))
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def tiny_t5_tokenizer(model_max_length: int = 512, words=()):
    """Unigram vocabulary given as ``(piece, log-prob)`` pairs; ids 0/1/2 = pad/eos/unk as in real T5. Each of
    ``words`` (longer than one letter) is one likelier piece; anything else is spelled letter by letter."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -3.0) for c in TINY_CHARS] + [("\u2581" + c, -2.5) for c in TINY_CHARS]
    vocab += [("\u2581" + w, -1.0) for w in words if len(w) > 1]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def eval_modules(components: dict) -> dict:
    """Put every ``nn.Module`` of a components dict in eval mode (in place) and return the dict."""
    for value in components.values():
        if isinstance(value, torch.nn.Module):
            value.eval()
    return components


def tiny_flux_transformer(seed: int = 0, guidance_embeds: bool = True, latent_channels: int = 1):
    """A 1 double + 1 single block FLUX transformer (68k parameters). ``in_channels = 4 * latent_channels``
    because FLUX packs 2x2 latent patches."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=4 * latent_channels, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
        guidance_embeds=guidance_embeds,
    ).eval()


def tiny_flux_vae(seed: int = 0):
    """A one-level AutoencoderKL (no downsampling, ``vae_scale_factor = 1``) with FLUX's shift/scale factors."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
        latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035,
    ).eval()


def tiny_clip_text_encoder(tokenizer, seed: int = 0, hidden_size: int = 32, with_projection: bool = False):
    """CLIPTextModel (hidden 32 by default; ``CLIPTextModelWithProjection``, SD3's, with ``with_projection``) whose
    special-token ids follow ``tokenizer``."""
    import transformers

    torch.manual_seed(seed)
    cls = transformers.CLIPTextModelWithProjection if with_projection else transformers.CLIPTextModel
    return cls(transformers.CLIPTextConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, hidden_size=hidden_size, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, projection_dim=hidden_size, hidden_act="gelu", max_position_embeddings=77,
    )).eval()


def tiny_t5_encoder(tokenizer, seed: int = 0, d_model: int = 32):
    """T5EncoderModel (d_model 32 by default) sized to ``tokenizer``."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )).eval()


def tiny_flux_scheduler():
    """FlowMatchEulerDiscreteScheduler with the real FLUX.1 knobs (dynamic, resolution-dependent shift ``mu``), so
    tests exercise the shift path."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096,
    )


def tiny_flux_components(seed: int = 0, guidance_embeds: bool = True) -> dict:
    """Kwargs for ``diffusers.FluxPipeline(**c)``: transformer, vae, text_encoder (CLIP), text_encoder_2 (T5),
    tokenizer, tokenizer_2 and scheduler, all deterministic from ``seed`` and in eval mode.

    ``guidance_embeds=True`` is FLUX.1-dev-like (distilled guidance embedded); ``False`` is schnell/Kontext-like.
    Images must be a multiple of 2 pixels (VAE scale factor 1, 2x2 packing); 16x16 gives 64 tokens of 4 channels.
    """
    tokenizer, tokenizer_2 = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    return eval_modules(dict(
        scheduler=tiny_flux_scheduler(),
        vae=tiny_flux_vae(seed),
        transformer=tiny_flux_transformer(seed, guidance_embeds=guidance_embeds),
        text_encoder=tiny_clip_text_encoder(tokenizer, seed),
        tokenizer=tokenizer,
        text_encoder_2=tiny_t5_encoder(tokenizer_2, seed),
        tokenizer_2=tokenizer_2,
    ))


__all__ = [
    "TINY_CHARS",
    "eval_modules",
    "tiny_clip_text_encoder",
    "tiny_clip_tokenizer",
    "tiny_clip_tokenizer_eos_last",
    "tiny_flux_components",
    "tiny_flux_scheduler",
    "tiny_flux_transformer",
    "tiny_flux_vae",
    "tiny_t5_encoder",
    "tiny_t5_tokenizer",
]
