"""Azure fixtures: the session's emulator playing Azure OpenAI, and ``openai_default`` pointed at it (the fake
Entra ID token endpoint, ``token_server``, is in :mod:`tests.azure.token_server`)."""

from __future__ import annotations

import pytest

from airflow_provider_openai_batch.testing import connection_json

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
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", connection_json(azure_emulator, api_version=version))
    azure_emulator.shape = request.param
    return azure_emulator
