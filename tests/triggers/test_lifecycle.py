"""The trigger's resources over its life: one HTTP session per event loop, shared and then closed; one
connection look-up shared by triggers that start together."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import warnings
from typing import Any

import aiohttp
import pytest

from airflow_provider_openai_batch.hooks import async_client
from airflow_provider_openai_batch.hooks.async_client import SessionLease, connection_settings, shared_session
from airflow_provider_openai_batch.testing import connection_json
from airflow_provider_openai_batch.triggers.batch import BatchTrigger
from tests.helpers import events, make_batch

UNCLOSED = ("Unclosed client session", "Unclosed connector", "Unclosed connection")


@pytest.fixture
def opened(monkeypatch) -> list[aiohttp.ClientSession]:
    """Every aiohttp session opened during the test."""
    sessions: list[aiohttp.ClientSession] = []

    class Recorded(aiohttp.ClientSession):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            sessions.append(self)

    monkeypatch.setattr(aiohttp, "ClientSession", Recorded)
    return sessions


def test_a_run_leaves_no_unclosed_session(openai_batch_connection, caplog, opened):
    """Triggers run to their end, one is killed mid-wait (as the triggerer does it: the task is cancelled,
    then on_kill, then cleanup), all under asyncio.run: nothing is left for aiohttp to warn about."""
    openai_batch_connection.configure(phase_seconds=30)  # the killed one is still validating
    finishing = [make_batch(openai_batch_connection) for _ in range(3)]
    for batch_id in finishing:
        openai_batch_connection.force_status(batch_id, "completed")
    killed_id = make_batch(openai_batch_connection)

    async def triggerer() -> list:
        killed = BatchTrigger(killed_id, poll_interval=0.05, cancel_on_kill=True)
        done = [asyncio.ensure_future(events(BatchTrigger(b, poll_interval=0.05))) for b in finishing]
        waiting = asyncio.ensure_future(killed.run().__anext__())
        await asyncio.sleep(0.5)  # it has polled at least once by now (first delay at most 0.05 s)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await killed.on_kill()
        await killed.cleanup()
        return await asyncio.gather(*done)

    caplog.set_level(logging.WARNING, logger="asyncio")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = asyncio.run(triggerer())
        gc.collect()
    assert [found[0].payload["status"] for found in results] == ["terminal"] * 3
    texts = [str(w.message) for w in caught] + [record.getMessage() for record in caplog.records]
    assert [t for t in texts if t.startswith(UNCLOSED)] == []
    assert opened and all(session.closed for session in opened)
    stats = openai_batch_connection.stats()["requests"]
    assert stats["POST /v1/batches/{id}/cancel"] == 1  # the kill did reach the API on its own lease


def test_the_session_is_shared_while_any_user_holds_it_and_closed_by_the_last():
    async def scenario() -> None:
        first, second = SessionLease(), SessionLease()
        session = shared_session()
        await first.release()
        await first.release()  # a second release of the same lease does not count twice
        assert shared_session() is session and not session.closed
        await second.release()
        assert session.closed
        third = SessionLease()
        assert shared_session() is not session  # a later user gets a fresh one
        await third.release()

    asyncio.run(scenario())


def test_a_bare_client_request_leaves_no_session_open(openai_batch_connection):
    batch_id = make_batch(openai_batch_connection)

    async def scenario() -> bool:
        client = await async_client.AsyncBatchClient.from_connection("openai_default")
        assert (await client.retrieve_batch(batch_id)).id == batch_id
        return asyncio.get_running_loop() in async_client._sessions

    assert asyncio.run(scenario()) is False


@pytest.fixture
def lookups(monkeypatch, openai_batch_connection) -> list[str]:
    """Count connection look-ups (each one really happens: the wrapped call is Airflow's)."""
    from airflow.sdk import BaseHook

    real = BaseHook.aget_connection.__func__  # type: ignore[attr-defined]
    seen: list[str] = []

    async def counted(cls, conn_id: str):
        seen.append(conn_id)
        return await real(cls, conn_id)

    monkeypatch.setattr(BaseHook, "aget_connection", classmethod(counted))
    return seen


def test_triggers_starting_together_share_one_connection_look_up(openai_batch_connection, lookups):
    batch_ids = [make_batch(openai_batch_connection) for _ in range(40)]

    async def restart() -> list:
        return await asyncio.gather(*(events(BatchTrigger(b, poll_interval=0.05)) for b in batch_ids))

    results = asyncio.run(restart())
    assert {found[0].payload["status"] for found in results} == {"terminal"}
    # One look-up, or two should a slow machine stretch the start past CONNECTION_TTL: never one each.
    assert 1 <= len(lookups) <= 2, lookups


def test_no_trigger_reads_its_connection_before_its_first_delay(openai_batch_connection, lookups, monkeypatch):
    monkeypatch.setattr(random, "uniform", lambda low, high: high)  # every trigger waits its longest delay

    async def first_ticks() -> int:
        tasks = [
            asyncio.ensure_future(BatchTrigger(f"batch_{i}", poll_interval=30).run().__anext__()) for i in range(50)
        ]
        for _ in range(5):
            await asyncio.sleep(0)  # the tick in which a restarted triggerer starts them all, and a few more
        read = len(lookups)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return read

    assert asyncio.run(first_ticks()) == 0


def test_a_connection_look_up_is_reused_briefly_and_a_failure_never(openai_batch_connection, lookups, monkeypatch):
    good = connection_json(openai_batch_connection)

    async def scenario() -> None:
        monkeypatch.delenv("AIRFLOW_CONN_OPENAI_DEFAULT")
        for _ in range(2):  # a missing connection fails every time it is asked for: never cached
            with pytest.raises(Exception, match="isn't defined"):
                await connection_settings("openai_default")
        monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", good)
        first = await connection_settings("openai_default")
        assert await connection_settings("openai_default") is first  # reused within the TTL

    asyncio.run(scenario())
    assert len(lookups) == 2 + 1
    monkeypatch.setattr(async_client, "CONNECTION_TTL", 0.0)  # as if the TTL passed between any two calls

    async def expired() -> None:
        await connection_settings("openai_default")
        await connection_settings("openai_default")

    asyncio.run(expired())
    assert len(lookups) == 2 + 1 + 2  # a changed connection is seen again


def test_a_failed_shared_look_up_reaches_every_waiter_then_is_forgotten(lookups, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_NOWHERE", raising=False)

    async def scenario() -> list:
        return await asyncio.gather(*(connection_settings("nowhere") for _ in range(10)), return_exceptions=True)

    assert all("isn't defined" in str(result) for result in asyncio.run(scenario()))
    assert lookups == ["nowhere"]
