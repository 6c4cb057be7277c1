"""Shared test set-up. The emulator fixtures (``openai_batch_emulator``, ``openai_batch_connection``) come
from the package's own pytest plugin, enabled the way the README tells a user to; an Airflow database and
its users' tokens (``airflow_db``, ``tokens``) from :mod:`tests.airflow_api`; a fake Entra ID authority
(``token_server``) from :mod:`tests.azure.token_server`."""

from __future__ import annotations

import json
import time

import pytest

pytest_plugins = [
    "airflow_provider_openai_batch.pytest_plugin",
    "tests.airflow_api",  # airflow_db, tokens
    "tests.azure.token_server",  # token_server
]

BASE = "http://127.0.0.1:9/v1"
KEY = "test-key-canary-7f3a"


@pytest.fixture
def conn_env(monkeypatch: pytest.MonkeyPatch):
    """Set ``openai_default`` to a fake base URL (intercepted by requests-mock) with optional extras."""

    def set_conn(extra: dict | None = None, host: str = BASE, password: str | None = KEY) -> None:
        conn = {"conn_type": "openai_batch", "host": host, "extra": extra or {}}
        if password is not None:
            conn["password"] = password
        monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", json.dumps(conn))

    set_conn()
    return set_conn


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record retry back-off sleeps instead of waiting (tenacity sleeps through ``time.sleep``)."""
    recorded: list[float] = []
    monkeypatch.setattr(time, "sleep", lambda seconds: recorded.append(seconds))
    return recorded


@pytest.fixture
def memory_store():
    """``memory://`` served by fsspec's in-memory filesystem, attached the way a user attaches a store Airflow
    has no provider for (``airflow.sdk.io.attach``); emptied after the test."""
    from airflow.sdk.io import attach
    from fsspec.implementations.memory import MemoryFileSystem

    store = attach(protocol="memory", fs=MemoryFileSystem())
    # attach() returns the store already cached under "memory" as it is; give it the filesystem all the same.
    store.fs = MemoryFileSystem()
    yield store
    MemoryFileSystem.store.clear()
    MemoryFileSystem.pseudo_dirs[:] = [""]
