"""A small time-bounded cache with one fetch in flight per key, for the plugin's calls to the Batch API.

Many users may leave the "OpenAI Batches" page open; each refreshes every few seconds. With this cache,
identical questions (same connection, same page cursor, same batch) within :attr:`TTLCache.ttl` seconds are
answered from memory, and concurrent identical questions await the one request already under way instead
of sending their own. A failure is handed to the callers already waiting for that request and then
forgotten (the next caller tries again); it leaves nothing behind. One cache per api-server process: with
several workers each keeps its own.

The fetches are coroutines awaited on the api-server's event loop, so a caller waiting on a slow API holds
no thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


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
        # The api-server has one event loop per process, but a test client may run each request in a loop of
        # its own thread: the lock keeps the dictionaries whole, and is never held across an await.
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._inflight: dict[Hashable, asyncio.Task[Any]] = {}
        self.hits = 0
        self.misses = 0

    def _fresh(self, key: Hashable) -> tuple[bool, Any]:
        entry = self._entries.get(key)
        if entry is not None and self._clock() - entry[0] < self.ttl:
            return True, entry[1]
        return False, None

    async def get_or_fetch(self, key: Hashable, fetch: Callable[[], Awaitable[T]]) -> T:
        """The cached value of ``key``, or the result of ``fetch()``, stored. Concurrent callers of one key in
        one event loop await a single ``fetch()``; one of them giving up (cancelled, its deadline passed)
        does not cancel it for the others."""
        loop = asyncio.get_running_loop()
        with self._lock:
            found, value = self._fresh(key)
            task = self._inflight.get(key)
            if found or (task is not None and task.get_loop() is loop):
                self.hits += 1
            else:
                self.misses += 1
                task = loop.create_task(self._fetch(key, fetch))
                task.add_done_callback(_retrieved)
                self._inflight[key] = task
        if found:
            return value  # type: ignore[no-any-return]
        assert task is not None
        return await asyncio.shield(task)  # type: ignore[no-any-return]

    async def _fetch(self, key: Hashable, fetch: Callable[[], Awaitable[T]]) -> T:
        try:
            value = await fetch()
            with self._lock:
                self._entries[key] = (self._clock(), value)
                self._entries.move_to_end(key)
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
            return value
        finally:
            # Also when fetch raises: else every distinct failing key (a made-up batch id) stays in flight.
            with self._lock:
                if self._inflight.get(key) is asyncio.current_task():
                    del self._inflight[key]

    def invalidate(self, predicate: Callable[[Hashable], bool]) -> None:
        """Forget every key for which ``predicate`` is true (e.g. a connection's pages after a cancel)."""
        with self._lock:
            for key in [k for k in self._entries if predicate(k)]:
                del self._entries[key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0


def _retrieved(task: asyncio.Task[Any]) -> None:
    """Mark a failure as seen: when every waiter gave up first, nobody else reads it."""
    if not task.cancelled():
        task.exception()
