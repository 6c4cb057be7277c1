"""The pre-flight check and the split at parse speed: their time against decoding the same lines with msgspec.

In one process, on generated chat inputs (default: a 200,000-line input of about 58 MB for the split and a
50,000-line file of about 14.5 MB for ``check_input_file``), each measured ``--runs`` times (default 3):

- **raw read**: the file read line by line, nothing else (the machine's floor);
- **msgspec decode**: every line read and decoded with ``msgspec.json.Decoder().decode`` into Python objects
  (the yardstick: what parsing alone costs in this process);
- **split_input**: the provider's split with its pre-flight check (every rule: UTF-8, unique ``custom_id``
  across the whole input, method, url, body, one model, sizes, shards written and hashed);
- **check_input_file**: the one-file pre-flight check (every rule, and the file's SHA-256).

Each figure is the shortest of ``--repeats`` timings (default 3) within the run, the three measures of a
step taking turns, reported as seconds, MB/s (1 MB = 10^6 bytes) and, for the two steps, the ratio to the
msgspec decode of the same file in the same run; the goal is a ratio of at most 1.7.

With ``--memory``, the split of ``--memory-requests`` lines (default 1,000,000) also runs in a fresh
interpreter, after a msgspec decode of the same file, sampling its own ``VmRSS`` every 5 ms (its peak growth
over the RSS just before the call), then once more without the sampler, for its time.

    .venv/bin/python bench/preflight.py               # 200,000 and 50,000 lines, 3 runs
    .venv/bin/python bench/preflight.py --memory      # and the RSS of splitting 1,000,000 lines
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import msgspec

from airflow_provider_openai_batch.operators.batch import check_input_file
from airflow_provider_openai_batch.split import split_input

ENDPOINT = "/v1/chat/completions"
SYSTEM = "You are a careful assistant."


def write_input(path: Path, requests: int) -> int:
    """``requests`` chat lines of about 290 bytes each, as a real prompt file looks."""
    with open(path, "w", encoding="utf-8") as out:
        for i in range(requests):
            line = {
                "custom_id": f"request-{i:07d}",
                "method": "POST",
                "url": ENDPOINT,
                "body": {
                    "model": "gpt-4o-mini",
                    "messages": [
                        {"role": "system", "content": SYSTEM},
                        {
                            "role": "user",
                            "content": f"Summarise ticket {i} ({(i * 7919) % 100_000:05d}) for the report.",
                        },
                    ],
                    "max_tokens": 200,
                },
            }
            out.write(json.dumps(line) + "\n")
    return path.stat().st_size


def raw_read(path: Path) -> None:
    with open(path, "rb") as stream:
        for _ in stream:
            pass


def msgspec_decode(path: Path) -> None:
    decode = msgspec.json.Decoder().decode
    with open(path, "rb") as stream:
        for line in stream:
            decode(line)


MEMORY_CHILD = r"""
import json, sys, tempfile, threading, time
import msgspec
from airflow_provider_openai_batch.split import split_input

def rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))

decode = msgspec.json.Decoder().decode
started = time.perf_counter()
with open(sys.argv[1], "rb") as stream:
    for line in stream:
        decode(line)
decoded = time.perf_counter() - started
peak = [rss()]
done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.005)
before = rss()
thread = threading.Thread(target=sample, daemon=True)
thread.start()
with tempfile.TemporaryDirectory(prefix="preflight-memory-") as tmp:
    result = split_input([sys.argv[1]], "/v1/chat/completions", tmp)
done.set(); thread.join()
growth = max(peak[0], rss()) - before
# Timed again without the sampler, whose wake-ups every 5 ms take the GIL from the split's two threads.
with tempfile.TemporaryDirectory(prefix="preflight-memory-") as tmp:
    started = time.perf_counter()
    split_input([sys.argv[1]], "/v1/chat/completions", tmp)
    seconds = time.perf_counter() - started
print(json.dumps({"growth": growth, "seconds": seconds, "decoded": decoded, "shards": len(result.shards)}))
"""


def best(calls: list[Callable[[], object]], repeats: int) -> list[float]:
    """The shortest of ``repeats`` timings of each call, the calls taking turns so that what else the machine
    does at a moment weighs on them alike (other processes on a shared machine only add time)."""
    timings: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for call, times in zip(calls, timings, strict=True):
            gc.collect()
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
    return [min(times) for times in timings]


def split_into(path: Path, directory: Path) -> None:
    directory.mkdir(exist_ok=True)
    try:
        split_input([path], ENDPOINT, str(directory))
    finally:
        for shard in directory.iterdir():
            shard.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split-requests", type=int, default=200_000)
    parser.add_argument("--check-requests", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timings per figure in a run; the best is shown")
    parser.add_argument("--memory", action="store_true", help="also the RSS of a large split, in a fresh process")
    parser.add_argument("--memory-requests", type=int, default=1_000_000)
    args = parser.parse_args()
    print(
        "| run | step | lines | MB | raw read s | raw read MB/s | msgspec decode s | msgspec MB/s | step s |"
        " step MB/s | ratio to msgspec |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="preflight-bench-") as tmp:
        big, one, shards = Path(tmp) / "input.jsonl", Path(tmp) / "one.jsonl", Path(tmp) / "shards"
        steps: list[tuple[str, Path, int, int, Callable[[], object]]] = [
            (
                "split_input",
                big,
                write_input(big, args.split_requests),
                args.split_requests,
                lambda: split_into(big, shards),
            ),
            (
                "check_input_file",
                one,
                write_input(one, args.check_requests),
                args.check_requests,
                lambda: check_input_file(one, ENDPOINT),
            ),
        ]
        for run in range(1, args.runs + 1):
            for step, path, size, lines, call in steps:
                raw, decode, seconds = best(
                    [partial(raw_read, path), partial(msgspec_decode, path), call], args.repeats
                )
                mb = size / 1e6
                print(
                    f"| {run} | `{step}` | {lines:,} | {mb:.1f} | {raw:.3f} | {mb / raw:,.0f} | {decode:.3f} |"
                    f" {mb / decode:,.0f} | {seconds:.3f} | {mb / seconds:,.0f} | **{seconds / decode:.2f}** |"
                )
        if args.memory:
            path = Path(tmp) / "memory.jsonl"
            size = write_input(path, args.memory_requests)
            out = subprocess.run(
                [sys.executable, "-c", MEMORY_CHILD, str(path)],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parents[1],
                check=False,
            )
            if out.returncode != 0:
                raise SystemExit(out.stderr[-3000:])
            found = json.loads(out.stdout.strip().splitlines()[-1])
            mb = size / 1e6
            print()
            print(
                "| lines | MB | msgspec decode s | split s | split MB/s | ratio to msgspec | shards |"
                " peak RSS growth (MB) |"
            )
            print("|---|---|---|---|---|---|---|---|")
            print(
                f"| {args.memory_requests:,} | {mb:.0f} | {found['decoded']:.2f} | {found['seconds']:.2f} |"
                f" {mb / found['seconds']:,.0f} | {found['seconds'] / found['decoded']:.2f} | {found['shards']} |"
                f" {found['growth'] / 1e6:.1f} |"
            )


if __name__ == "__main__":
    main()
