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
from collections.abc import Callable, Sequence

from PIL import Image

from psrl.cache import BoundedCache
from psrl.rewards.vlm.transports import Failed, JudgeRequest

DEFAULT_MAX_ENTRIES = 1024  # PaCo-GRPO's max_cache_size
_MISSING = object()  # a cache miss (an answer itself may be any value)


def image_digest(image: Image.Image) -> str:
    """MD5 of an image's mode, size and pixel bytes (PaCo hashes ``tobytes()`` alone)."""
    h = hashlib.md5(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def request_key(request: JudgeRequest) -> tuple:
    """What makes two judge requests the same question: the images in order and the text."""
    return (*(image_digest(im) for im in request.images), request.text)


class AnswerCache:
    """Answers remembered by key: FIFO, ``max_entries`` of them (0 keeps nothing across calls; a key asked twice in
    one call is still asked once), thread-safe (the trainer may score batches in a thread pool). Only answers
    :meth:`keep` accepts are remembered: by default everything but :class:`~psrl.rewards.isolation.Failed`, so a
    failure is asked again next time.

    Attributes:
        hits, misses: requests answered from the cache (or by a duplicate in the same call) / sent to the judge.
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES):
        self._cache = BoundedCache(max_entries)  # FIFO, as PaCo-GRPO's; validates max_entries
        self.max_entries = max_entries
        self._lock = threading.Lock()  # the hit / miss counters
        self.hits = self.misses = 0

    def keep(self, answer) -> bool:
        return not isinstance(answer, Failed)

    def answers(self, keys: Sequence, requests: Sequence, ask: Callable[[list], Sequence]) -> list:
        """The answer to each of ``requests`` (equal ``keys`` mark the same question); ``ask(requests) -> one
        answer each`` receives the first request of every key not remembered."""
        out: list = [None] * len(requests)
        todo: dict = {}  # key -> the positions that ask it; the first one is sent
        for i, k in enumerate(keys):
            out[i] = self._cache.get(k, _MISSING)
            if out[i] is _MISSING:
                todo.setdefault(k, []).append(i)
        sent = [positions[0] for positions in todo.values()]
        got = ask([requests[i] for i in sent]) if sent else []
        with self._lock:
            self.hits += len(requests) - len(sent)
            self.misses += len(sent)
            for (k, positions), answer in zip(todo.items(), got):
                for i in positions:
                    out[i] = answer
                if self.keep(answer):
                    self._cache.put(k, answer)
        return out


class CachedPYes(AnswerCache):
    """``p_yes(requests)`` of ``judge`` through an :class:`AnswerCache` that keeps scored answers only."""

    def __init__(self, judge, max_entries: int = DEFAULT_MAX_ENTRIES):
        super().__init__(max_entries)
        self.judge = judge

    def keep(self, answer) -> bool:
        return answer[1] is None

    def p_yes(self, requests: Sequence[JudgeRequest]) -> list[tuple[float, str | None, bool]]:
        """``(P(Yes) or NaN, failure reason, bounded)`` per request, as :meth:`VLMJudge.p_yes`."""
        return self.answers([request_key(r) for r in requests], requests, self.judge.p_yes)


__all__ = ["AnswerCache", "CachedPYes", "DEFAULT_MAX_ENTRIES", "image_digest", "request_key"]
