"""A job of 1,000,000 requests (default) through ``CreateBatchOperator`` and the emulator, end to end.

Measures, on one machine:

- **split and upload throughput** (MB/s of input) of the operator's job path, against the raw loopback speed
  of this machine (bytes pushed through a local TCP socket into a reader that discards them);
- **peak RSS growth** of the process that splits, uploads and creates (goal: at most 100 MB), sampled from
  ``/proc/self/status`` every 5 ms in a fresh interpreter, over its RSS just before ``execute``;
- **time until every shard is created** (the last create of ``execute`` with ``wait_for_completion=False``,
  which then waits until every batch passed ``validating`` before it returns);
- **the emulator's time** to run all the batches to ``completed`` (goal: a few minutes on 2 cores);
- **export rows/s** of the merged results (``OpenAIBatchHook.export_results`` over every shard, in input
  order, one file; JSONL and Parquet), with its own peak RSS growth, each beside a naive in-memory join of the
  same files in the same run (``results_export.compare``: ``--repeat`` rounds, fresh interpreters).

The emulator runs as a separate process (its files live in its memory, not ours).

    .venv/bin/python bench/large_job.py --requests 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from results_export import compare, print_table  # beside this script

from airflow_provider_openai_batch.emulator.testing import run_emulator_process

CHILD_PRELUDE = r"""
import json, os, sys, threading, time
os.environ["AIRFLOW_CONN_OPENAI_DEFAULT"] = %(conn)r

def rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))

class Peak:
    def __init__(self):
        self.baseline = self.peak = rss()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
    def sample(self):
        while not self.done.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(0.005)
    def stop(self):
        self.done.set(); self.thread.join()
        return max(self.peak, rss()) - self.baseline
"""

SUBMIT = (
    CHILD_PRELUDE
    + r"""
import airflow_provider_openai_batch.split as split
import airflow_provider_openai_batch.jobs.prepare as prepare
import airflow_provider_openai_batch.jobs.runner as runner
from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
from airflow_provider_openai_batch.operators.batch import CreateBatchOperator
from tests.helpers import ctx

times = {}
real_split, real_upload = split.split_input, prepare._upload
def timed_split(*args, **kwargs):
    started = time.perf_counter()
    try:
        return real_split(*args, **kwargs)
    finally:
        times["split"] = time.perf_counter() - started
def timed_upload(*args, **kwargs):
    started = time.perf_counter()
    try:
        return real_upload(*args, **kwargs)
    finally:
        times["upload"] = time.perf_counter() - started
real_create = runner.JobRunner._create
def timed_create(self, *args, **kwargs):
    made = real_create(self, *args, **kwargs)
    if all(s.last.batch_id for s in self.record.shards):  # the last shard's batch was just created
        times["created"] = time.perf_counter() - started
    return made
split.split_input, prepare._upload, runner.JobRunner._create = timed_split, timed_upload, timed_create

with OpenAIBatchHook() as hook:
    hook.list_batches(limit=1)  # connection read and HTTP code loaded before the baseline
op = CreateBatchOperator(task_id="create", input_file=%(path)r, max_requests_per_batch=%(per_batch)d,
                         wait_for_completion=False, deferrable=False, poll_interval=0.2)
peak = Peak()
started = time.perf_counter()
ids = op.execute(ctx())  # returns once every batch passed validation (no token-limit refusal can come then)
returned = time.perf_counter() - started
print(json.dumps({"ids": ids, "seconds": times["created"], "returned": returned, "growth": peak.stop(), **times}))
"""
)


def write_input(path: Path, requests: int) -> int:
    with open(path, "w", encoding="utf-8") as out:
        for i in range(requests):
            line = {
                "custom_id": f"request-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Say hello to {i}."}]},
            }
            out.write(json.dumps(line) + "\n")
    return path.stat().st_size


def loopback_mb_per_s(total: int = 512 * 1024 * 1024) -> float:
    """Bytes through a local TCP socket into a reader that discards them: this machine's raw loopback speed."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def sink() -> None:
        conn, _ = server.accept()
        while conn.recv(1 << 20):
            pass
        conn.close()

    thread = threading.Thread(target=sink, daemon=True)
    thread.start()
    chunk = b"x" * (1 << 20)
    client = socket.create_connection(server.getsockname())
    started = time.perf_counter()
    for _ in range(total // len(chunk)):
        client.sendall(chunk)
    client.close()
    thread.join()
    server.close()
    return total / (1024 * 1024) / (time.perf_counter() - started)


def child(code: str) -> dict:
    root = Path(__file__).parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=False)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--per-batch", type=int, default=50_000)
    parser.add_argument("--phase-seconds", type=float, default=2.0)
    parser.add_argument("--formats", nargs="+", default=["jsonl", "parquet"])
    parser.add_argument("--repeat", type=int, default=3, help="rounds of naive join + exports (0: none)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="large-job-bench-") as tmp:
        path = Path(tmp) / "input.jsonl"
        size = write_input(path, args.requests)
        mb = size / (1024 * 1024)
        raw = loopback_mb_per_s()
        with run_emulator_process(phase_seconds=args.phase_seconds) as emulator:
            conn = emulator.connection_json()
            submit = child(SUBMIT % {"conn": conn, "path": str(path), "per_batch": args.per_batch})
            ids = submit["ids"]
            started = time.perf_counter()
            os.environ["AIRFLOW_CONN_OPENAI_DEFAULT"] = conn
            from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook

            with OpenAIBatchHook() as hook:
                finals = [hook.wait_for_batch(batch_id, 1.0, 3600) for batch_id in ids]
            run_seconds = time.perf_counter() - started + args.phase_seconds  # the wait began after the creates
            statuses = sorted({b.status for b in finals})
            stats = emulator.stats()
            compared = compare(emulator, ids, Path(tmp), args.formats, args.repeat) if args.repeat else []
    print(
        "| requests | input MB | batches | split s | upload s | split+upload MB/s | raw loopback MB/s |"
        " every shard created (s) | peak RSS growth (MB) | emulator run (s) | statuses |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.requests:,} | {mb:.0f} | {len(ids)} | {submit['split']:.1f} | {submit['upload']:.1f} |"
        f" {mb / (submit['split'] + submit['upload']):.0f} | {raw:,.0f} | {submit['seconds']:.1f} |"
        f" {submit['growth'] / 1e6:.1f} | {run_seconds:.0f} | {', '.join(statuses)} |"
    )
    print(f"emulator: batches_created={stats['batches_created']}, requests_completed={stats['requests_completed']:,}\n")
    print_table(compared)


if __name__ == "__main__":
    main()
