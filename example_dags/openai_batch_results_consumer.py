"""Scheduled on the results of ``openai_batch_example``: runs each time that DAG lands a results file.

The producer's ``BatchResultsOperator`` declares its destination as an Asset and emits an event carrying the
counts; this DAG reads them from the event and the rows from the file.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from airflow.sdk import Asset, dag, task

# The same URI as openai_batch_example's RESULTS_URI: an Asset is matched by its URI.
RESULTS = Asset(
    os.environ.get("OPENAI_BATCH_RESULTS_URI")
    or (
        Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser() / "results" / "openai_batch_example.jsonl"
    ).as_uri()
)


@dag(
    dag_id="openai_batch_results_consumer",
    start_date=datetime(2025, 1, 1),
    schedule=[RESULTS],
    catchup=False,
    tags=["openai", "batch", "example"],
)
def openai_batch_results_consumer() -> None:
    @task(inlets=[RESULTS])
    def read_results(*, inlet_events: dict) -> dict:
        import json

        from airflow.sdk import ObjectStoragePath

        events = inlet_events[RESULTS]
        counts = events[-1].extra.get("counts", {}) if events else {}
        print(f"Results ready: {counts}")
        answered = 0
        with ObjectStoragePath(RESULTS.uri).open("r") as rows:
            for line in rows:
                row = json.loads(line)
                answered += row["status"] == "succeeded"
                print(f"{row['index']} {row['custom_id']} {row['status']}: {(row['output_text'] or '')[:80]}")
        return {"counts": counts, "answered": answered}

    read_results()


openai_batch_results_consumer()
