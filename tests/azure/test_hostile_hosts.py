"""Base URLs that HTTP clients could read as different hosts: one table, refused when the connection is read,
whatever field the URL came from, before either transport connects anywhere or any Entra ID token is fetched.

``requests`` finds the host with urllib3's parser and aiohttp with yarl's; ``urllib.parse`` reads some URLs
otherwise (``https://attacker.example\\.openai.azure.com`` is an Azure host to it and ``attacker.example`` to
urllib3). Where each transport really connects is seen through a recording proxy on loopback: for an
``https://`` URL both send ``CONNECT host:port`` to the proxy named by ``https_proxy``, which records it and
refuses, so nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import json
import socketserver
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from airflow.sdk import Connection

from airflow_provider_openai_batch.connection import settings_from_connection
from airflow_provider_openai_batch.exceptions import APIConnectionError
from airflow_provider_openai_batch.hooks import async_client
from airflow_provider_openai_batch.hooks.async_client import AsyncBatchClient, close_shared_session
from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
from tests.azure.token_server import CLIENT_SECRET, TokenServer

#: Each URL names an Azure host to one reading and another host (or no valid host) to another.
HOSTILE = [
    pytest.param("https://attacker.example\\.openai.azure.com/openai/v1", id="backslash"),
    pytest.param("https://attacker.example\\\\.openai.azure.com/openai/v1", id="two-backslashes"),
    pytest.param("https://attacker.example\\@res.openai.azure.com/openai/v1", id="backslash-at"),
    pytest.param("https://attacker.example:443\\.openai.azure.com/openai/v1", id="port-backslash"),
    pytest.param("https://res.openai.azure.com@attacker.example/openai/v1", id="userinfo"),
    pytest.param("https://res.openai.azure.com:443@attacker.example/openai/v1", id="userinfo-port"),
    pytest.param(f"https://{CLIENT_SECRET}@res.openai.azure.com/openai/v1", id="userinfo-secret"),
    pytest.param("https://attacker.example%2f.openai.azure.com/openai/v1", id="percent-slash"),
    pytest.param("https://attacker.example%5c.openai.azure.com/openai/v1", id="percent-backslash"),
    pytest.param("https://attacker.example%40.openai.azure.com/openai/v1", id="percent-at"),
    pytest.param("https://attacker.example%00.openai.azure.com/openai/v1", id="percent-nul"),
    pytest.param("https://attacker.example\u3002res.openai.azure.com/openai/v1", id="ideographic-dot"),
    pytest.param("https://attacker.example\u2024res.openai.azure.com/openai/v1", id="one-dot-leader"),
    pytest.param("https://attacker.example\uff3c.openai.azure.com/openai/v1", id="fullwidth-backslash"),
    pytest.param("https://res\uff0eopenai\uff0eazure\uff0ecom/openai/v1", id="fullwidth-dots"),
    pytest.param("https://attacker.example\t.openai.azure.com/openai/v1", id="tab"),
    pytest.param("https://attacker.example\u00a0res.openai.azure.com/openai/v1", id="no-break-space"),
    pytest.param("https://attacker.example;.openai.azure.com/openai/v1", id="semicolon"),
    pytest.param("https://attacker.example#.openai.azure.com/openai/v1", id="fragment"),
    pytest.param("https://attacker.example?.openai.azure.com/openai/v1", id="query"),
    pytest.param("https://[::1].openai.azure.com/openai/v1", id="ipv6-then-name"),
    pytest.param("https://[::1/openai/v1", id="ipv6-unclosed"),
    pytest.param("https://[fe80::1%25eth0].openai.azure.com/openai/v1", id="ipv6-zone"),
    pytest.param("https://res.openai.azure.com:443:8443/openai/v1", id="two-ports"),
    pytest.param("https://res.openai.azure.com:+443/openai/v1", id="signed-port"),
    pytest.param("https://..openai.azure.com/openai/v1", id="empty-labels"),
]
#: Where a secret is sent, and the host:port each transport must connect to for it.
ACCEPTED = [
    pytest.param("https://res.openai.azure.com/openai/v1", "res.openai.azure.com:443", id="azure"),
    pytest.param("https://RES.OpenAI.Azure.com.:443/openai/v1", "res.openai.azure.com.:443", id="case-dot-port"),
    pytest.param("https://res.cognitiveservices.azure.com:8443/openai/v1", "res.cognitiveservices.azure.com:8443"),
    pytest.param("https://proj_1.services.ai.azure.com/openai/v1", "proj_1.services.ai.azure.com:443", id="underscore"),
    pytest.param("https://xn--bcher-kva.openai.azure.com/openai/v1", "xn--bcher-kva.openai.azure.com:443", id="idna"),
]
FIELDS = ["host", "extra.base_url", "extra.openai_client_kwargs.base_url"]


class ConnectRecorder(socketserver.ThreadingTCPServer):
    """An HTTP proxy that records the first line of each request (``CONNECT host:port HTTP/1.1``) and refuses it."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Refuse)
        self.targets: list[str] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _Refuse(socketserver.StreamRequestHandler):
    server: ConnectRecorder

    def handle(self) -> None:
        first = self.rfile.readline().decode("latin-1").split()
        while self.rfile.readline().strip():  # the rest of the request's head
            pass
        if len(first) >= 2:
            self.server.targets.append(first[1] if first[0] == "CONNECT" else first[0] + " " + first[1])
        self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[ConnectRecorder]:
    """Every https request of this test goes through the recorder, except to the loopback token endpoint."""
    recorder = ConnectRecorder()
    threading.Thread(target=recorder.serve_forever, args=(0.05,), daemon=True).start()
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("https_proxy", recorder.url)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    async_client.env_proxy.cache_clear()  # looked up once per base URL: this test's proxy, not an earlier one
    try:
        yield recorder
    finally:
        async_client.env_proxy.cache_clear()
        recorder.shutdown()
        recorder.server_close()


