"""Exceptions users see. Each message names the file, field or value at fault and, where possible, the fix."""
from psrl.config import ConfigError
from psrl.data.records import RecordError


class PsrlError(Exception):
    """Base class of psrl's user-facing errors that are not config or record errors."""


class ModelLoadError(PsrlError):
    """A model path or hub id could not be loaded (missing, unreadable, offline, incomplete)."""


__all__ = ["ConfigError", "ModelLoadError", "PsrlError", "RecordError"]
