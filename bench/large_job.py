"""A job of 1,000,000 requests (default) through ``CreateBatchOperator`` and the emulator, end to end.

Measures, on one machine:

- **split and upload time** of the operator's job path, whose shards are uploaded while the rest is cut,
  against the same split with nothing uploaded meanwhile followed by every upload one after the other (in a
  fresh interpreter each, same emulator), and as MB/s of input against the raw loopback speed of this machine
  (bytes pushed through a local TCP socket into a reader that discards them);
- **peak RSS growth** of the process that splits, uploads and creates (goal: at most 100 MB), sampled from
  ``/proc/self/status`` every 5 ms in a fresh interpreter, over its RSS just before ``execute``;
- **time until every shard is created** (the last create of ``execute`` with ``wait_for_completion=False``,
  which then waits until every batch passed ``validating`` before it returns);
- **the emulator's time** to run all the batches to ``completed`` (goal: a few minutes on 2 cores);
- **export rows/s** of the merged results (``OpenAIBatchHook.export_results`` over every shard, in input
  order, one file), with its own peak RSS growth.

The emulator runs as a separate process (its files live in its memory, not ours).

    .venv/bin/python bench/large_job.py --requests 1000000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from openai_batch_emulator.testing import run_emulator_process
from results_export import compare, print_table  # beside this script

from airflow_provider_openai_batch.testing import connection_json

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
def timed(name, real):
    def wrapper(*args, **kwargs):
        began = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            times[name] = time.perf_counter() - began
    return wrapper
real_create = runner.JobRunner._create
def timed_create(self, *args, **kwargs):
    made = real_create(self, *args, **kwargs)
    if all(s.last.batch_id for s in self.record.shards):  # the last shard's batch was just created
        times["created"] = time.perf_counter() - started
    return made
# split: cutting and checking (uploads already in flight); prepared: until every shard is uploaded.
split.split_input = timed("split", split.split_input)
prepare.prepare = timed("prepared", prepare.prepare)
runner.JobRunner._create = timed_create

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

# The reference: the same split with nothing uploaded meanwhile, then every shard uploaded one after the other.
SEPARATE = (
    CHILD_PRELUDE
    + r"""
import tempfile
from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
from airflow_provider_openai_batch.split import split_input
with OpenAIBatchHook() as hook, tempfile.TemporaryDirectory() as tmp:
    hook.list_batches(limit=1)
    began = time.perf_counter()
    result = split_input([%(path)r], "/v1/chat/completions", tmp, max_requests_per_batch=%(per_batch)d)
    cut = time.perf_counter() - began
    began = time.perf_counter()
    for shard in result.shards:
        hook.upload_file(shard.path, purpose="batch")
    uploaded = time.perf_counter() - began
print(json.dumps({"split": cut, "upload": uploaded}))
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


class ThrottledProxy:
    """A loopback TCP proxy to ``target`` that passes at most ``mb_per_s`` MB/s towards it (answers go back at
    full speed): uploads over it take the time they take over a real network of that speed, on one machine."""

    def __init__(self, target: tuple[str, int], mb_per_s: float) -> None:
        self.target, self.rate = target, mb_per_s * 1024 * 1024
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self.lock = threading.Lock()
        self.next_free = time.monotonic()  # one link shared by every connection, as a network is
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, throttled: bool) -> None:
        try:
            while data := source.recv(64 * 1024):
                if throttled:
                    with self.lock:
                        start = max(self.next_free, time.monotonic())
                        self.next_free = start + len(data) / self.rate
                    time.sleep(max(0.0, self.next_free - time.monotonic()))
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()


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
    parser.add_argument(
        "--upload-mb-per-s",
        type=float,
        default=50.0,
        help="the speed of the network the uploads cross (a throttling proxy in front of the emulator); 0: loopback",
    )
    parser.add_argument("--formats", nargs="+", default=["jsonl", "parquet"])
    parser.add_argument("--repeat", type=int, default=3, help="rounds of naive join + exports (0: none)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="large-job-bench-") as tmp:
        path = Path(tmp) / "input.jsonl"
        size = write_input(path, args.requests)
        mb = size / (1024 * 1024)
        raw = loopback_mb_per_s()
        with run_emulator_process(phase_seconds=args.phase_seconds) as emulator:
            conn = connection_json(emulator)
            proxy = None
            if args.upload_mb_per_s:
                host, port = urlsplit(emulator.base_url).hostname, urlsplit(emulator.base_url).port
                proxy = ThrottledProxy((str(host), int(port or 80)), args.upload_mb_per_s)
                conn = conn.replace(f"{host}:{port}", f"127.0.0.1:{proxy.port}")
            separate = child(SEPARATE % {"conn": conn, "path": str(path), "per_batch": args.per_batch})
            emulator.reset()
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
            if proxy is not None:
                proxy.close()
            # The export reads the emulator directly: its figures are about the join, not the network.
            compared = compare(emulator, ids, Path(tmp), args.formats, args.repeat) if args.repeat else []
    print(
        "| requests | input MB | batches | split alone s | upload alone s | split, then upload s |"
        " split while uploading s | every shard uploaded s | split+upload MB/s | raw loopback MB/s |"
        " every shard created (s) | peak RSS growth (MB) | emulator run (s) | statuses |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.requests:,} | {mb:.0f} | {len(ids)} | {separate['split']:.1f} | {separate['upload']:.1f} |"
        f" {separate['split'] + separate['upload']:.1f} | {submit['split']:.1f} | {submit['prepared']:.1f} |"
        f" {mb / submit['prepared']:.0f} | {raw:,.0f} | {submit['seconds']:.1f} |"
        f" {submit['growth'] / 1e6:.1f} | {run_seconds:.0f} | {', '.join(statuses)} |"
    )
    print(f"network of the uploads: {args.upload_mb_per_s or 'loopback'} MB/s")
    print(f"emulator: batches_created={stats['batches_created']}, requests_completed={stats['requests_completed']:,}\n")
    print_table(compared)


if __name__ == "__main__":
    main()
