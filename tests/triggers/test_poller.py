"""Coalesced polling (triggers/poller.py) against the emulator: what each sweep sends, counted by the
emulator's own request statistics, and how waits register and leave. No timing is asserted: the waits of
each test ask in one tick of the event loop, before the sweep they start can run."""

from __future__ import annotations

import asyncio
import gc
import random
import time

import pytest

from airflow_provider_openai_batch.exceptions import NotFoundError
from airflow_provider_openai_batch.hooks.async_client import AsyncBatchClient, close_shared_session
from airflow_provider_openai_batch.testing import connection_json
from airflow_provider_openai_batch.triggers import poller as poller_module
from airflow_provider_openai_batch.triggers.batch import BatchTrigger
from airflow_provider_openai_batch.triggers.poller import BatchPoller, shared_poller
from tests.helpers import events, make_batch

LIST = "GET /v1/batches"
RETRIEVE = "GET /v1/batches/{id}"


class Owner:
    """Stands for a trigger: the poller holds it weakly."""


def sent(handle) -> dict[str, int]:
    requests = handle.stats()["requests"]
    return {"list": requests.get(LIST, 0), "retrieve": requests.get(RETRIEVE, 0)}


async def ask_together(client: AsyncBatchClient, batch_ids: list[str], interval: float = 60.0) -> list:
    """Every wait asks in the same tick (as phase-locked triggers do at a sweep); errors are returned."""
    poller = shared_poller("openai_default")
    owners = [Owner() for _ in batch_ids]
    try:
        return await asyncio.gather(
            *(poller.retrieve(client, b, interval, owner) for b, owner in zip(batch_ids, owners, strict=True)),
            return_exceptions=True,
        )
    finally:
        await close_shared_session()


@pytest.fixture
def client(openai_batch_connection) -> AsyncBatchClient:
    async def read() -> AsyncBatchClient:
        return await AsyncBatchClient.from_connection("openai_default")

    return asyncio.run(read())


@pytest.fixture
def many(openai_batch_connection) -> list[str]:
    """105 batches still in progress, oldest first: one more than a list page holds."""
    openai_batch_connection.configure(phase_seconds=300)
    return [make_batch(openai_batch_connection, lines=1) for _ in range(105)]


def test_one_list_call_answers_every_wait_on_its_page(openai_batch_connection, client, many):
    newest = many[-30:]
    before = sent(openai_batch_connection)
    found = asyncio.run(ask_together(client, newest))
    assert [batch.id for batch in found] == newest
    assert all(batch.status == "validating" for batch in found)
    after = sent(openai_batch_connection)
    assert (after["list"] - before["list"], after["retrieve"] - before["retrieve"]) == (1, 0)


def test_the_walk_pages_on_and_the_next_sweep_fetches_known_pages_at_once(openai_batch_connection, client, many):
    """All 105: the first sweep walks to the second page; the next one asks the first page and the second
    (after the cursor it learnt) without walking, and no batch needs a retrieve."""

    async def twice() -> tuple[list, list, BatchPoller]:
        poller = shared_poller("openai_default")
        owners = [Owner() for _ in many]
        first = await asyncio.gather(*(poller.retrieve(client, b, 0.0, o) for b, o in zip(many, owners, strict=True)))
        second = await asyncio.gather(*(poller.retrieve(client, b, 0.0, o) for b, o in zip(many, owners, strict=True)))
        await close_shared_session()
        return first, second, poller

    before = sent(openai_batch_connection)
    first, second, poller = asyncio.run(twice())
    assert [b.id for b in first] == many and [b.id for b in second] == many
    after = sent(openai_batch_connection)
    assert (after["list"] - before["list"], after["retrieve"] - before["retrieve"]) == (4, 0)
    assert poller.requests == {"list": 4, "retrieve": 0} and poller.sweeps == 2


def test_a_batch_the_pages_do_not_reach_gets_its_own_retrieve(openai_batch_connection, client, many, monkeypatch):
    monkeypatch.setattr(poller_module, "WALK_SLACK", -1)  # only the first page (the 100 newest) is read
    wanted = [many[0], many[1], many[-1]]  # the two oldest are on the second page
    before = sent(openai_batch_connection)
    found = asyncio.run(ask_together(client, wanted))
    assert [batch.id for batch in found] == wanted
    after = sent(openai_batch_connection)
    assert (after["list"] - before["list"], after["retrieve"] - before["retrieve"]) == (1, 2)


def test_waits_interleaved_with_another_triggerers_are_all_found_by_the_walk(
    openai_batch_connection, client, many, monkeypatch
):
    """Two triggerers share a run's waits, so this loop's waits are every second batch of the list: spread
    over twice the pages their count suggests. The walk goes on while its pages keep answering waits."""
    monkeypatch.setattr(poller_module, "PAGE_SIZE", 10)  # 105 batches: 11 pages
    monkeypatch.setattr(poller_module, "WALK_SLACK", 0)  # the count alone would stop after 1 + 6 pages
    ours = many[::2]  # 53 waits, the oldest on the last page
    before = sent(openai_batch_connection)
    found = asyncio.run(ask_together(client, ours))
    assert [batch.id for batch in found] == ours
    after = sent(openai_batch_connection)
    assert (after["list"] - before["list"], after["retrieve"] - before["retrieve"]) == (11, 0)


def test_the_walk_stops_when_its_pages_stop_paying(openai_batch_connection, client, many, monkeypatch):
    """The ten newest batches and the oldest: past its budget the walk stops after WALK_SLACK pages that
    answered nothing, and the old batch gets a retrieve instead of a walk to the end of the list."""
    monkeypatch.setattr(poller_module, "PAGE_SIZE", 10)
    monkeypatch.setattr(poller_module, "WALK_SLACK", 2)  # budget: ceil(11 / 10) + 2 = 4 pages after the first
    wanted = [*many[-10:], many[0]]
    before = sent(openai_batch_connection)
    found = asyncio.run(ask_together(client, wanted))
    assert [batch.id for batch in found] == wanted
    after = sent(openai_batch_connection)
    assert (after["list"] - before["list"], after["retrieve"] - before["retrieve"]) == (1 + 4, 1)


