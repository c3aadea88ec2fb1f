"""The one bounded in-memory cache: Kontext's encoded references (:mod:`psrl.models.flux_kontext`), the rewards'
reference embeddings (:class:`psrl.rewards.similarity.ImageSimilarity`,
:class:`psrl.rewards.subject_consistency.SubjectConsistency`) and judge answers
(:class:`psrl.rewards.vlm.cache.AnswerCache`, which the GEdit VIEScore metric shares). A core module: it imports
nothing of psrl.

Why not ``functools.lru_cache``: the callers batch their misses (one embedding or judge pass for all of them) and
must not remember a failure, so they look up and store entries themselves.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Literal

EVICTIONS = ("fifo", "lru")


class BoundedCache:
    """At most ``max_entries`` values by key (0 keeps nothing), thread-safe (a trainer may score batches in a thread
    pool). When full, a :meth:`put` drops the oldest entry: ``eviction="fifo"`` the first one stored, ``"lru"`` the
    one least recently read or stored (a :meth:`get` hit counts as a use).

    Raises:
        ValueError: ``max_entries`` not an integer >= 0 (the message names it ``cache_size``, the config field),
            or an unknown ``eviction``.
    """

    def __init__(self, max_entries: int, *, eviction: Literal["fifo", "lru"] = "fifo"):
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 0:
            raise ValueError(f"cache_size must be an integer >= 0, got {max_entries!r}")
        if eviction not in EVICTIONS:
            raise ValueError(f"eviction must be one of {list(EVICTIONS)}, got {eviction!r}")
        self.max_entries, self.eviction = max_entries, eviction
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, default=None):
        """The value stored for ``key``, else ``default``."""
        with self._lock:
            if key not in self._entries:
                return default
            if self.eviction == "lru":
                self._entries.move_to_end(key)
            return self._entries[key]

    def put(self, key: Hashable, value) -> None:
        """Store ``value`` for ``key`` (replacing an earlier one), then drop the oldest entries beyond
        ``max_entries``."""
        if not self.max_entries:
            return
        with self._lock:
            self._entries[key] = value
            if self.eviction == "lru":
                self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


__all__ = ["BoundedCache", "EVICTIONS"]
