"""120,000 prompts (default) from a generator through ``@task.openai_batch`` and the emulator, end to end.

The decorated task is built in a DAG as a user writes it (a Pydantic ``output_type``, a JSONL destination) and
run in a fresh interpreter that samples its own ``VmRSS`` every 5 ms: the generator is consumed into the input
file line by line, split into batches of at most 50,000, uploaded, created, waited for (polling in the worker,
so the whole task is one process to measure), and the 120,000 answers are parsed, validated and exported in
input order. Measures, per run:

- **peak RSS growth** over the RSS just before ``execute`` (goal: under 100 MB, whatever the number of prompts);
- the task's **wall time**, with the emulator's own run of the batches in it;
- the manifest's rows and counts, and the number of batches.

The emulator runs as a separate process (its files live in its memory, not ours).

    .venv/bin/python bench/taskflow.py --prompts 120000 --runs 3
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from large_job import CHILD_PRELUDE, child
from openai_batch_emulator.testing import run_emulator_process

from airflow_provider_openai_batch.testing import connection_json

TASK = (
    CHILD_PRELUDE
    + r"""
from airflow.sdk import DAG, task
from pydantic import BaseModel

from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
import airflow_provider_openai_batch.decorators.openai_batch, airflow_provider_openai_batch.results.export
from tests.helpers import FakeStateStore, ctx


class Answer(BaseModel):
    sentiment: str
    score: float
    summary: str


def prompts():
    for i in range(%(prompts)d):
        yield f"Classify the sentiment of customer message number {i}: the parcel arrived on day {i %% 7}."


with DAG("bench_taskflow", schedule=None):
    op = task.openai_batch(
        task_id="answers", model="gpt-4o-mini", output_type=Answer, destination=%(destination)r,
        deferrable=False, poll_interval=0.5,
    )(prompts)().operator
with OpenAIBatchHook() as hook:
    hook.list_batches(limit=1)  # connection read and HTTP code loaded before the baseline
peak = Peak()
started = time.perf_counter()
manifest = op.execute(ctx(FakeStateStore()))
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "growth": peak.stop(), "rows": manifest["rows"],
                  "counts": manifest["counts"], "batches": len(manifest["batch_ids"])}))
"""
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=120_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--phase-seconds", type=float, default=0.5)
    args = parser.parse_args()
    print("| prompts | batches | rows | succeeded | invalid_output | task wall time (s) | peak RSS growth (MB) |")
    print("|---|---|---|---|---|---|---|")
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="taskflow-bench-") as tmp:
            destination = str(Path(tmp) / "answers.jsonl")
            with run_emulator_process(phase_seconds=args.phase_seconds) as emulator:
                code = TASK % {"conn": connection_json(emulator), "prompts": args.prompts, "destination": destination}
                result = child(code)
        counts = result["counts"]
        print(
            f"| {args.prompts:,} | {result['batches']} | {result['rows']:,} | {counts['succeeded']:,} |"
            f" {counts['invalid_output']:,} | {result['seconds']:.0f} | {result['growth'] / 1e6:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
