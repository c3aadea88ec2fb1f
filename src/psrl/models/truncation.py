"""Prompts longer than a text encoder reads: counted per record and warned about once, instead of the per-call
warnings the pipelines log (which name no record and repeat at every step)."""
from __future__ import annotations

import contextlib
import logging
from typing import Sequence

from psrl.data.records import Record

logger = logging.getLogger(__name__)


def tokens_dropped(tokenizer, prompts: Sequence[str], max_length: int) -> list[int]:
    """Per prompt, how many tokens an encoder that reads ``max_length`` tokens (special tokens included, as
    ``tokenizer(..., max_length=max_length, truncation=True)`` gives them) cuts off; 0 when the prompt fits."""
    if not prompts:
        return []
    # verbose=False: the tokenizer's own "longer than the specified maximum" notice is what this replaces
    ids = tokenizer(list(prompts), padding=False, truncation=False, verbose=False)["input_ids"]
    return [max(0, len(row) - max_length) for row in ids]


LISTED = 5  # records named one by one per encoder; the rest are counted (a 12,000-record run would log thousands)


def warn_truncated_prompts(records: Sequence[Record], tokenizer, max_length: int, encoder: str, budget: str,
                           seen: dict) -> list[tuple[str, int]]:
    """Log a warning for the first :data:`LISTED` records whose prompt ``encoder`` truncates, naming the record id
    and the tokens dropped, then one line saying that further ones are counted; every record is tokenized once.

    ``seen`` (kept by the caller across calls): ``{(record id, encoder): tokens dropped}`` for the records checked,
    and ``("#truncated", encoder)``: how many of them are truncated. ``budget`` names what sets ``max_length``
    (``model.max_sequence_length``). Returns the ``(id, dropped)`` pairs newly found truncated (listed or not)."""
    todo: dict[str, Record] = {}
    for r in records:
        if (r.id, encoder) not in seen:
            todo.setdefault(r.id, r)
    found = []
    count_key = ("#truncated", encoder)
    for r, dropped in zip(todo.values(), tokens_dropped(tokenizer, [r.prompt for r in todo.values()], max_length)):
        seen[(r.id, encoder)] = dropped
        if not dropped:
            continue
        n = seen[count_key] = seen.get(count_key, 0) + 1
        if n <= LISTED:
            logger.warning("record %r: its prompt is %d %s tokens and %s keeps %d: the last %d token(s) are dropped "
                           "(warned once per record)", r.id, max_length + dropped, encoder, budget, max_length,
                           dropped)
        if n == LISTED:
            logger.warning("further records whose prompts %s truncates are not listed (raise %s to keep them whole)",
                           encoder, budget)
        found.append((r.id, dropped))
    return found


@contextlib.contextmanager
def quiet_logger(name: str, starts_with: str):
    """Drop the records of logger ``name`` whose message starts with ``starts_with`` inside the block (an upstream
    warning that :func:`warn_truncated_prompts` replaces with one per record)."""
    def drop(record: logging.LogRecord) -> bool:  # a plain callable is a logging filter
        return not str(record.msg).startswith(starts_with)

    target = logging.getLogger(name)
    target.addFilter(drop)
    try:
        yield
    finally:
        target.removeFilter(drop)


__all__ = ["quiet_logger", "tokens_dropped", "warn_truncated_prompts"]
