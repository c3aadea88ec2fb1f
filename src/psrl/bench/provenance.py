"""What a benchmark result was computed with: a hash of its config and the package versions."""
from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata

PACKAGES = ("psrl", "torch", "transformers", "diffusers", "peft", "accelerate", "pillow", "numpy")


def config_hash(config: dict) -> str:
    """First 16 hex digits of the SHA-256 of the config as canonical JSON (sorted keys)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
