"""Microsoft Entra ID against a fake token endpoint on loopback, with the real azure-identity: a token is
fetched, sent as ``Authorization: Bearer`` (the emulator's Azure flavor records a digest of each token it
sees), refreshed before it expires in the sync hook and in the trigger's async client, and never logged."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import threading
import time
from types import SimpleNamespace

import pytest

from airflow_provider_openai_batch import api, azure_auth
from airflow_provider_openai_batch.connection import ClientSettings, EntraSettings
from airflow_provider_openai_batch.exceptions import AuthenticationError
from airflow_provider_openai_batch.hooks.async_client import AsyncBatchClient, close_shared_session
from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
from tests.azure.token_server import CLIENT_SECRET as SECRET
from tests.azure.token_server import TokenServer

pytest.importorskip("azure.identity")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


@pytest.fixture
def entra_connection(openai_batch_emulator, token_server: TokenServer, monkeypatch: pytest.MonkeyPatch):
    openai_batch_emulator.configure(flavor="azure")
    conn = {
        "conn_type": "openai_batch",
        "host": openai_batch_emulator.base_url,
        "password": SECRET,  # with auth_type entra_id: the service principal's client secret
        "extra": {
            "api_type": "azure",
            "auth_type": "entra_id",
            "tenant_id": "tenant-1",
            "client_id": "client-1",
            "authority": token_server.authority,
            "max_retries": 0,
            "unsafe_send_token_to_any_host": True,  # the loopback emulator, over http
        },
    }
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", json.dumps(conn))
    return openai_batch_emulator


def provider_of(settings: ClientSettings) -> azure_auth.TokenProvider:
    assert settings.entra is not None
    return azure_auth.provider_for(settings.entra)


def test_the_sync_hook_fetches_sends_and_refreshes_the_token_before_it_expires(
    entra_connection, token_server: TokenServer, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    with OpenAIBatchHook() as hook:
        assert hook.settings.entra is not None and hook.settings.entra.kind == "service_principal"
        hook.list_batches(limit=1)
        hook.list_batches(limit=1)
        assert len(token_server.issued) == 1  # cached: one token for both requests
        stats = entra_connection.stats()
        assert stats["auth"] == {"bearer": 2}
        assert stats["bearer_digests"] == [digest(token_server.issued[0])]
        form = token_server.requests[0]["form"]
        assert form["grant_type"] == "client_credentials" and form["client_id"] == "client-1"
        assert form["scope"] == "https://cognitiveservices.azure.com/.default"

        # 240 s tokens are refreshed when fewer than 120 s remain: move the provider's clock past that point.
        provider = provider_of(hook.settings)
        real = provider.clock
        provider.clock = lambda: real() + 125
        hook.list_batches(limit=1)
        assert len(token_server.issued) == 2
        assert entra_connection.stats()["bearer_digests"] == [digest(t) for t in token_server.issued]
    text = caplog.text
    assert SECRET not in text and not any(token in text for token in token_server.issued)
    assert SECRET not in repr(hook.settings)


def test_the_async_client_shares_the_token_and_refreshes_it_too(entra_connection, token_server: TokenServer):
    with OpenAIBatchHook() as hook:
        settings = hook.settings
        batch_id = hook.create_batch(
            hook.upload_file(
                b'{"custom_id": "a", "method": "POST", "url": "/chat/completions", '
                b'"body": {"model": "dep", "messages": []}}\n'
            ).id,
            "/chat/completions",
        ).id
    assert len(token_server.issued) == 1

    async def poll_twice() -> list[str]:
        client = AsyncBatchClient(settings)
        try:
            first = await client.retrieve_batch(batch_id)
            provider = provider_of(settings)
            real = provider.clock
            provider.clock = lambda: real() + 125
            second = await client.retrieve_batch(batch_id)
            return [first.id, second.id]
        finally:
            await close_shared_session()

    assert asyncio.run(poll_twice()) == [batch_id, batch_id]
    # The trigger's first poll reused the hook's token; its second came after a refresh.
    assert len(token_server.issued) == 2
    assert entra_connection.stats()["bearer_digests"] == [digest(t) for t in token_server.issued]


def test_the_async_client_builds_the_credential_off_the_event_loop_and_shares_it(
    azure_emulator, monkeypatch: pytest.MonkeyPatch
):
    """Building a credential imports azure-identity (about 0.2 s): on the triggerer's loop that would stall
    every trigger. The provider is built in a worker thread, once, and the sync hook's path reuses it."""
    token = f"fake-entra-{secrets.token_hex(8)}"
    azure_emulator.configure(api_key=token)  # the only bearer token the emulator accepts
    built_on: list[int] = []

    def make_credential(entra: EntraSettings) -> SimpleNamespace:
        built_on.append(threading.get_ident())
        return SimpleNamespace(get_token=lambda *scopes: SimpleNamespace(token=token, expires_on=time.time() + 3600))

    monkeypatch.setattr(azure_auth, "make_credential", make_credential)
    azure_auth.forget_providers()
    entra = EntraSettings(managed_identity=True)
    settings = ClientSettings(
        api_key="", base_url=azure_emulator.base_url, api_type="azure", entra=entra, max_retries=0
    )

    async def list_twice() -> int:
        client = AsyncBatchClient(settings)
        try:
            for _ in range(2):
                await client.request(api.list_batches(limit=1))
        finally:
            await close_shared_session()
        return threading.get_ident()

    try:
        loop_thread = asyncio.run(list_twice())
        assert len(built_on) == 1 and built_on[0] != loop_thread
        assert azure_auth.provider_for(entra) is azure_auth.provider_for(entra)  # the sync path: same provider
        assert len(built_on) == 1
    finally:
        azure_auth.forget_providers()


