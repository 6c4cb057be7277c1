"""Redirects are never followed, by either transport: the Batch and Files APIs never redirect, and both
``requests`` and aiohttp drop only ``Authorization`` on a redirect to another host, so Azure's ``api-key``
would travel to wherever ``Location`` points. A 3xx is an :class:`APIError` that names the target's host and
the fix, never the target's path or query. Two loopback servers: the "API", which answers every request with
a redirect to another host name (``localhost``), and that other host, which records what reaches it."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from collections.abc import Iterator

import pytest

from airflow_provider_openai_batch.connection import ClientSettings
from airflow_provider_openai_batch.exceptions import APIError
from airflow_provider_openai_batch.hooks.async_client import AsyncBatchClient, close_shared_session
from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook

KEY = "canary-redirect-key-3e9a"  # made up; only its presence anywhere is checked
SIGNATURE = "sig=canary-signature-77"  # a storage URL's query: never shown

AUTH = [
    pytest.param({"api_type": "openai"}, "/v1", id="openai-bearer"),
    pytest.param({"api_type": "azure"}, "/openai/v1", id="azure-api-key"),
]


class Recorder(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, redirect_to: str | None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.redirect_to = redirect_to
        self.seen: list[dict[str, str]] = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class Handler(http.server.BaseHTTPRequestHandler):
    server: Recorder

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.server.seen.append(dict(self.headers))
        if self.server.redirect_to is not None:
            self.send_response(307)
            self.send_header("Location", f"{self.server.redirect_to}{self.path.split('?')[0]}?{SIGNATURE}")
            body = b""
        else:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            body = json.dumps({"object": "list", "data": [], "has_more": False}).encode()
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def servers() -> Iterator[tuple[Recorder, Recorder]]:
    """(api, other): ``api`` redirects every request to the same path on ``other`` under another host name."""
    other = Recorder(None)
    api = Recorder(f"http://localhost:{other.port}")
    for server in (api, other):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield api, other
    for server in (api, other):
        server.shutdown()
        server.server_close()


def assert_refused(err: APIError, api: Recorder, other: Recorder) -> None:
    assert err.status_code == 307
    assert "the API answered with a redirect to another URL on host localhost" in str(err)
    assert "set the connection's host to the final URL" in str(err)
    texts = [str(err), repr(err), *(repr(v) for v in vars(err).values())]
    assert not any(KEY in text or SIGNATURE in text for text in texts)
    assert len(api.seen) == 1 and any(KEY in value for value in api.seen[0].values())  # sent once, to the API
    assert other.seen == []  # nothing, let alone the key, reached the other host


@pytest.mark.parametrize(("extra", "path"), AUTH)
@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda hook, tmp: hook.list_batches(limit=1), id="json"),
        pytest.param(lambda hook, tmp: hook.download_file("file-1", tmp / "out.jsonl"), id="download"),
        pytest.param(lambda hook, tmp: hook.upload_file(b'{"custom_id": "a"}\n'), id="upload"),
    ],
)
def test_the_sync_hook_does_not_follow_a_redirect_to_another_host(
    servers, monkeypatch, tmp_path, sleeps, extra, path, call
):
    api, other = servers
    conn = {
        "conn_type": "openai_batch",
        "host": f"http://127.0.0.1:{api.port}{path}",
        "password": KEY,
        "extra": {**extra, "max_retries": 2},
    }
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", json.dumps(conn))
    with OpenAIBatchHook() as hook, pytest.raises(APIError) as caught:
        call(hook, tmp_path)
    assert_refused(caught.value, api, other)
    assert sleeps == [] and list(tmp_path.iterdir()) == []  # not retried; no partial download left


@pytest.mark.parametrize(("extra", "path"), AUTH)
def test_the_async_client_does_not_follow_a_redirect_to_another_host(servers, extra, path):
    api, other = servers
    settings = ClientSettings(
        api_key=KEY, base_url=f"http://127.0.0.1:{api.port}{path}", max_retries=0, timeout=30, **extra
    )

    async def call() -> None:
        try:
            await AsyncBatchClient(settings).retrieve_batch("batch_abc")
        finally:
            await close_shared_session()

    with pytest.raises(APIError) as caught:
        asyncio.run(call())
    assert_refused(caught.value, api, other)