def test_an_error_reaches_only_the_wait_it_concerns(openai_batch_connection, client):
    openai_batch_connection.configure(phase_seconds=300)
    alive = [make_batch(openai_batch_connection, lines=1) for _ in range(2)]
    found = asyncio.run(ask_together(client, [*alive, "batch_gone"]))
    assert [batch.id for batch in found[:2]] == alive
    assert isinstance(found[2], NotFoundError)


def test_a_failed_list_call_falls_back_to_retrieves(openai_batch_connection, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", connection_json(openai_batch_connection, {"max_retries": 0}))
    openai_batch_connection.configure(phase_seconds=300)
    alive = [make_batch(openai_batch_connection, lines=1) for _ in range(3)]

    async def scenario() -> list:
        client = await AsyncBatchClient.from_connection("openai_default")
        await asyncio.to_thread(openai_batch_connection.configure, fault_script=["500"])  # the list call's
        return await ask_together(client, alive)

    before = sent(openai_batch_connection)
    found = asyncio.run(scenario())
    assert [batch.id for batch in found] == alive
    after = sent(openai_batch_connection)
    assert (after["list"] - before["list"], after["retrieve"] - before["retrieve"]) == (1, 3)
    assert openai_batch_connection.stats()["faults"] == {"500": 1}


def test_a_single_wait_is_a_plain_retrieve(openai_batch_connection, client):
    batch_id = make_batch(openai_batch_connection, lines=1)
    before = sent(openai_batch_connection)
    (found,) = asyncio.run(ask_together(client, [batch_id]))
    assert found.id == batch_id
    after = sent(openai_batch_connection)
    assert (after["list"] - before["list"], after["retrieve"] - before["retrieve"]) == (0, 1)


def test_a_wait_that_leaves_unregisters(openai_batch_connection, client):
    """Cancelled while its check waits for a sweep: the check is withdrawn, and once the trigger object is
    released the batch is no longer registered."""
    openai_batch_connection.configure(phase_seconds=300)
    batch_ids = [make_batch(openai_batch_connection, lines=1) for _ in range(2)]

    async def scenario() -> tuple[int, int, int]:
        poller = shared_poller("openai_default")
        owners = [Owner(), Owner()]
        await asyncio.gather(*(poller.retrieve(client, b, 60.0, o) for b, o in zip(batch_ids, owners, strict=True)))
        registered = poller.waiting
        # The next checks wait for a sweep an interval after the last one: cancel one of them meanwhile.
        leaving = asyncio.ensure_future(poller.retrieve(client, batch_ids[0], 60.0, owners[0]))
        staying = asyncio.ensure_future(poller.retrieve(client, batch_ids[1], 60.0, owners[1]))
        await asyncio.sleep(0)
        leaving.cancel()
        await asyncio.wait([leaving])
        assert leaving.cancelled()
        pending = len(poller._pending)
        del owners[0], leaving  # the cancelled task's traceback still refers to its owner
        gc.collect()
        await asyncio.sleep(0)  # the release is handled in a callback of its own
        left = poller.waiting
        staying.cancel()
        await asyncio.gather(staying, return_exceptions=True)
        await close_shared_session()
        return registered, pending, left

    assert asyncio.run(scenario()) == (2, 1, 1)


def test_triggers_starting_together_share_one_list_call(openai_batch_connection, monkeypatch):
    """BatchTriggers of one connection, restarted together: the first sweep answers all of them with one
    list call, and every trigger still ends with its own event."""
    monkeypatch.setattr(random, "uniform", lambda low, high: low)  # no first delay: all ask in one tick
    openai_batch_connection.configure(phase_seconds=300)
    batch_ids = [make_batch(openai_batch_connection, lines=1) for _ in range(20)]
    for batch_id in batch_ids:
        openai_batch_connection.force_status(batch_id, "completed")

    async def restart() -> list:
        return await asyncio.gather(*(events(BatchTrigger(b, poll_interval=30)) for b in batch_ids))

    before = sent(openai_batch_connection)
    results = asyncio.run(restart())
    assert [found[0].payload["batch_id"] for found in results] == batch_ids
    assert {found[0].payload["status"] for found in results} == {"terminal"}
    after = sent(openai_batch_connection)
    assert (after["list"] - before["list"], after["retrieve"] - before["retrieve"]) == (1, 0)


def test_a_check_near_its_deadline_does_not_wait_for_the_cadence(openai_batch_connection, client):
    """Two waits of 60 s interval: after the first sweep, a check whose deadline is nearer than one interval
    starts a sweep at once (the trigger's last look at the deadline), where another would wait a minute."""
    openai_batch_connection.configure(phase_seconds=300)
    batch_ids = [make_batch(openai_batch_connection, lines=1) for _ in range(2)]

    async def scenario() -> tuple[str, int]:
        poller = shared_poller("openai_default")
        owners = [Owner(), Owner()]
        await asyncio.gather(*(poller.retrieve(client, b, 60.0, o) for b, o in zip(batch_ids, owners, strict=True)))
        # The 30 s bound only stops a hung test: without the deadline this check would wait 60 s.
        found = await asyncio.wait_for(
            poller.retrieve(client, batch_ids[0], 60.0, owners[0], end_time=time.time() + 5), 30
        )
        await close_shared_session()
        return found.id, poller.sweeps

    assert asyncio.run(scenario()) == (batch_ids[0], 2)