def test_a_wrong_client_secret_fails_clearly_without_repeating_it(
    entra_connection, token_server: TokenServer, caplog: pytest.LogCaptureFixture
):
    token_server.client_secret = "another-secret"
    caplog.set_level(logging.DEBUG)
    with OpenAIBatchHook() as hook, pytest.raises(azure_auth.CredentialError) as caught:
        hook.list_batches(limit=1)
    message = str(caught.value)
    assert "Entra ID token" in message and "tenant_id, client_id and client secret" in message
    assert SECRET not in message and SECRET not in caplog.text
    assert entra_connection.stats()["requests"] == {}  # nothing was sent without a token


def test_the_emulator_refuses_a_token_it_was_not_given(entra_connection, token_server: TokenServer):
    entra_connection.configure(api_key="only-this-token")
    with OpenAIBatchHook() as hook, pytest.raises(AuthenticationError) as caught:
        hook.list_batches(limit=1)
    assert caught.value.status_code == 401 and caught.value.code == "401"
    assert caught.value.request_id  # Azure's apim-request-id


class FakeCredential:
    """A ``TokenCredential``-shaped object: the provider works with any, not only azure-identity's."""

    def __init__(self, lifetime: float, now: float) -> None:
        self.lifetime, self.now, self.calls = lifetime, now, 0

    def get_token(self, *scopes: str, **kwargs: object) -> object:
        self.calls += 1
        from types import SimpleNamespace

        return SimpleNamespace(token=f"t{self.calls}", expires_on=self.now + self.lifetime)


def test_the_provider_refreshes_a_margin_before_expiry_with_any_token_credential():
    now = [1_000_000.0]
    credential = FakeCredential(3600, now[0])
    provider = azure_auth.TokenProvider(credential, "scope/.default", clock=lambda: now[0])
    assert provider.token() == "t1"
    now[0] += 3600 - azure_auth.REFRESH_MARGIN - 1  # still more than 5 minutes left
    assert provider.token() == "t1" and credential.calls == 1
    now[0] += 2  # fewer than 5 minutes left: refreshed before it expires
    credential.now = now[0]
    assert provider.token() == "t2" and credential.calls == 2
    assert "t2" not in repr(provider)


def test_azure_identity_is_imported_only_when_an_entra_id_connection_is_used():
    import subprocess
    import sys

    code = (
        "import sys; import airflow_provider_openai_batch.hooks.batch, airflow_provider_openai_batch.triggers.batch, "
        "airflow_provider_openai_batch.operators.batch, airflow_provider_openai_batch.azure_auth; "
        "print(sorted(m for m in sys.modules if m.startswith(('azure', 'msal'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
