"""The plugin's cache on its own: what a failing fetch leaves behind, and how concurrent callers share one."""

from __future__ import annotations

import asyncio

import pytest

from airflow_provider_openai_batch.plugins.cache import TTLCache


def test_failing_fetches_leave_no_task_and_no_entry_behind() -> None:
    """Each distinct failing key (a made-up ``?batch_id=``) must not stay in flight: else the api-server's
    memory grows with every such request."""
    cache = TTLCache(5)

    async def not_found() -> None:
        raise RuntimeError("404 from the API")

    async def main() -> None:
        for i in range(100):
            with pytest.raises(RuntimeError, match="404"):
                await cache.get_or_fetch(("batch", "openai_default", f"batch_{i}"), not_found)

    asyncio.run(main())
    assert cache._inflight == {}
    assert len(cache._entries) == 0  # failures are not cached
    assert cache.misses == 100


def test_a_key_that_failed_is_fetched_again_and_then_cached() -> None:
    cache = TTLCache(5, clock=lambda: 0.0)
    answers = iter([RuntimeError("transient"), "the batch"])

    async def fetch() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def main() -> None:
        with pytest.raises(RuntimeError, match="transient"):
            await cache.get_or_fetch("key", fetch)
        assert await cache.get_or_fetch("key", fetch) == "the batch"
        assert await cache.get_or_fetch("key", fetch) == "the batch"  # from memory: the iterator is spent

    asyncio.run(main())
    assert cache._inflight == {} and (cache.hits, cache.misses) == (1, 2)


def test_concurrent_callers_share_one_fetch_and_one_giving_up_does_not_cancel_it() -> None:
    """Callers of one key await the fetch already under way, its failure too (it is not repeated by each
    of them in turn); a caller cancelled while waiting (its deadline passed) leaves the fetch running for
    the others."""
    cache = TTLCache(5)
    calls = 0

    async def main() -> None:
        release = asyncio.Event()

        async def slow() -> str:
            nonlocal calls
            calls += 1
            await release.wait()
            return "page"

        impatient = asyncio.ensure_future(cache.get_or_fetch("page", slow))
        patient = [asyncio.ensure_future(cache.get_or_fetch("page", slow)) for _ in range(5)]
        await asyncio.sleep(0)
        impatient.cancel()
        await asyncio.sleep(0)
        release.set()
        assert await asyncio.gather(*patient) == ["page"] * 5
        assert impatient.cancelled()

        async def failing() -> str:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.01)
            raise RuntimeError("503 from the API")

        failures = await asyncio.gather(
            *(cache.get_or_fetch("other", failing) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(f, RuntimeError) for f in failures)

    asyncio.run(main())
    assert calls == 2 and cache._inflight == {}
