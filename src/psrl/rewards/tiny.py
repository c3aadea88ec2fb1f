"""Tiny, random-weight, fully offline reward models, built in code (``path: tiny`` in reward args).

Shapes follow the tiny test configurations of diffusers and transformers, with these fixes:
eval mode on everything (dropout), ``initializer_range`` for OWLv2's heads, EOS-last CLIP tokenizers for OWL
pooling, image-only Qwen processors (no torchvision), ``*ImageProcessorPil`` classes. Scores from these models are
meaningless numbers; they exist so that every reward, the server and the CLI run end to end in tests and tiny
CPU configs. Nothing here touches the Hub.
"""
from __future__ import annotations

import string

import torch

from psrl.models.tiny import tiny_clip_tokenizer_eos_last  # EOS-last: OWLv2 pools text at input_ids.argmax()
from psrl.rewards.components import HPSv3Head, LaionAestheticHead, imagenet_bit_processor

DETECTOR_WORDS = ("a", "the", "cat", "dog", "person", "red", "blue", "car", "ball", "box", "toy", "bird", ".")


# ----------------------------------------------------------------------------- tokenizers (the policies' own)
def tiny_qwen_tokenizer(extra_special_tokens=(), answer_words=("Yes", "No")):
    """The policies' tiny Qwen tokenizer with single-token "Yes"/"No" answers by default (judges read P(Yes))."""
    from psrl.models.tiny_more import tiny_qwen_tokenizer as _tiny_qwen_tokenizer

    return _tiny_qwen_tokenizer(extra_special_tokens=extra_special_tokens, answer_words=answer_words)


# ----------------------------------------------------------------------------- detectors
def tiny_grounding_dino(words=DETECTOR_WORDS, image_size: int = 128):
    """(model, processor). 5 queries; the 4th feature level needs >= 128 px input."""
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        SwinConfig,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *string.ascii_lowercase]
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(dict.fromkeys(vocab))})
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessorPil(size={"shortest_edge": image_size,
                                                             "longest_edge": image_size}),
        tokenizer=tokenizer,
    )
    config = GroundingDinoConfig(
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=5, num_feature_levels=4, encoder_n_points=2,
        decoder_n_points=2, max_text_len=32, use_timm_backbone=False,
        backbone_config=SwinConfig(window_size=7, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                                   image_size=image_size, out_indices=[2, 3, 4]),
        text_config={"model_type": "bert", "vocab_size": len(tokenizer), "hidden_size": 8, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "intermediate_size": 8, "max_position_embeddings": 32},
    )
    torch.manual_seed(0)
    return GroundingDinoForObjectDetection(config).eval(), processor


def _clip_towers(tokenizer, image_size: int, patch_size: int, max_positions: int) -> dict:
    """The text and vision tower configs of the CLIP family (CLIP, OWLv2): 2 layers, width 32, 4 heads."""
    tower = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
    return {"text_config": {**tower, "vocab_size": len(tokenizer), "max_position_embeddings": max_positions,
                            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                            "pad_token_id": tokenizer.pad_token_id},
            "vision_config": {**tower, "image_size": image_size, "patch_size": patch_size}}


def tiny_owlv2(image_size: int = 32, patch_size: int = 8):
    """(model, processor); (image_size // patch_size)**2 = 16 candidate boxes per image."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2Processor
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

    tokenizer = tiny_clip_tokenizer_eos_last(model_max_length=16)
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessorPil(size={"height": image_size,
                                                                             "width": image_size}),
                               tokenizer=tokenizer)
    config = Owlv2Config(**_clip_towers(tokenizer, image_size, patch_size, 16), projection_dim=32,
                         initializer_range=0.02)
    torch.manual_seed(0)
    return Owlv2ForObjectDetection(config).eval(), processor


# ----------------------------------------------------------------------------- embedders
def tiny_dinov2():
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(image_size=28, patch_size=14, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=37)).eval()
    return model, imagenet_bit_processor(32, 28)


def tiny_dino_vit():
    """DINO v1 ViT-S/16 stand-in (``ViTModel`` without pooler; embedding = last_hidden_state[:, 0])."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    model = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                               image_size=32, patch_size=16), add_pooling_layer=False).eval()
    return model, imagenet_bit_processor(36, 32)


def tiny_clip(image_size: int = 32, patch_size: int = 8, projection_dim: int = 16):
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = tiny_clip_tokenizer_eos_last(model_max_length=77)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                              crop_size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
    )
    config = CLIPConfig(**_clip_towers(tokenizer, image_size, patch_size, 77), projection_dim=projection_dim)
    torch.manual_seed(0)
    return CLIPModel(config).eval(), processor


def tiny_aesthetic_head(dim: int = 16):
    """LAION aesthetic MLP with the same layer layout (and state-dict keys) as the released head, shrunk."""
    torch.manual_seed(0)
    return LaionAestheticHead(dim, hidden=(8, 8, 8, 4)).eval()


# ----------------------------------------------------------------------------- VLMs
def _qwen_image_only_processor(tokenizer, model_type: str):
    from psrl.models.qwen_processor import image_only_processor_class
    from psrl.models.tiny_more import tiny_qwen_vl_processor

    return tiny_qwen_vl_processor(tokenizer, cls=image_only_processor_class(model_type))


def tiny_qwen2_5_vl():
    """(model, processor): a Qwen2.5-VL judge whose tokenizer has single-token "Yes"/"No"."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from psrl.models.tiny_more import tiny_qwen_vl_config

    tokenizer = tiny_qwen_tokenizer()
    config = tiny_qwen_vl_config(tokenizer, "qwen2_5_vl")
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    return model, _qwen_image_only_processor(tokenizer, "qwen2_5_vl")


def tiny_qwen2_vl_hps():
    """(model, processor, head): Qwen2-VL with ``<|Reward|>`` and an HPSv3-shaped (mu, sigma) head."""
    from transformers import Qwen2VLForConditionalGeneration

    from psrl.models.tiny_more import tiny_qwen_vl_config

    tokenizer = tiny_qwen_tokenizer(extra_special_tokens=("<|Reward|>",), answer_words=())
    config = tiny_qwen_vl_config(tokenizer, "qwen2_vl")
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config).eval()
    torch.manual_seed(0)
    head = HPSv3Head(16, hidden=(8, 4)).eval()
    for layer in head.rm_head:  # positive biases keep the tiny ReLUs alive, so mu depends on the input
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.constant_(layer.bias, 0.5)
    return model, _qwen_image_only_processor(tokenizer, "qwen2_vl"), head
