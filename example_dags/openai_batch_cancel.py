"""Create a batch without waiting, then cancel it and wait until it is cancelled (deferred)."""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import dag

from airflow_provider_openai_batch.operators.batch import CancelBatchOperator, CreateBatchOperator

POLL = float(os.environ.get("OPENAI_BATCH_POLL_INTERVAL", "60"))


@dag(
    dag_id="openai_batch_cancel",
    start_date=datetime(2025, 1, 1),
    schedule=None,
    catchup=False,
    tags=["openai", "batch", "example"],
)
def openai_batch_cancel() -> None:
    create = CreateBatchOperator(
        task_id="create_batch",
        endpoint="/v1/embeddings",
        requests=[{"model": "text-embedding-3-small", "input": f"document {i}"} for i in range(20)],
    )
    CancelBatchOperator(
        task_id="cancel_batch",
        batch_id=create.output,
        wait_for_completion=True,
        deferrable=True,
        poll_interval=POLL,
    )


openai_batch_cancel()
