"""A small time-bounded cache with one fetch in flight per key, for the plugin's calls to the Batch API.

Many users may leave the "OpenAI Batches" page open; each refreshes every few seconds. With this cache,
identical questions (same connection, same page cursor, same batch) within :attr:`TTLCache.ttl` seconds are
answered from memory, and concurrent identical questions wait for the one request already under way instead
of sending their own. Failures are not cached (the next caller tries again) and leave nothing behind. One
cache per api-server process: with several workers each keeps its own.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class TTLCache:
    """Values by key for ``ttl`` seconds, at most ``max_entries`` of them (the oldest go first).

    :param ttl: Seconds a fetched value is reused.
    :param max_entries: Most keys kept.
    :param clock: A monotonic clock (tests pass their own).
    """

    def __init__(self, ttl: float, max_entries: int = 512, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._inflight: dict[Hashable, threading.Lock] = {}
        self.hits = 0
        self.misses = 0

    def _fresh(self, key: Hashable) -> tuple[bool, Any]:
        entry = self._entries.get(key)
        if entry is not None and self._clock() - entry[0] < self.ttl:
            return True, entry[1]
        return False, None

    def get_or_fetch(self, key: Hashable, fetch: Callable[[], Any]) -> Any:
        """The cached value of ``key``, or ``fetch()`` (called by one caller at a time per key) stored."""
        with self._lock:
            found, value = self._fresh(key)
            if found:
                self.hits += 1
                return value
            key_lock = self._inflight.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:  # another caller may have fetched it while we waited
                found, value = self._fresh(key)
                if found:
                    self.hits += 1
                    return value
                self.misses += 1
            try:
                value = fetch()
                with self._lock:
                    self._entries[key] = (self._clock(), value)
                    self._entries.move_to_end(key)
                    while len(self._entries) > self.max_entries:
                        self._entries.popitem(last=False)
            finally:
                # Also when fetch raises: else every distinct failing key (a made-up batch id) keeps a lock.
                with self._lock:
                    self._inflight.pop(key, None)
            return value

    def invalidate(self, predicate: Callable[[Hashable], bool]) -> None:
        """Forget every key for which ``predicate`` is true (e.g. a connection's pages after a cancel)."""
        with self._lock:
            for key in [k for k in self._entries if predicate(k)]:
                del self._entries[key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0
