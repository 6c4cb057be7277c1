"""Prompts -> one OpenAI batch -> wait without a worker slot -> the results as a file, one row per prompt.

The results land in ``OPENAI_BATCH_RESULTS_URI`` (default ``$AIRFLOW_HOME/results/openai_batch_example.jsonl``;
any object storage URI works), declared as an Asset: ``openai_batch_results_consumer`` is scheduled on it.
Set ``OPENAI_BATCH_POLL_INTERVAL`` (seconds, default 60) to poll faster, e.g. against the local emulator.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from airflow.sdk import dag, task

from airflow_provider_openai_batch.operators.batch import CreateBatchOperator
from airflow_provider_openai_batch.operators.results import BatchResultsOperator
from airflow_provider_openai_batch.sensors.batch import BatchSensor

POLL = float(os.environ.get("OPENAI_BATCH_POLL_INTERVAL", "60"))
MODEL = os.environ.get("OPENAI_BATCH_MODEL", "gpt-4o-mini")
#: The consumer DAG computes the same URI: the Asset that links the two is this string.
RESULTS_URI = (
    os.environ.get("OPENAI_BATCH_RESULTS_URI")
    or (
        Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser() / "results" / "openai_batch_example.jsonl"
    ).as_uri()
)
PROMPTS = [
    "Summarise the plot of Hamlet in one sentence.",
    "Give three names for a data pipeline company.",
    "What is the capital of Australia?",
    "Explain idempotency to a new engineer in two sentences.",
    "Translate 'good morning' into French, Spanish and German.",
]


@dag(
    dag_id="openai_batch_example",
    start_date=datetime(2025, 1, 1),
    schedule=None,
    catchup=False,
    tags=["openai", "batch", "example"],
)
def openai_batch_example() -> None:
    @task
    def build_requests() -> list[dict]:
        return [
            {"custom_id": f"prompt-{i}", "body": {"model": MODEL, "messages": [{"role": "user", "content": p}]}}
            for i, p in enumerate(PROMPTS, start=1)
        ]

    create = CreateBatchOperator(
        task_id="create_batch",
        endpoint="/v1/chat/completions",
        requests=build_requests(),
        metadata={"purpose": "example"},
    )
    wait = BatchSensor(
        task_id="wait_for_batch",
        batch_id=create.output,
        poll_interval=POLL,
        timeout=25 * 3600,
    )

    export = BatchResultsOperator(task_id="export_results", batch_id=create.output, destination=RESULTS_URI)

    @task
    def summarise(batch: dict, manifest: dict) -> dict:
        from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook

        results = OpenAIBatchHook().get_results(batch["id"])
        for custom_id in sorted(results):
            record = results[custom_id]
            if record.ok:
                answer = record.body["choices"][0]["message"]["content"]  # type: ignore[index]
                print(f"{custom_id}: {answer[:100]}")
            else:
                print(f"{custom_id}: FAILED {record.error_message}")
        counts = batch["request_counts"]
        summary = {
            "batch_id": batch["id"],
            "status": batch["status"],
            "completed": counts["completed"],
            "failed": counts["failed"],
            "total": counts["total"],
            "results": len(results),
        }
        print(f"SUMMARY {summary}")
        print(f"MANIFEST {manifest}")
        return summary

    wait >> export
    summarise(wait.output, export.output)


openai_batch_example()
