"""The connection Test button never sends a stored secret, or the machine's own Entra ID identity, where the
tester points it.

Through Airflow's own ``POST /api/v2/connections/test`` (its core API app, the simple auth manager, the
connection stored in the metadata database), as the UI calls it: the stored password comes back masked
(``***``) and Airflow fills it in again when the host and port are unchanged, while the extra is the tester's.
The tester's "servers" run on loopback and record what reaches them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from airflow_provider_openai_batch import azure_auth
from tests.azure.token_server import CLIENT_SECRET, TokenServer

KEY = "canary-stored-key-5b0e"  # made up; only where it arrives is checked
MASKED = "***"  # what the UI posts for a secret it was shown masked


class Recorder(ThreadingHTTPServer):
    """A server of the tester's: records each request's headers and body, answers an empty batch list, and as
    an App Service managed-identity endpoint (``/msi``) hands out a token of the machine."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Record)
        self.seen: list[str] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _Record(BaseHTTPRequestHandler):
    server: Recorder

    def do_GET(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append(f"{self.path}\n{self.headers}\n{body.decode('latin-1')}")
        if self.path.startswith("/msi"):
            answer: dict[str, Any] = {
                "access_token": MACHINE_TOKEN,
                "expires_on": str(int(time.time()) + 3600),
                "resource": "https://cognitiveservices.azure.com",
                "token_type": "Bearer",
            }
        else:
            answer = {"object": "list", "data": [], "has_more": False}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


MACHINE_TOKEN = "canary-machine-token-9c27"


@pytest.fixture
def tester_server() -> Iterator[Recorder]:
    server = Recorder()
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def api(tokens: dict[str, str]) -> Any:
    """Airflow's core API app (the routes of ``airflow api-server``), as a client acting as the ``op`` user."""
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    client = TestClient(create_app(apps="core"))
    client.headers["Authorization"] = f"Bearer {tokens['op']}"
    return client


@pytest.fixture(autouse=True)
def test_button_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__TEST_CONNECTION", "Enabled")


def store(conn_id: str, host: str | None, password: str | None, extra: dict[str, Any]) -> None:
    """Store a connection in the metadata database (replacing one of the same id)."""
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    with create_session() as session:
        session.query(Connection).filter(Connection.conn_id == conn_id).delete()
        session.add(
            Connection(conn_id=conn_id, conn_type="openai_batch", host=host, password=password, extra=json.dumps(extra))
        )


def press_test(api: Any, conn_id: str, host: str | None, extra: dict[str, Any], password: str = MASKED) -> Any:
    """What the UI's Test button posts: the form's fields, the secret as it was shown (masked)."""
    body = {
        "connection_id": conn_id,
        "conn_type": "openai_batch",
        "host": host or "",
        "password": password,
        "extra": json.dumps(extra),
    }
    return api.post("/api/v2/connections/test", json=body)


def test_an_unchanged_connection_tests_with_its_stored_key(api, openai_batch_emulator):
    """The button still works: the masked key is the stored one again, and it reaches the stored host."""
    openai_batch_emulator.configure(api_key=KEY)  # only the stored key is accepted
    store("openai_unchanged", openai_batch_emulator.base_url, KEY, {"max_retries": 0})
    answer = press_test(api, "openai_unchanged", openai_batch_emulator.base_url, {"max_retries": 0})
    assert answer.status_code == 200 and answer.json()["status"] is True, answer.text
    assert answer.json()["message"].startswith(f"Connection works: {openai_batch_emulator.base_url} answered")


def test_airflow_refuses_the_stored_key_for_another_host(api, tester_server):
    """The guard this provider relies on: a changed host needs the tester's own secret."""
    store("openai_host_guard", "https://api.openai.com/v1", KEY, {})
    answer = press_test(api, "openai_host_guard", tester_server.url + "/v1", {})
    assert answer.status_code == 400 and "host or port to test differs" in answer.text
    assert tester_server.seen == []


@pytest.mark.parametrize(
    ("extra_of", "field"),
    [
        pytest.param(lambda url: {"base_url": url}, "extra.base_url", id="base_url"),
        pytest.param(
            lambda url: {"openai_client_kwargs": json.dumps({"base_url": url})},
            "extra.openai_client_kwargs.base_url",
            id="openai_client_kwargs",
        ),
    ],
)
def test_a_base_url_in_the_extra_never_gets_the_stored_key(api, tester_server, extra_of, field):
    """Host and port unchanged (empty: OpenAI's default), so Airflow fills in the stored key; the tester's
    extra names their own server."""
    store("openai_extra_url", None, KEY, {})
    answer = press_test(api, "openai_extra_url", None, extra_of(tester_server.url + "/v1"))
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["status"] is False
    assert (
        f"the Test button does not send this connection's secret to a base URL taken from {field}" in result["message"]
    )
    assert "Move the base URL into the host field" in result["message"] and KEY not in result["message"]
    assert tester_server.seen == []  # nothing was sent there, let alone the key


def test_an_authority_in_the_extra_never_gets_the_stored_client_secret(
    api, openai_batch_emulator, token_server: TokenServer
):
    """A service principal stored with Microsoft's authority; the tester names their own (``token_server``
    plays it, and records every client secret it is sent)."""
    openai_batch_emulator.configure(flavor="azure")
    extra = {
        "api_type": "azure",
        "auth_type": "entra_id",
        "tenant_id": "tenant-1",
        "client_id": "client-1",
        "max_retries": 0,
        "unsafe_send_token_to_any_host": True,  # the loopback emulator, over http
    }
    store("azure_authority", openai_batch_emulator.base_url, CLIENT_SECRET, extra)
    answer = press_test(
        api, "azure_authority", openai_batch_emulator.base_url, {**extra, "authority": token_server.authority}
    )
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["status"] is False
    assert "to the authority in extra field 'authority'" in result["message"]
    assert "login.microsoftonline.com" in result["message"] and CLIENT_SECRET not in result["message"]
    assert token_server.requests == []  # the client secret never reached the tester's authority


def test_the_machines_own_identity_is_never_sent_past_the_azure_check(
    api, tester_server, monkeypatch: pytest.MonkeyPatch
):
    """No stored connection at all: the tester asks for this machine's managed identity (an App Service
    identity endpoint on loopback plays it) and lifts the Azure host check; the token must not reach them."""
    monkeypatch.setenv("IDENTITY_ENDPOINT", tester_server.url + "/msi")
    monkeypatch.setenv("IDENTITY_HEADER", "identity-header")
    azure_auth.forget_providers()
    extra = {
        "api_type": "azure",
        "auth_type": "entra_id",
        "managed_identity": True,
        "max_retries": 0,
        "unsafe_send_token_to_any_host": True,
    }
    try:
        answer = press_test(api, "azure_new_connection", tester_server.url + "/openai/v1", extra, password="")
    finally:
        azure_auth.forget_providers()
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["status"] is False
    assert "does not send this machine's own Entra ID token" in result["message"]
    assert "'unsafe_send_token_to_any_host' is set" in result["message"]
    assert not any(MACHINE_TOKEN in request for request in tester_server.seen)
    assert tester_server.seen == []  # not even the identity endpoint was asked


def test_what_airflow_compares_still_decides_and_microsofts_authorities_still_test():
    """Refused only where the tester could choose the destination: a base URL in the host (the extra's then
    unused), a sovereign cloud's Microsoft authority, a service principal's token past the Azure check (its
    stored secret only goes to the stored authority, and the token to the stored host) all still test."""
    from airflow.sdk import Connection

    from airflow_provider_openai_batch.connection import settings_for_connection_test

    def settings(host: str | None, password: str, **extra: Any) -> Any:
        conn = Connection(conn_id="c", conn_type="openai_batch", host=host, password=password, extra=json.dumps(extra))
        return settings_for_connection_test(conn)

    assert settings("https://gw.example/v1", KEY, base_url="http://127.0.0.1:9/v1").base_url == "https://gw.example/v1"
    entra = {"api_type": "azure", "auth_type": "entra_id", "tenant_id": "t", "client_id": "c"}
    azure = "https://res.openai.azure.us/openai/v1"
    assert settings(azure, KEY, authority="https://login.microsoftonline.us", **entra).entra.kind == "service_principal"
    gateway = settings("https://gw.example/openai/v1", KEY, unsafe_send_token_to_any_host=True, **entra)
    assert gateway.base_url == "https://gw.example/openai/v1"
