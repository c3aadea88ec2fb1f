"""Start-up checks that need a built policy: the sizes it can generate and the records it can take. Every command
that generates (``psrl train``, ``sft``, ``generate``, ``bench generate``) runs them before its first image, so a
bad record or size is reported at once, all of them in one message, and never at step 18."""
from __future__ import annotations

from typing import Sequence

from psrl.config import ConfigError
from psrl.data.checks import apply_record_checks, check_records
from psrl.data.records import Record


def check_sampling_size(policy, sampling, key: str) -> None:
    """Raise :class:`ConfigError` naming ``key`` when ``policy`` cannot generate at ``sampling``'s size: the
    policy's one size rule, ``latent_size(height, width)`` (a multiple of the VAE scale x the patch size)."""
    latent_size = getattr(policy, "latent_size", None)
    if latent_size is None:
        return
    try:
        latent_size(sampling.height, sampling.width)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


def validate_records(records: Sequence[Record], policy, source, *, skip_invalid: bool = False,
                     needs_target: bool = False) -> list[Record]:
    """Check resolved ``records`` (:func:`psrl.data.records.load_records`) for ``policy``: subject count against
    its limit (a reference-conditioned policy's ``references.max_references``; text-only policies take none),
    every reference and target decodes and is large enough. Returns them, or without the bad ones when
    ``skip_invalid``.

    Raises:
        RecordError: one message naming ``source`` and listing every bad record (id, file, reason).
    """
    max_refs = getattr(getattr(policy, "references", None), "max_references", None)
    needs_refs = max_refs is not None
    problems = check_records(records, max_subjects=max_refs, needs_references=needs_refs, needs_target=needs_target,
                             open_images=needs_refs or needs_target)
    where = source if isinstance(source, str) else "inline prompts"
    return apply_record_checks(records, problems, source=where, skip_invalid=skip_invalid)


__all__ = ["check_sampling_size", "validate_records"]
