"""The plugin's cache on its own: what a failing fetch leaves behind."""

from __future__ import annotations

import pytest

from airflow_provider_openai_batch.plugins.cache import TTLCache


def test_failing_fetches_leave_no_lock_and_no_entry_behind() -> None:
    """Each distinct failing key (a made-up ``?batch_id=``) must not keep its in-flight lock: else the
    api-server's memory grows with every such request."""
    cache = TTLCache(5)

    def not_found() -> None:
        raise RuntimeError("404 from the API")

    for i in range(100):
        with pytest.raises(RuntimeError, match="404"):
            cache.get_or_fetch(("batch", "openai_default", f"batch_{i}"), not_found)
    assert cache._inflight == {}
    assert len(cache._entries) == 0  # failures are not cached
    assert cache.misses == 100


def test_a_key_that_failed_is_fetched_again_and_then_cached() -> None:
    cache = TTLCache(5, clock=lambda: 0.0)
    answers = iter([RuntimeError("transient"), "the batch"])

    def fetch() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    with pytest.raises(RuntimeError, match="transient"):
        cache.get_or_fetch("key", fetch)
    assert cache.get_or_fetch("key", fetch) == "the batch"
    assert cache.get_or_fetch("key", fetch) == "the batch"  # from memory: the iterator is spent
    assert cache._inflight == {} and (cache.hits, cache.misses) == (1, 2)
