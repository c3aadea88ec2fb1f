"""Policies (generators behind one protocol), LoRA presets and tiny offline components."""
from psrl.registry import Registry

POLICIES = Registry("policy")
POLICIES.register("flux", "psrl.models.flux:FluxPolicy")

__all__ = ["POLICIES"]
