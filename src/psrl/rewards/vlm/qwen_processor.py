"""Qwen2-VL / Qwen2.5-VL processors without the video processor.

``Qwen2VLProcessor.__init__`` type-checks every sub-processor, including ``video_processor=None``, and that lookup
fails when torchvision is absent (research gotcha Q2). A subclass whose ``__init__`` has no ``video_processor``
parameter drops the attribute; it stays an instance of the stock class. ``ProcessorMixin`` is kept importable
from this module because diffusers/transformers look allowed base classes up in the component's own module.
"""
from __future__ import annotations

from transformers import ProcessorMixin, Qwen2_5_VLProcessor, Qwen2VLProcessor  # noqa: F401 (see docstring)


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


def image_only_processor_class(model_type: str):
    return {"qwen2_vl": Qwen2VLImageOnlyProcessor, "qwen2_5_vl": Qwen2_5_VLImageOnlyProcessor}[model_type]
