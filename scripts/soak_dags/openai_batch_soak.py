"""The soak DAG of ``make soak`` (scripts/soak.py): N mapped batch tasks, each creating a batch, waiting for it
deferred in a triggerer and reading its results. Not an example: it records each resume for the soak's checks.

Params: ``tasks`` (how many mapped tasks), ``questions`` (requests per batch). Every task retries (a worker
killed under it, a database restart), so the soak can check that a retry re-attaches instead of creating a
second batch.
"""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, task

from airflow_provider_openai_batch.operators.batch import CreateBatchOperator

POLL = float(os.environ.get("OPENAI_BATCH_POLL_INTERVAL", "5"))
SOAK_DIR = os.environ.get("OPENAI_BATCH_SOAK_DIR", "/tmp")
RETRIES = {"retries": 4, "retry_delay": timedelta(seconds=3)}


def question(task_index: int, number: int) -> str:
    return f"soak task {task_index} question {number}"


def record(event: str, ti: Any, **extra: Any) -> None:
    """Append one line to ``events.jsonl`` (one short write with O_APPEND: lines of concurrent tasks never mix)."""
    line = {"event": event, "map_index": ti.map_index, "try_number": ti.try_number, "at": time.time()}
    line.update(extra, host=socket.gethostname(), pid=os.getpid())
    with open(os.path.join(SOAK_DIR, "events.jsonl"), "a") as out:
        out.write(json.dumps(line) + "\n")


class SoakCreateBatchOperator(CreateBatchOperator):
    """CreateBatchOperator that records each deferral and each resume in ``events.jsonl``, so the soak can check
    that every deferral of a task's last try resumed exactly once (a retry that re-attaches to a batch that has
    already ended finishes without deferring)."""

    def defer(self, *args: Any, **kwargs: Any) -> Any:
        ti = getattr(self, "_running_ti", None)
        if ti is not None:
            record("defer", ti, batch_id=getattr(self, "batch_id", None))
        return super().defer(*args, **kwargs)

    def execute_complete(self, context: Any, event: dict[str, Any], **kwargs: Any) -> str:
        record("resume", context["ti"], batch_id=event.get("batch_id"))
        return super().execute_complete(context, event, **kwargs)


@dag(
    dag_id="openai_batch_soak",
    start_date=datetime(2025, 1, 1),
    schedule=None,
    catchup=False,
    max_active_tasks=64,
    params={"tasks": Param(200, type="integer", minimum=1), "questions": Param(2, type="integer", minimum=1)},
    tags=["openai", "batch", "soak"],
)
def openai_batch_soak() -> None:
    @task(**RETRIES)
    def groups(params: dict[str, Any] | None = None) -> list[list[dict[str, Any]]]:
        assert params is not None
        return [
            [
                {
                    "custom_id": f"t{i}-q{j}",
                    "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question(i, j)}]},
                }
                for j in range(params["questions"])
            ]
            for i in range(params["tasks"])
        ]

    create = SoakCreateBatchOperator.partial(
        task_id="create",
        endpoint="/v1/chat/completions",
        wait_for_completion=True,
        deferrable=True,
        poll_interval=POLL,
        **RETRIES,
    ).expand(requests=groups())

    @task(**RETRIES)
    def results(batch_id: str) -> dict[str, Any]:
        from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook

        with OpenAIBatchHook() as hook:
            found = hook.get_results(batch_id)
        answers = {
            custom_id: record.body["choices"][0]["message"]["content"] if record.ok else None  # type: ignore[index]
            for custom_id, record in sorted(found.items())
        }
        return {"batch_id": batch_id, "answers": answers}

    results.expand(batch_id=create.output)


openai_batch_soak()
