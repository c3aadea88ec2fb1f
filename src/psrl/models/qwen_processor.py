"""Qwen2-VL / Qwen2.5-VL processors without the video processor, shared by the Qwen-Image-Edit policy and the
Qwen-VL rewards (VLM judge, HPSv3).

``Qwen2VLProcessor.__init__`` type-checks every sub-processor, including ``video_processor=None``, and that lookup
fails when torchvision is absent. A subclass whose ``__init__`` has no ``video_processor``
parameter drops the attribute; it stays an instance of the stock class, so ``QwenImageEditPlusPipeline`` accepts it
unchanged. ``ProcessorMixin`` is kept importable from this module because diffusers/transformers look allowed base
classes up in the component's own module when a saved pipeline reloads.
"""
from __future__ import annotations

from transformers import ProcessorMixin, Qwen2_5_VLProcessor, Qwen2VLProcessor  # noqa: F401 (see docstring)


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without the video processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without the video processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


def image_only_processor_class(model_type: str):
    """The image-only processor class for a Qwen-VL ``config.model_type`` (``qwen2_vl`` or ``qwen2_5_vl``)."""
    classes = {"qwen2_vl": Qwen2VLImageOnlyProcessor, "qwen2_5_vl": Qwen2_5_VLImageOnlyProcessor}
    if model_type not in classes:
        raise ValueError(f"no image-only processor for model_type {model_type!r}; expected one of {sorted(classes)}")
    return classes[model_type]


__all__ = ["Qwen2VLImageOnlyProcessor", "Qwen2_5_VLImageOnlyProcessor", "image_only_processor_class"]
