"""A job of any size: many requests -> split into batches -> one wait -> one results file in input order.

``OPENAI_BATCH_EXAMPLE_REQUESTS`` requests (default 120,000) are written to one JSONL file, which
``CreateBatchOperator`` splits into batches of at most ``OPENAI_BATCH_MAX_REQUESTS_PER_BATCH`` requests
(default 50,000, the Batch API's limit: 3 batches for 120,000), submits and waits for in one deferral. The
merged results, one row per request in input order, land in ``OPENAI_BATCH_RESULTS_URI`` (default
``$AIRFLOW_HOME/results/openai_batch_large_job.jsonl``; any object storage URI works), and the manifest is
printed. Set ``OPENAI_BATCH_POLL_INTERVAL`` (seconds, default 60) to poll faster, e.g. against the emulator.

Large jobs are the ones that meet rate limits, server errors and expiry, so each batch gets
``OPENAI_BATCH_RESUBMIT_UNFINISHED`` (default 1) rounds in which only its requests that did not finish are sent
again; the export, given the last batches, finds every round and writes each request as it finally ended.

The input file is written under ``$AIRFLOW_HOME`` on the worker that builds it, and read by the worker that
submits it: fine for ``airflow dags test`` and one machine. With several workers, write it to object storage
(``ObjectStoragePath("s3://...")``) instead: ``input_file`` takes one as well.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from airflow.sdk import dag, task

from airflow_provider_openai_batch.operators.batch import CreateBatchOperator
from airflow_provider_openai_batch.operators.results import BatchResultsOperator

POLL = float(os.environ.get("OPENAI_BATCH_POLL_INTERVAL", "60"))
MODEL = os.environ.get("OPENAI_BATCH_MODEL", "gpt-4o-mini")
REQUESTS = int(os.environ.get("OPENAI_BATCH_EXAMPLE_REQUESTS", "120000"))
MAX_REQUESTS_PER_BATCH = int(os.environ.get("OPENAI_BATCH_MAX_REQUESTS_PER_BATCH", "50000"))
RESUBMIT_UNFINISHED = int(os.environ.get("OPENAI_BATCH_RESUBMIT_UNFINISHED", "1"))
HOME = Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser()
RESULTS_URI = os.environ.get("OPENAI_BATCH_RESULTS_URI") or (HOME / "results" / "openai_batch_large_job.jsonl").as_uri()


@dag(
    dag_id="openai_batch_large_job",
    start_date=datetime(2025, 1, 1),
    schedule=None,
    catchup=False,
    tags=["openai", "batch", "example"],
)
def openai_batch_large_job() -> None:
    @task
    def build_input() -> str:
        """Write the requests as JSONL, streaming: memory does not grow with their number."""
        import json

        path = HOME / "inputs" / "openai_batch_large_job.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as out:
            for i in range(REQUESTS):
                line = {
                    "custom_id": f"request-{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {"model": MODEL, "messages": [{"role": "user", "content": f"Say hello to number {i}."}]},
                }
                out.write(json.dumps(line) + "\n")
        print(f"Wrote {REQUESTS} requests to {path}")
        return str(path)

    run_job = CreateBatchOperator(
        task_id="run_job",
        endpoint="/v1/chat/completions",
        input_file=build_input(),
        max_requests_per_batch=MAX_REQUESTS_PER_BATCH,
        resubmit_unfinished=RESUBMIT_UNFINISHED,
        wait_for_completion=True,
        deferrable=True,
        poll_interval=POLL,
        metadata={"purpose": "large-job-example"},
    )

    export = BatchResultsOperator(task_id="export_results", batch_id=run_job.output, destination=RESULTS_URI)

    @task
    def print_manifest(manifest: dict) -> None:
        print("MANIFEST", manifest)

    print_manifest(export.output)


openai_batch_large_job()
