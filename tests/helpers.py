"""Helpers shared by the tests: a minimal task-instance context, request lists, batches made over HTTP, and
collecting a trigger's events."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import pytest
import requests

from airflow_provider_openai_batch.triggers.batch import BatchTrigger

ENDPOINT = "/v1/chat/completions"
#: Run a test against the emulator playing OpenAI and playing Azure OpenAI (tests/reliability/conftest.py).
BOTH_FLAVORS = pytest.mark.parametrize("flavor", ["openai", "azure"], indirect=True)


def modules_added(code: str) -> list[str]:
    """The modules ``code`` imports on top of ``import airflow.sdk``, run in a fresh interpreter (what a DAG
    file that uses our operators pays beyond Airflow itself)."""
    script = (
        "import sys; import airflow.sdk; before = set(sys.modules)\n"
        f"{code}\n"
        "import json; print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def lineage_env(path: Any) -> dict[str, str]:
    """Environment that turns on the real OpenLineage provider with its ``file`` transport, every event
    appended to ``path`` as one JSON line."""
    transport = {"type": "file", "log_file_path": str(path), "append": True}
    return {"AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(transport), "AIRFLOW__OPENLINEAGE__NAMESPACE": "tests"}


def lineage_events(path: Any, task_id: str, event_type: str = "COMPLETE") -> list[dict[str, Any]]:
    """The events a :func:`lineage_env` run wrote for ``task_id`` (its job is ``<dag_id>.<task_id>``)."""
    with open(path, encoding="utf-8") as lines:
        events = [json.loads(line) for line in lines if line.strip()]
    return [e for e in events if e["eventType"] == event_type and e["job"]["name"].endswith(f".{task_id}")]


def datasets(event: dict[str, Any], side: str) -> list[tuple[str, str]]:
    """An event's ``inputs`` or ``outputs`` as (namespace, name) pairs."""
    return [(d["namespace"], d["name"]) for d in event.get(side) or []]


def endpoint_of(handle: Any) -> str:
    """The chat endpoint as the emulator's flavor writes it: ``/v1/chat/completions``, or Azure's
    ``/chat/completions``."""
    return "/chat/completions" if getattr(handle, "flavor", "openai") == "azure" else ENDPOINT


class FakeTI:
    """The parts of a task instance the operators use: identity, try number and XCom pushes."""

    def __init__(self, try_number: int = 1, map_index: int = -1) -> None:
        self.dag_id, self.task_id, self.run_id = "dag", "create", "manual__1"
        self.map_index, self.try_number = map_index, try_number
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        json.dumps(value)  # XCom values must be JSON-serializable
        self.xcom[key] = value


class FakeStateStore:
    """The task state store of Airflow 3.3 (``context["task_state_store"]``): per task instance, kept across
    its tries. Pass the same one to the contexts of several tries; ``fail=True`` makes every call raise."""

    def __init__(self, fail: bool = False) -> None:
        self.values: dict[str, Any] = {}
        self.fail = fail

    def get(self, key: str, default: Any = None) -> Any:
        if self.fail:
            raise RuntimeError("state store unavailable")
        return json.loads(json.dumps(self.values.get(key, default)))

    def set(self, key: str, value: Any, **_: Any) -> None:
        if self.fail:
            raise RuntimeError("state store unavailable")
        self.values[key] = json.loads(json.dumps(value))  # JSON in, JSON out, as the real store


def ctx(state: FakeStateStore | None = None, **kwargs: Any) -> dict[str, Any]:
    """A context with a fake task instance; with ``state``, also a task state store (Airflow 3.3+)."""
    context: dict[str, Any] = {"ti": FakeTI(**kwargs)}
    if state is not None:
        context["task_state_store"] = state
    return context


def prompts(n: int = 3, fail: int | None = None) -> list[dict]:
    """``n`` chat requests of one model; the one at index ``fail`` has a temperature the API refuses (above 2),
    so that request alone fails."""
    return [
        {
            "custom_id": f"p{i}",
            "body": {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"q{i}"}],
                **({"temperature": 3} if i == fail else {}),
            },
        }
        for i in range(n)
    ]


def make_batch(handle: Any, lines: int = 3, fail_first: bool = False) -> str:
    """Upload ``lines`` requests and create a batch with plain HTTP, independently of the hook under test; with
    ``fail_first``, the first request has a temperature the API refuses, so it alone fails."""
    http = requests.Session()
    azure = getattr(handle, "flavor", "openai") == "azure"
    if azure:
        http.headers["api-key"] = handle.api_key
    else:
        http.headers["Authorization"] = f"Bearer {handle.api_key}"
    endpoint = endpoint_of(handle)
    data = "".join(
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": endpoint,
                "body": {
                    "model": "gpt-4o-mini",
                    "messages": [],
                    **({"temperature": 3} if fail_first and i == 0 else {}),
                },
            }
        )
        + "\n"
        for i in range(lines)
    )
    file_id = http.post(
        f"{handle.base_url}/files", files={"file": ("a.jsonl", data)}, data={"purpose": "batch"}
    ).json()["id"]
    return http.post(
        f"{handle.base_url}/batches",
        json={"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h"},
    ).json()["id"]


async def events(trigger: BatchTrigger, timeout: float = 60) -> list:
    """Collect a trigger's events as the triggerer does: ``cleanup()`` follows however the run ends.

    The timeout is generous on purpose: it only stops a hung test, and a busy CI machine is slow."""

    async def collect() -> list:
        return [event async for event in trigger.run()]

    try:
        return await asyncio.wait_for(collect(), timeout)
    finally:
        await trigger.cleanup()


def run(trigger: BatchTrigger, timeout: float = 60) -> dict:
    """Run a trigger to its end and return the payload of its one event."""
    found = asyncio.run(events(trigger, timeout))
    assert len(found) == 1  # exactly one event, then the trigger ends
    return found[0].payload


def created(op: Any, context: dict[str, Any]) -> list[str]:
    """Run a deferrable create until its first wait and return the batch ids it pushed: the batches exist and
    nothing waits for them (the emulator's slow phases keep them where a test wants them)."""
    from airflow.sdk.exceptions import TaskDeferred

    op.deferrable = True
    with pytest.raises(TaskDeferred):
        op.execute(context)
    return list(context["ti"].xcom["batch_ids"])