def entra_extra(field: str, url: str, authority: str) -> dict[str, Any]:
    """A service principal's Entra ID settings, with the base URL in ``field`` when that is an extra field."""
    extra: dict[str, Any] = {
        "api_type": "azure",
        "auth_type": "entra_id",
        "tenant_id": "tenant-1",
        "client_id": "client-1",
        "authority": authority,
        "max_retries": 0,
    }
    if field == "extra.base_url":
        extra["base_url"] = url
    elif field == "extra.openai_client_kwargs.base_url":
        extra["openai_client_kwargs"] = {"base_url": url}
    return extra


def use_connection(monkeypatch: pytest.MonkeyPatch, field: str, url: str, authority: str) -> None:
    conn = {
        "conn_type": "openai_batch",
        "host": url if field == "host" else None,
        "password": CLIENT_SECRET,
        "extra": entra_extra(field, url, authority),
    }
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", json.dumps(conn))


def assert_refused(err: BaseException, field: str) -> None:
    message = str(err)
    assert f"Connection 'openai_default': the base URL ({field})" in message
    assert CLIENT_SECRET not in message and "attacker" not in message  # neither the secret nor the URL is repeated


def sync_call() -> None:
    with OpenAIBatchHook() as hook:
        hook.list_batches(limit=1)


def async_call() -> None:
    async def call() -> None:
        try:
            client = await AsyncBatchClient.from_connection("openai_default")
            await client.retrieve_batch("batch_x")
        finally:
            await close_shared_session()

    asyncio.run(call())


TRANSPORTS = [pytest.param(sync_call, id="requests"), pytest.param(async_call, id="aiohttp")]


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("url", HOSTILE)
@pytest.mark.parametrize("auth", ["api_key", "entra_id"])
def test_a_hostile_base_url_is_refused_naming_its_field(url, field, auth):
    extra = entra_extra(field, url, "https://login.microsoftonline.com")
    if auth == "api_key":
        extra = {
            name: value for name, value in extra.items() if name in ("api_type", "base_url", "openai_client_kwargs")
        }
    conn = Connection(
        conn_id="openai_default",
        conn_type="openai_batch",
        host=url if field == "host" else None,
        password=CLIENT_SECRET,
        extra=json.dumps(extra),
    )
    with pytest.raises(ValueError) as caught:
        settings_from_connection(conn)
    assert_refused(caught.value, field)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("url", HOSTILE)
def test_neither_transport_connects_to_a_hostile_base_url_nor_fetches_a_token(
    url, transport, proxy: ConnectRecorder, token_server: TokenServer, monkeypatch: pytest.MonkeyPatch
):
    use_connection(monkeypatch, "host", url, token_server.authority)
    with pytest.raises(ValueError) as caught:
        transport()
    assert_refused(caught.value, "host")
    assert proxy.targets == []  # no connection was even attempted
    assert token_server.requests == []  # the client secret never left, no token was made


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize(("url", "target"), ACCEPTED)
def test_each_transport_connects_to_the_host_the_check_accepted(
    url, target, field, transport, proxy: ConnectRecorder, token_server: TokenServer, monkeypatch
):
    use_connection(monkeypatch, field, url, token_server.authority)
    with pytest.raises(APIConnectionError):  # the recorder refuses the CONNECT
        transport()
    assert [t.lower() for t in proxy.targets] == [target]


def test_a_host_another_parser_reads_otherwise_is_refused(monkeypatch: pytest.MonkeyPatch):
    """The last gate: should a future urllib3 (or yarl) read a host the others do not, the URL is refused."""
    from urllib3.util import Url, parse_url

    def elsewhere(url: str) -> Url:
        return parse_url(url)._replace(host="attacker.example")

    conn = Connection(
        conn_id="c", conn_type="openai_batch", host="https://res.openai.azure.com/openai/v1", password="k"
    )
    assert settings_from_connection(conn).base_url == "https://res.openai.azure.com/openai/v1"
    monkeypatch.setattr("urllib3.util.parse_url", elsewhere)
    with pytest.raises(ValueError, match=r"the base URL \(host\) is read differently by the HTTP clients"):
        settings_from_connection(conn)


@pytest.mark.parametrize("url", HOSTILE)
def test_a_hostile_authority_is_refused_before_the_client_secret_goes_there(url):
    authority = url.replace("/openai/v1", "").replace("res.openai.azure.com", "login.microsoftonline.com")
    conn = Connection(
        conn_id="c",
        conn_type="openai_batch",
        host="https://res.openai.azure.com/openai/v1",
        password=CLIENT_SECRET,
        extra=json.dumps(entra_extra("host", "", authority)),
    )
    with pytest.raises(ValueError, match="Connection 'c': extra field 'authority' ") as caught:
        settings_from_connection(conn)
    assert CLIENT_SECRET not in str(caught.value) and "attacker" not in str(caught.value)
