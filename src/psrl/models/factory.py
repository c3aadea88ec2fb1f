"""Build a policy from its :class:`ModelConfig` through the ``POLICIES`` registry."""
from __future__ import annotations

from typing import Any

from psrl.config import ConfigError
from psrl.models import POLICIES
from psrl.models.config import ModelConfig


def build_policy(model_cfg: ModelConfig, device: Any = "cpu"):
    """Look ``model_cfg.name`` up in ``POLICIES`` (or import it as ``module:Cls``) and call ``Cls.from_config``."""
    try:
        cls = POLICIES.get(model_cfg.name)
    except KeyError as exc:
        raise ConfigError(f"model.name: {exc.args[0]}") from exc
    if not hasattr(cls, "from_config"):
        raise ConfigError(f"model.name: {model_cfg.name!r} resolves to {cls!r}, which has no from_config()")
    return cls.from_config(model_cfg, device=device)


__all__ = ["build_policy"]
