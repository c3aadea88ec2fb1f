"""Start-up checks that need a built policy: the sizes it can generate and the records it can take. Every command
that generates (``psrl train``, ``sft``, ``generate``, ``bench generate``) runs them before its first image, so a
bad record or size is reported at once, all of them in one message, and never at step 18."""
from __future__ import annotations

from typing import Sequence

from psrl.config import ConfigError
from psrl.data.checks import apply_record_checks, check_records
from psrl.data.records import Record


def policy_input_limits(policy) -> tuple[bool, int | None]:
    """``(needs_references, max_references)`` of ``policy``: reference-conditioned policies hold a reference
    loader (``policy.references``) whose ``max_references`` is their limit; text-only policies need none."""
    refs = getattr(policy, "references", None)
    max_refs = getattr(refs, "max_references", None)
    return max_refs is not None, max_refs


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
    its limit, every reference and target decodes and is large enough. Returns them, or without the bad ones when
    ``skip_invalid``.

    Raises:
        RecordError: one message naming ``source`` and listing every bad record (id, file, reason).
    """
    needs_refs, max_refs = policy_input_limits(policy)
    problems = check_records(records, max_subjects=max_refs, needs_references=needs_refs, needs_target=needs_target,
                             open_images=needs_refs or needs_target)
    where = source if isinstance(source, str) else "inline prompts"
    return apply_record_checks(records, problems, source=where, skip_invalid=skip_invalid)


__all__ = ["check_sampling_size", "policy_input_limits", "validate_records"]
