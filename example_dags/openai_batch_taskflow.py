"""Prompts in, typed rows out: ``@task.openai_batch`` runs the prompts as one batch job (wait in the triggerer,
export) and lands one validated row per prompt; a downstream task reads them back.

The rows land in ``OPENAI_BATCH_RESULTS_URI`` (default ``$AIRFLOW_HOME/results/openai_batch_taskflow.jsonl``;
any object storage URI works, and a ``.parquet`` name writes Parquet). ``OPENAI_BATCH_POLL_INTERVAL`` (seconds,
default 60) polls faster, e.g. against the local emulator.
"""

from __future__ import annotations

import os
from pathlib import Path

from airflow.sdk import dag, task
from pydantic import BaseModel

from airflow_provider_openai_batch.results import read_rows

HOME = Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser()
RESULTS = os.environ.get("OPENAI_BATCH_RESULTS_URI") or (HOME / "results" / "openai_batch_taskflow.jsonl").as_uri()
POLL = float(os.environ.get("OPENAI_BATCH_POLL_INTERVAL", "60"))


class Review(BaseModel):
    sentiment: str
    score: float
    summary: str


@dag(schedule=None, tags=["openai", "batch", "example"])
def openai_batch_taskflow() -> None:
    @task.openai_batch(model="gpt-4o-mini", output_type=Review, destination=RESULTS, poll_interval=POLL)
    def review(texts: list[str]) -> list[str]:
        return [f"Review this customer message: {text}" for text in texts]

    @task
    def show(manifest: dict) -> None:
        print(f"MANIFEST {manifest}")
        for row in list(read_rows(manifest))[:2]:
            answer = Review(**row["output"]) if row["status"] == "succeeded" else row["error_message"]
            print(f"ROW {row['custom_id']} {row['status']}: {answer!r}")

    show(review(["Arrived broken, support never answered.", "Great value, would buy again!", "It is fine."]))


openai_batch_taskflow()
