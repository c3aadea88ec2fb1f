"""Exceptions users see. Each message names the file, field or value at fault and, where possible, the fix.

The bottom of the import graph: it imports nothing of psrl, so every layer can raise these. ``ConfigError`` and
``RecordError`` are also importable from :mod:`psrl.config` and :mod:`psrl.data.records`, the modules that raise
them most."""


class ConfigError(ValueError):
    """A config key or value is wrong. The message names the key (dotted), the value and the source file."""


class RecordError(ValueError):
    """A record file or field is invalid; the message names the file, line and field."""


class PsrlError(Exception):
    """Base class of psrl's user-facing errors that are not config or record errors."""


class ModelLoadError(PsrlError):
    """A model path or hub id could not be loaded (missing, unreadable, offline, incomplete)."""


def listing(problems, limit: int = 20) -> str:
    """The problems of one error message, ``"; "``-joined: the first ``limit`` in full, then ``"; and N more"``, so
    one message names every kind of fault without growing with the data."""
    problems = [str(p) for p in problems]
    more = f"; and {len(problems) - limit} more" if len(problems) > limit else ""
    return "; ".join(problems[:limit]) + more


__all__ = ["ConfigError", "ModelLoadError", "PsrlError", "RecordError", "listing"]
