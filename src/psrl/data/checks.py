"""Start-up checks of records: every bad record is found before the first step, never when it is drawn at step 18.

:func:`check_records` looks at every record once (each distinct file decoded once, in a thread pool, with the same
loader and minimum side the policy and rewards use) and returns one :class:`RecordProblem` per fault;
:func:`apply_record_checks` turns them into one error listing them all, or drops the bad records when the user
asked to skip them (``data.skip_invalid``) and says how many.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from psrl.data.records import Record, RecordError
from psrl.errors import listing
from psrl.images import MIN_SIDE, check_image

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordProblem:
    """One fault: the record's id, the file at fault (``None`` when the fault is not a file's) and why."""

    record_id: str
    file: str | None
    reason: str

    def __str__(self) -> str:
        return f"{self.record_id!r}" + (f" {self.file}" if self.file else "") + f": {self.reason}"


def check_records(records: Sequence[Record], *, max_subjects: int | None = None, needs_references: bool = False,
                  needs_target: bool = False, open_images: bool = True, min_side: int = MIN_SIDE,
                  workers: int = 8) -> list[RecordProblem]:
    """Every fault of ``records`` (in record order).

    Args:
        records: resolved records (:func:`psrl.data.records.load_records`): their image paths are absolute.
        max_subjects: the policy's limit on references per record (``None``: no limit).
        needs_references: the policy is reference-conditioned: a record without subjects, or a subject without an
            image, is a fault.
        needs_target: SFT: every record needs a ``target`` image.
        open_images: decode every image (``False``: a text-only policy that never opens the references).
        min_side: smallest image side in pixels (:data:`psrl.images.MIN_SIDE`, what the rewards refuse below).
        workers: threads decoding images (PIL releases the GIL while decoding).

    Returns:
        ``[]`` when every record is usable.
    """
    problems: list[RecordProblem] = []
    files: dict[Path, list[tuple[str, str]]] = {}  # path -> [(record id, path as its records file holds it)]
    for r in records:
        if max_subjects is not None and len(r.subjects) > max_subjects:
            problems.append(RecordProblem(r.id, None, f"{len(r.subjects)} subjects; the policy supports at most "
                                                      f"{max_subjects} (model.args.max_references)"))
        if needs_references and not r.subjects:
            problems.append(RecordProblem(r.id, None, "no subjects; this policy needs reference images"))
        images = []
        for i, s in enumerate(r.subjects):
            if s.image:
                images.append(s.image)
            elif needs_references:
                problems.append(RecordProblem(r.id, None, f"subject {i} ({s.phrase!r}) has no reference image"))
        if needs_target:
            if r.target:
                images.append(r.target)
            else:
                problems.append(RecordProblem(r.id, None, "no 'target' image (SFT needs one per record)"))
        for image in images if open_images else ():
            if not Path(image).is_absolute():
                problems.append(RecordProblem(r.id, image, "not resolved against a data root (load records with "
                                                           "psrl.data.records.load_records / resolve_records)"))
                continue
            files.setdefault(Path(image), []).append((r.id, r.relative_path(image)))
    if files:
        paths = list(files)
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(paths)))) as pool:
            reasons = list(pool.map(lambda p: check_image(p, min_side=min_side), paths))
        order = {r.id: i for i, r in enumerate(records)}
        for path, why in zip(paths, reasons):
            if why is not None:
                why = why.removeprefix(f"{path}: ")
                problems.extend(RecordProblem(rid, shown, why) for rid, shown in files[path])
        problems.sort(key=lambda p: order.get(p.record_id, 0))
    return problems


def apply_record_checks(records: Sequence[Record], problems: Sequence[RecordProblem], *, source: str,
                        skip_invalid: bool = False, limit: int = 20) -> list[Record]:
    """The records to use: all of them when there is no problem; without the bad ones when ``skip_invalid``
    (logged with the count); otherwise raise.

    Raises:
        RecordError: one message naming ``source`` and listing every bad record (id, file, reason; the first
            ``limit`` in full, then a count), or saying that every record is bad.
    """
    if not problems:
        return list(records)
    bad = {p.record_id for p in problems}
    shown = listing(problems, limit)
    if skip_invalid:
        kept = [r for r in records if r.id not in bad]
        if not kept:
            raise RecordError(f"{source}: every one of the {len(records)} record(s) is invalid: {shown}")
        logger.warning("%s: skipping %d invalid record(s) of %d (data.skip_invalid): %s", source, len(bad),
                       len(records), shown)
        return kept
    raise RecordError(f"{source}: {len(bad)} of {len(records)} record(s) are invalid: {shown}. Fix them, "
                      "or set data.skip_invalid: true to train on the rest")


__all__ = ["RecordProblem", "apply_record_checks", "check_records"]
