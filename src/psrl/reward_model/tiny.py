"""A tiny random Qwen2.5-VL judge that LoRA can actually teach, for CPU tests and demos of the reward-model trainer.

psrl's tiny judge (:func:`psrl.rewards.tiny.tiny_qwen2_5_vl`: width 16, init std 0.02) cannot become confident: its
final RMSNorm fixes the hidden state's norm at about 4 and ``lm_head`` (not a LoRA target) has rows of norm about
0.08, so every logit stays within about +-0.3 of the others and the weighted loss barely moves (measured: 300 steps
of the colour task below left the held-out first-token accuracy at chance). This one is the same model family,
tokenizer and processor (:mod:`psrl.models.tiny_more`), widened to 64 with 4 heads and initialised with std 0.2, so
logits can reach about +-12; with a rank-8 LoRA it learns "do the two images have the same dominant colour?" to
100% held-out accuracy in ~200 steps on one CPU thread.

It is loaded like a real checkpoint: :func:`save_tiny_judge` writes a transformers folder that ``model.path`` (the
trainer) and the ``vlm_consistency`` reward's ``path`` read with ``from_pretrained``.
"""
from __future__ import annotations

from pathlib import Path

import torch


def tiny_trainable_judge(width: int = 64, layers: int = 2, init_std: float = 0.2, seed: int = 0):
    """``(model, processor)``: a random Qwen2.5-VL with a ``width``-wide, ``layers``-deep language model (4 heads)
    over psrl's tiny tokenizer (single-token Yes / No) and image-only processor (56x56 px -> 4 image tokens)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from psrl.models.tiny_more import tiny_qwen_vl_config
    from psrl.rewards.tiny import _qwen_image_only_processor, tiny_qwen_tokenizer

    if width % 8:
        raise ValueError(f"width must be a multiple of 8 (4 heads with an even rotary half), got {width}")
    tokenizer = tiny_qwen_tokenizer()
    config = tiny_qwen_vl_config(tokenizer, "qwen2_5_vl")
    text = config.text_config
    head_dim = width // 4
    half = head_dim // 2  # Qwen2.5-VL's multimodal rotary splits half the head dim into (t, h, w) sections
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = width, 2 * width, layers
    text.num_attention_heads = text.num_key_value_heads = 4
    text.head_dim = head_dim
    text.rope_parameters = {"rope_type": "default", "rope_theta": 1e6,
                            "mrope_section": [half - 2 * (half // 3), half // 3, half // 3]}
    text.initializer_range = config.initializer_range = init_std
    config.vision_config.out_hidden_size = width
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    return model, _qwen_image_only_processor(tokenizer, "qwen2_5_vl")


def save_tiny_judge(path: str | Path, **kwargs) -> Path:
    """Write :func:`tiny_trainable_judge` as a transformers folder (weights, config, tokenizer, processor)."""
    from psrl.reward_model.judge_model import save_processor

    path = Path(path)
    model, processor = tiny_trainable_judge(**kwargs)
    model.save_pretrained(str(path))
    save_processor(processor, path)
    return path


__all__ = ["save_tiny_judge", "tiny_trainable_judge"]
