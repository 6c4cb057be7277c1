"""pytest fixtures for testing DAGs and code against the OpenAI Batch API emulator.

Opt-in, so they never load into other projects' test runs: enable them in a ``conftest.py`` with
``pytest_plugins = ["openai_batch_emulator.pytest_plugin"]``, then::

    def test_my_client(openai_batch_emulator):
        openai_batch_emulator.configure(fault_rate=0.2)     # 20% transient faults
        client = MyClient(base_url=openai_batch_emulator.base_url, api_key=openai_batch_emulator.api_key)
        ...                                                 # code that creates one batch through the client
        assert openai_batch_emulator.stats()["batches_created"] == 1

(The Airflow connection pointed at it is the provider's fixture, not this package's.)

``openai_batch_emulator`` is one server per test session (in a background thread, on a free loopback
port), reset before each test with fast phases (0.1 s), no faults, ``seed=0`` and an empty ``fault_script``,
batches that complete and requests that never fail transiently.

Faults a test can rely on, whatever the machine's speed: ``fault_script`` decides the next requests one by
one, ``seed`` makes the random draw repeat exactly::

    openai_batch_emulator.configure(fault_script=["503", "", "drop"])  # 1st request 503, 2nd fine, 3rd dropped
    openai_batch_emulator.configure(seed=42, fault_rate=0.3)           # the same draws on every run

Partial results, as a large job meets them: ``expire_after_fraction=0.6`` ends every new batch ``expired``
with the first 60% of its requests run; ``transient_failure_attempts=1`` fails every request (a 500 or 429
line in the error file) in the first batch that runs it and lets it succeed when re-sent in a new batch;
``transient_failure_rate=0.2`` fails each run request with that chance, drawn from ``seed``::

    openai_batch_emulator.configure(expire_after_fraction=0.6, transient_failure_attempts=1)
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from openai_batch_emulator.config import EmulatorConfig
from openai_batch_emulator.testing import EmulatorHandle

#: The settings every test starts from (see :class:`~openai_batch_emulator.config.EmulatorConfig`).
DEFAULTS: dict[str, Any] = {
    "phase_seconds": 0.1,
    "fault_rate": 0.0,
    "latency_ms": 0.0,
    "fault_after_processing": False,
    "completion_window_seconds": 86_400.0,
    "retry_after": 0.1,
    "slow_seconds": 30.0,
    "fault_kinds": ["429", "500", "502", "503", "drop"],
    "api_key": None,
    "seed": 0,  # setting it re-seeds the fault draw: every test sees the same faults on every run
    "fault_script": [],
    "expire_after_fraction": None,  # batches complete
    "transient_failure_rate": 0.0,  # no request fails transiently
    "transient_failure_attempts": 0,
    "enqueued_token_limit": None,  # no enqueued-token limit
    "flavor": "openai",  # configure(flavor="azure") to play Azure OpenAI
}


@pytest.fixture(scope="session")
def _openai_batch_emulator_server() -> Iterator[EmulatorHandle]:
    from openai_batch_emulator.server import ThreadedEmulator

    server = ThreadedEmulator(EmulatorConfig(**copy.deepcopy(DEFAULTS))).start()
    try:
        yield EmulatorHandle(f"http://{server.host}:{server.port}/v1")
    finally:
        server.stop()


@pytest.fixture
def openai_batch_emulator(_openai_batch_emulator_server: EmulatorHandle) -> EmulatorHandle:
    """A running emulator, emptied and set to fast, fault-free defaults for this test (:data:`DEFAULTS`).

    Change settings with ``configure(...)``: ``phase_seconds``, ``fault_rate``, ``fault_kinds``,
    ``latency_ms``, ``slow_seconds``, ``fault_after_processing``, ``api_key``, and for reproducible faults
    ``seed`` (re-seeds the random draw) and ``fault_script`` (e.g. ``["500", "", "drop"]``: the next
    requests' faults, one per ``/v1`` request after auth, ``""`` for none, before the random draw applies);
    inside batches ``expire_after_fraction``, ``transient_failure_rate`` and ``transient_failure_attempts``.
    """
    handle = _openai_batch_emulator_server
    handle.reset()
    handle.configure(**DEFAULTS)
    return handle
