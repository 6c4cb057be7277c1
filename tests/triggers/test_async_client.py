"""The trigger's transport: every failure to get an answer becomes the provider's own error, which names the
call and the base URL and never a header value or credential."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from airflow_provider_openai_batch.connection import ClientSettings
from airflow_provider_openai_batch.exceptions import APIConnectionError
from airflow_provider_openai_batch.hooks import async_client
from airflow_provider_openai_batch.hooks.async_client import AsyncBatchClient, RequestNotSentError
from airflow_provider_openai_batch.triggers.batch import BatchTrigger
from tests.helpers import events

# Not key-shaped on purpose; only its presence anywhere is checked.
CANARY = "canary-hostile-7d41"


def texts_of(err: BaseException) -> list[str]:
    """Everything an exception can be turned into by a logger, a traceback or a debugger."""
    found = [str(err), repr(err), *(repr(v) for v in vars(err).values())]
    for linked in (err.__cause__, err.__context__):
        if linked is not None:
            found += texts_of(linked)
    return found


def fail(settings: ClientSettings) -> APIConnectionError:
    async def call() -> None:
        await AsyncBatchClient(settings).retrieve_batch("batch_x")

    with pytest.raises(APIConnectionError) as caught:
        asyncio.run(call())
    return caught.value


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param(lambda url: ClientSettings(api_key=f"{CANARY}\nX-Injected: 1", base_url=url), id="newline-in-key"),
        pytest.param(lambda url: ClientSettings(api_key=f"{CANARY}\r", base_url=url), id="carriage-return-in-key"),
        pytest.param(
            lambda url: ClientSettings(api_key="k", organization=f"{CANARY}\x00", base_url=url), id="nul-in-org"
        ),
        pytest.param(
            lambda url: ClientSettings(api_key="k", base_url=url.replace("://", f"://user:{CANARY}@")), id="url-creds"
        ),
        pytest.param(lambda url: ClientSettings(api_key=CANARY, base_url="http://[::1/v1"), id="unparseable-url"),
        pytest.param(lambda url: ClientSettings(api_key=CANARY, base_url="ftp://127.0.0.1/v1"), id="not-http"),
        pytest.param(
            lambda url: ClientSettings(api_key=CANARY, base_url=f"http://{'a' * 300}.test/v1"), id="idna-error"
        ),
    ],
)
def test_hostile_settings_fail_at_once_and_never_show_a_secret(openai_batch_emulator, caplog, settings):
    caplog.set_level(logging.DEBUG)
    err = fail(settings(openai_batch_emulator.base_url))
    assert isinstance(err, RequestNotSentError) and err.maybe_processed is False
    assert err.__cause__ is None and err.__context__ is None  # the library's exception is not kept
    assert "GET /batches/batch_x" in str(err) and "nothing was sent" in str(err)
    texts = texts_of(err) + [record.getMessage() for record in caplog.records]
    assert [t for t in texts if CANARY in t] == []
    assert sum(openai_batch_emulator.stats()["requests"].values()) == 0  # never sent, and never retried
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]


def test_a_library_error_that_quotes_the_header_is_not_repeated(openai_batch_emulator, monkeypatch, caplog):
    """Whatever the transport raises, and whatever its message says, only its type name is passed on."""

    class Echoing:
        def request(self, method: str, url: str, **kwargs: Any) -> Any:
            raise RuntimeError(f"refused header {kwargs['headers']['Authorization']!r}")

    monkeypatch.setattr(async_client, "shared_session", lambda: Echoing())
    caplog.set_level(logging.DEBUG)
    err = fail(ClientSettings(api_key=CANARY, base_url=openai_batch_emulator.base_url, max_retries=1))
    assert type(err) is APIConnectionError and "RuntimeError" in str(err)
    assert openai_batch_emulator.base_url in str(err)
    texts = texts_of(err) + [record.getMessage() for record in caplog.records]
    assert [t for t in texts if CANARY in t] == []


def test_a_trigger_with_an_unusable_connection_ends_at_once(openai_batch_emulator, monkeypatch):
    hostile = AsyncBatchClient(ClientSettings(api_key=f"{CANARY}\n", base_url=openai_batch_emulator.base_url))

    async def from_connection(conn_id: str) -> AsyncBatchClient:
        return hostile

    monkeypatch.setattr(AsyncBatchClient, "from_connection", staticmethod(from_connection))
    found = asyncio.run(events(BatchTrigger("batch_x", poll_interval=60, max_consecutive_errors=5)))
    payload = found[0].payload
    assert payload["status"] == "error" and "nothing was sent" in payload["message"]  # not 5 polls of back-off
    assert CANARY not in str(payload)


def test_a_key_with_a_trailing_newline_is_masked_as_sent_in_the_triggerer_too(openai_batch_emulator, monkeypatch):
    import asyncio
    import json

    from airflow.sdk.log import redact

    from airflow_provider_openai_batch.hooks.async_client import AsyncBatchClient

    clean = "sk-test-async-newline-canary-9"
    conn = {"conn_type": "openai_batch", "host": openai_batch_emulator.base_url, "password": clean + "\n"}
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_NEWLINE", json.dumps(conn))

    async def read() -> str:
        client = await AsyncBatchClient.from_connection("openai_newline")
        return client.settings.api_key

    assert asyncio.run(read()) == clean
    assert clean not in str(redact(f"an echoed key: {clean}"))
