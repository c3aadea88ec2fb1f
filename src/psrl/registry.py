"""A small lazy registry: names map to objects or ``"module:attr"`` strings imported on first use.

Unregistered names that look like ``module:attr`` (or ``module.attr``) are imported directly, so users can plug in
their own rewards or policies from config without touching psrl.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Any] = {}

    def register(self, name: str, target: Any = None) -> Any:
        """``register("x", "pkg.mod:Cls")``, ``register("x", obj)`` or as a decorator ``@register("x")``."""
        if target is None:
            def deco(obj: Callable) -> Callable:
                self._entries[name] = obj
                return obj
            return deco
        self._entries[name] = target
        return target

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Any:
        if name in self._entries:
            entry = self._entries[name]
            if isinstance(entry, str):
                entry = import_object(entry)
                self._entries[name] = entry
            return entry
        if ":" in name or "." in name:
            try:
                return import_object(name)
            except (ImportError, AttributeError) as e:
                raise KeyError(f"unknown {self.kind} {name!r}: not registered and not importable ({e})") from e
        raise KeyError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names()) or '(none)'}; "
                       f"or give a dotted path 'module:attr'")


def import_object(path: str) -> Any:
    """Import ``"pkg.mod:attr"`` (or ``"pkg.mod.attr"``)."""
    if ":" in path:
        module, attr = path.split(":", 1)
    else:
        module, _, attr = path.rpartition(".")
    if not module or not attr:
        raise ImportError(f"{path!r} is not of the form 'module:attr'")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
