"""The API key stays out of every repr, exception, log record and serialized trigger, sync and async alike.

The end-to-end check (a canary key through the whole example DAG: stdout, task logs, XCom, rendered fields,
the metadata DB, the emulator's log) is in test_example_dag_under_faults.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from typing import Any

import pytest

from airflow_provider_openai_batch.exceptions import OpenAIBatchError
from airflow_provider_openai_batch.hooks.async_client import AsyncBatchClient
from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
from airflow_provider_openai_batch.operators.batch import CreateBatchOperator
from airflow_provider_openai_batch.testing import connection_json
from airflow_provider_openai_batch.triggers.batch import BatchTrigger
from tests.helpers import BOTH_FLAVORS, ctx, prompts

CANARY = f"canary-{secrets.token_hex(12)}"


def texts_of(err: BaseException) -> list[str]:
    """Everything an exception can be turned into by a logger, a traceback or a debugger."""
    found = [str(err), repr(err), *(repr(v) for v in vars(err).values())]
    if err.__cause__ is not None or err.__context__ is not None:
        found += texts_of(err.__cause__ or err.__context__)  # type: ignore[arg-type]
    return found


@pytest.fixture
def canary_connection(openai_batch_emulator: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    openai_batch_emulator.configure(api_key=CANARY)
    # The flavor's connection (on Azure: api_type azure, the key in an api-key header), with the canary key.
    conn = {**json.loads(connection_json(openai_batch_emulator, {"max_retries": 1})), "password": CANARY}
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", json.dumps(conn))
    return openai_batch_emulator


def failures(emulator: Any, hook: OpenAIBatchHook) -> list[BaseException]:
    """Provoke each kind of failure the hook can raise with the canary key loaded."""
    caught: list[BaseException] = []

    def expect(call: Any) -> None:
        with pytest.raises(OpenAIBatchError) as err:
            call()
        caught.append(err.value)

    expect(lambda: hook.retrieve_batch("batch_missing"))  # 404
    emulator.configure(fault_rate=1.0, fault_kinds=["503"], retry_after=0)
    expect(lambda: hook.list_batches())  # 503 after retries
    emulator.configure(fault_kinds=["drop"])
    expect(lambda: hook.retrieve_batch("batch_x"))  # connection dropped
    emulator.configure(fault_rate=0.0, api_key="rotated-key")
    expect(lambda: hook.retrieve_batch("batch_x"))  # 401
    return caught


@BOTH_FLAVORS
def test_sync_hook_reprs_errors_and_logs_never_show_the_key(canary_connection, caplog):
    caplog.set_level(logging.DEBUG)  # urllib3 and our retry logging at their most talkative
    hook = OpenAIBatchHook()
    batch_id = CreateBatchOperator(task_id="create", requests=prompts()).execute(ctx())
    assert hook.retrieve_batch(batch_id).id == batch_id  # the key works, so it was really loaded
    caught = failures(canary_connection, hook)
    assert {type(e).__name__ for e in caught} == {
        "NotFoundError",
        "ServerError",
        "APIConnectionError",
        "AuthenticationError",
    }
    surfaces = [repr(hook), str(hook.settings), repr(hook.settings), repr(hook.session)]
    surfaces += [text for err in caught for text in texts_of(err)]
    surfaces += [record.getMessage() for record in caplog.records]
    assert caplog.records  # retries were logged
    assert [s for s in surfaces if CANARY in s] == []


@BOTH_FLAVORS
def test_async_client_and_trigger_never_show_the_key(canary_connection, caplog):
    caplog.set_level(logging.DEBUG)

    async def exercise() -> tuple[AsyncBatchClient, list[BaseException], list]:
        client = await AsyncBatchClient.from_connection("openai_default")
        caught: list[BaseException] = []
        try:
            await client.retrieve_batch("batch_missing")
        except OpenAIBatchError as err:
            caught.append(err)
        canary_connection.configure(fault_rate=1.0, fault_kinds=["drop"])
        try:
            await client.retrieve_batch("batch_x")
        except OpenAIBatchError as err:
            caught.append(err)
        canary_connection.configure(fault_rate=0.0, api_key="rotated-key")
        events = [e async for e in BatchTrigger("batch_x", poll_interval=0.01).run()]
        return client, caught, events

    client, caught, events = asyncio.run(exercise())
    assert [type(e).__name__ for e in caught] == ["NotFoundError", "APIConnectionError"]
    assert events[0].payload["status"] == "error" and "401" in events[0].payload["message"]
    trigger = BatchTrigger("batch_x", cancel_on_kill=True)
    surfaces = [repr(client), repr(client.settings), repr(trigger), json.dumps(trigger.serialize())]
    surfaces += [text for err in caught for text in texts_of(err)] + [json.dumps(events[0].payload)]
    surfaces += [record.getMessage() for record in caplog.records]
    assert [s for s in surfaces if CANARY in s] == []


@BOTH_FLAVORS
def test_operators_render_and_push_nothing_secret(canary_connection):
    op = CreateBatchOperator(task_id="create", requests=prompts(), metadata={"team": "search"})
    context = ctx()
    op.execute(context)
    pushed = json.dumps(context["ti"].xcom)
    fields = json.dumps({name: getattr(op, name) for name in op.template_fields}, default=str)
    assert CANARY not in pushed and CANARY not in fields and CANARY not in repr(op)
