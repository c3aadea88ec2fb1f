"""Policies (generators behind one protocol), LoRA presets and tiny offline components."""
from psrl.registry import Registry

POLICIES = Registry("policy")
POLICIES.register("flux", "psrl.models.flux:FluxPolicy")
POLICIES.register("flux_kontext", "psrl.models.flux_kontext:FluxKontextPolicy")
POLICIES.register("qwen_image_edit_plus", "psrl.models.qwen_edit_plus:QwenImageEditPlusPolicy")
POLICIES.register("sd3", "psrl.models.sd3:SD3Policy")

__all__ = ["POLICIES"]
