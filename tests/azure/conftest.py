"""Azure fixtures: the session's emulator playing Azure OpenAI, ``openai_default`` pointed at it, and a fake
Entra ID token endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_provider_openai_batch import azure_auth
from tests.azure.token_server import CLIENT_SECRET, TokenServer

#: Azure's GA API version of the classic paths (Microsoft's documentation).
API_VERSION = "2024-10-21"


@pytest.fixture
def azure_emulator(openai_batch_emulator):
    """The emulator with ``flavor="azure"`` (reset to the defaults, then switched), for this test."""
    openai_batch_emulator.configure(flavor="azure")
    return openai_batch_emulator


@pytest.fixture(params=["v1", "classic"])
def azure_connection(request, azure_emulator, monkeypatch: pytest.MonkeyPatch):
    """``openai_default`` as an Azure connection, once for each path shape: ``/openai/v1`` and the classic
    ``/openai/...?api-version=``. ``azure_connection.shape`` says which."""
    version = API_VERSION if request.param == "classic" else None
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", azure_emulator.connection_json(api_version=version))
    azure_emulator.shape = request.param
    return azure_emulator


@pytest.fixture
def token_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TokenServer]:
    """A loopback Entra ID authority that accepts :data:`~tests.azure.token_server.CLIENT_SECRET`; the token
    cache is emptied before and after."""
    server = TokenServer(tmp_path, CLIENT_SECRET, expires_in=240).start()
    # azure-core's requests transport trusts the environment's CA bundle: our throw-away certificate.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server.cert))
    azure_auth.forget_providers()
    try:
        yield server
    finally:
        azure_auth.forget_providers()
        server.stop()
