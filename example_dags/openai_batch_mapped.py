"""One batch per input group with dynamic task mapping; each mapped create waits in the triggerer."""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import dag, task

from airflow_provider_openai_batch.operators.batch import CreateBatchOperator

POLL = float(os.environ.get("OPENAI_BATCH_POLL_INTERVAL", "60"))
MODEL = os.environ.get("OPENAI_BATCH_MODEL", "gpt-4o-mini")


@dag(
    dag_id="openai_batch_mapped",
    start_date=datetime(2025, 1, 1),
    schedule=None,
    catchup=False,
    tags=["openai", "batch", "example"],
)
def openai_batch_mapped() -> None:
    @task
    def groups() -> list[list[dict]]:
        topics = {"fruit": ["apple", "pear"], "cities": ["Oslo", "Lima", "Pune"], "tools": ["saw"]}
        return [
            [
                {
                    "custom_id": f"{name}-{item}",
                    "body": {"model": MODEL, "messages": [{"role": "user", "content": f"One fact about {item}."}]},
                }
                for item in items
            ]
            for name, items in topics.items()
        ]

    CreateBatchOperator.partial(
        task_id="create_batch",
        endpoint="/v1/chat/completions",
        wait_for_completion=True,
        deferrable=True,
        poll_interval=POLL,
    ).expand(requests=groups())


openai_batch_mapped()
