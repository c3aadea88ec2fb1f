"""A P(Yes) cache in front of a :class:`psrl.rewards.vlm.judge.VLMJudge`: a judge request whose images (by pixels)
and text were answered before is not sent again, and identical requests within one batch are sent once.

Why: a T2IS grid is judged pair by pair, and the same pair comes back (an image set whose panels repeat, a group
whose rollouts collapse to one image, the same eval grid scored twice). PaCo-GRPO keeps the same kind of cache
(X-GenGroup/PaCo-RL@08caac6 ``PaCo-GRPO/paco_grpo/rewards/consistency_scorer.py``: FIFO, 1024 entries, keyed by
``(md5(image 1), md5(image 2), criteria text)``, failures not cached); this one keys on the pixels, the size and
mode of every image and the full question, so two requests share an answer only when the judge would see the same
input.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence

from PIL import Image

from psrl.rewards.vlm.transports import JudgeRequest

DEFAULT_MAX_ENTRIES = 1024  # PaCo-GRPO's max_cache_size


def image_digest(image: Image.Image) -> str:
    """MD5 of an image's mode, size and pixel bytes (PaCo hashes ``tobytes()`` alone)."""
    h = hashlib.md5(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def request_key(request: JudgeRequest) -> tuple:
    """What makes two judge requests the same question: the images in order and the text."""
    return (*(image_digest(im) for im in request.images), request.text)


class CachedPYes:
    """``p_yes(requests)`` of ``judge`` with answered requests remembered (FIFO, ``max_entries``; 0 disables the
    cache across calls, duplicates within a call are still sent once). Only scored answers are kept: a failure is
    asked again next time. Thread-safe (the trainer may score batches in a thread pool).

    Attributes:
        hits, misses: requests answered from the cache (or by a duplicate in the same call) / sent to the judge.
    """

    def __init__(self, judge, max_entries: int = DEFAULT_MAX_ENTRIES):
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 0:
            raise ValueError(f"cache_size must be an integer >= 0, got {max_entries!r}")
        self.judge, self.max_entries = judge, max_entries
        self._cache: OrderedDict[tuple, tuple[float, str | None, bool]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def p_yes(self, requests: Sequence[JudgeRequest]) -> list[tuple[float, str | None, bool]]:
        """``(P(Yes) or NaN, failure reason, bounded)`` per request, as :meth:`VLMJudge.p_yes`."""
        keys = [request_key(r) for r in requests]
        out: list[tuple[float, str | None, bool] | None] = [None] * len(requests)
        todo: dict[tuple, list[int]] = {}  # key -> the positions that ask it; the first one is sent
        with self._lock:
            for i, k in enumerate(keys):
                if k in self._cache:
                    out[i] = self._cache[k]
                else:
                    todo.setdefault(k, []).append(i)
        sent = [positions[0] for positions in todo.values()]
        answers = self.judge.p_yes([requests[i] for i in sent]) if sent else []
        with self._lock:
            self.hits += len(requests) - len(sent)
            self.misses += len(sent)
            for (k, positions), answer in zip(todo.items(), answers):
                for i in positions:
                    out[i] = answer
                if answer[1] is None and self.max_entries:
                    self._cache[k] = answer
                    if len(self._cache) > self.max_entries:
                        self._cache.popitem(last=False)
        return out  # type: ignore[return-value]


__all__ = ["CachedPYes", "DEFAULT_MAX_ENTRIES", "image_digest", "request_key"]
