"""pytest fixtures for testing DAGs against the OpenAI Batch API emulator: ``openai_batch_emulator`` (from the
``openai-batch-emulator`` package's own plugin, loaded with this one) and ``openai_batch_connection``, the
Airflow connection ``openai_default`` pointed at it.

Opt-in, so they never load into other projects' test runs: enable them in a ``conftest.py`` with
``pytest_plugins = ["airflow_provider_openai_batch.pytest_plugin"]``, then::

    def test_my_dag(openai_batch_connection, openai_batch_emulator):
        openai_batch_emulator.configure(fault_rate=0.2)     # 20% transient faults
        ...                                                 # run code that uses conn id "openai_default"
        assert openai_batch_emulator.stats()["batches_created"] == 1
"""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_openai_batch.testing import connection_json

pytest_plugins = ["openai_batch_emulator.pytest_plugin"]


@pytest.fixture
def openai_batch_connection(openai_batch_emulator: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Point the Airflow connection ``openai_default`` at the emulator for this test; returns the emulator."""
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", connection_json(openai_batch_emulator))
    return openai_batch_emulator
