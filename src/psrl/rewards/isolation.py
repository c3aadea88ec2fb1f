"""One bad sample never takes down a batch: run a model over a batch, and when the batch raises, run each item
alone so that only the items that fail on their own become failures (reward protocol: NaN + reason for that sample
only).

Rewards batch for speed (a detector over ``(image, phrase)`` pairs, an embedder over crops, a VLM over requests).
Model processors raise for a whole batch when one item is out of their range (the Qwen2-VL processor refuses an
aspect ratio over 200 for every image it was given), and a failing forward pass (out of memory on a huge batch)
takes the whole batch with it. :func:`per_item` is the one fallback every reward uses: the batched call first
(the usual path costs nothing extra), then one call per item, then :class:`Failed` with the reason for the items
that still raise.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

MAX_REASON = 300  # characters of an exception message kept in a failure reason


@dataclass(frozen=True)
class Failed:
    """An item that could not be processed; ``reason`` is the per-sample failure text."""

    reason: str


def describe(what: str, error: BaseException) -> str:
    """``"<what> failed on this sample (<Type>: <message>)"``, the message cut to :data:`MAX_REASON` characters."""
    msg = str(error)
    if len(msg) > MAX_REASON:
        msg = msg[:MAX_REASON] + "..."
    return f"{what} failed on this sample ({type(error).__name__}: {msg})"


def per_item(fn: Callable[[list[T]], Sequence[R]], items: Sequence[T], what: str) -> list[R | Failed]:
    """``fn(items)`` -> one result per item; when the batched call raises, ``fn([item])`` for each item, and an
    item whose own call raises becomes ``Failed(reason)`` naming ``what`` and the exception.

    Args:
        fn: maps a list of items to a sequence of the same length (one result per item, in order).
        items: the batch.
        what: the model or step, for the reason (e.g. ``"hpsv3 model"``).

    Raises:
        ValueError: ``fn`` returned a different number of results than it was given items (a bug in the caller,
            never hidden as a per-sample failure).
    """
    items = list(items)
    if not items:
        return []
    try:
        results = list(fn(items))
    except Exception as e:  # noqa: BLE001 - any model/processor error; isolated per item below
        if len(items) == 1:
            return [Failed(describe(what, e))]
        logger.warning("%s: a batch of %d raised %s: %s; running its items one by one", what, len(items),
                       type(e).__name__, str(e)[:MAX_REASON])
    else:  # outside the try: a length mismatch is not an item's failure
        return _checked(results, len(items), what)
    out: list[R | Failed] = []
    for item in items:
        try:
            result = list(fn([item]))
        except Exception as e:  # noqa: BLE001
            out.append(Failed(describe(what, e)))
        else:
            out += _checked(result, 1, what)
    return out


def _checked(results: list[R], n: int, what: str) -> list[R]:
    if len(results) != n:
        raise ValueError(f"{what}: returned {len(results)} results for {n} items")
    return results


__all__ = ["Failed", "describe", "per_item"]
