"""pytest fixtures for testing DAGs and code against the OpenAI Batch API emulator.

Installed with the package (entry point ``pytest11``), so any project's tests can use::

    def test_my_dag(openai_batch_connection, openai_batch_emulator):
        openai_batch_emulator.configure(fault_rate=0.2)     # 20% transient faults
        ...                                                 # run code that uses conn id "openai_default"
        assert openai_batch_emulator.stats()["batches_created"] == 1

``openai_batch_emulator`` is one server per test session (in a background thread, on a free loopback
port), reset before each test with fast phases (0.1 s) and no faults.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_provider_openai_batch.emulator.store import EmulatorConfig
from airflow_provider_openai_batch.emulator.testing import EmulatorHandle

DEFAULTS = {
    "phase_seconds": 0.1,
    "fault_rate": 0.0,
    "latency_ms": 0.0,
    "fault_after_processing": False,
    "completion_window_seconds": 86_400.0,
    "retry_after": 0.1,
    "slow_seconds": 30.0,
    "fault_kinds": ["429", "500", "502", "503", "drop"],
    "api_key": None,
}


@pytest.fixture(scope="session")
def _openai_batch_emulator_server() -> Iterator[EmulatorHandle]:
    from airflow_provider_openai_batch.emulator.server import ThreadedEmulator

    server = ThreadedEmulator(EmulatorConfig(**DEFAULTS)).start()  # type: ignore[arg-type]
    try:
        yield EmulatorHandle(f"http://{server.host}:{server.port}/v1")
    finally:
        server.stop()


@pytest.fixture
def openai_batch_emulator(_openai_batch_emulator_server: EmulatorHandle) -> EmulatorHandle:
    """A running emulator, emptied and set to fast, fault-free defaults for this test."""
    handle = _openai_batch_emulator_server
    handle.reset()
    handle.configure(**DEFAULTS)
    return handle


@pytest.fixture
def openai_batch_connection(openai_batch_emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch) -> EmulatorHandle:
    """Point the Airflow connection ``openai_default`` at the emulator for this test."""
    monkeypatch.setenv("AIRFLOW_CONN_OPENAI_DEFAULT", openai_batch_emulator.connection_json())
    return openai_batch_emulator
