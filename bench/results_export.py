"""Memory and speed of ``OpenAIBatchHook.export_results`` on a large batch (default 50,000 requests with
answers padded to 4 KB each).

The emulator runs as a separate process (its files live in its memory, not ours), with each chat answer
padded by ``--answer-bytes`` so the output file is large. The batch is created once; each export then runs
in a fresh interpreter that samples its own ``VmRSS`` from /proc/self/status every 5 ms (``ru_maxrss`` would
include whatever the interpreter did before the export). Growth is the peak over the RSS just before the
export started.

    .venv/bin/python bench/results_export.py --requests 50000 --answer-bytes 4096
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from airflow_provider_openai_batch.emulator.testing import EmulatorProcess

# Run in the emulator process: pad every chat answer, then start the emulator as its command line says.
PADDED_EMULATOR = r"""
import sys
from airflow_provider_openai_batch.emulator import results
real = results._fake_body
def padded(endpoint, model, body, seed):
    response, tokens = real(endpoint, model, body, seed)
    for choice in response.get("choices", []):
        choice["message"]["content"] += " " + "x" * %(answer_bytes)d
    return response, tokens
results._fake_body = padded
from airflow_provider_openai_batch.emulator.__main__ import main
sys.exit(main(sys.argv[1:]))
"""

CHILD = r"""
import json, os, sys, threading, time
os.environ["AIRFLOW_CONN_OPENAI_DEFAULT"] = %(conn)r
from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
import airflow_provider_openai_batch.results.export
try:
    import pyarrow.parquet
except ImportError:
    pass

def rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))

hook = OpenAIBatchHook()
hook.retrieve_batch(%(batch_id)r)  # connection read and session open before the baseline
baseline = peak = rss()
done = threading.Event()
def sample():
    global peak
    while not done.is_set():
        peak = max(peak, rss())
        time.sleep(0.005)
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
started = time.perf_counter()
manifest = hook.export_results(%(batch_id)r, %(destination)r, format=%(format)r)
seconds = time.perf_counter() - started
done.set(); sampler.join()
peak = max(peak, rss())
print(json.dumps({"rows": manifest["rows"], "seconds": seconds, "baseline": baseline, "peak": peak,
                  "counts": manifest["counts"]}))
"""


class PaddedEmulator(EmulatorProcess):
    """The emulator process with its chat answers padded to ``answer_bytes``."""

    def __init__(self, answer_bytes: int, **flags: object) -> None:
        super().__init__(**flags)  # type: ignore[arg-type]
        self.answer_bytes = answer_bytes

    def command(self) -> list[str]:
        # Replace "-m airflow_provider_openai_batch.emulator" with the padding wrapper; keep the flags.
        return [sys.executable, "-c", PADDED_EMULATOR % {"answer_bytes": self.answer_bytes}, *super().command()[3:]]


def make_batch(emulator: EmulatorProcess, requests: int, workdir: Path) -> str:
    import os

    os.environ["AIRFLOW_CONN_OPENAI_DEFAULT"] = emulator.connection_json({"timeout": 300})
    from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook

    source = workdir / "input.jsonl"
    with open(source, "w", encoding="utf-8") as out:
        for i in range(requests):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Question number {i}?"}]}
            out.write(
                json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
            )
            out.write("\n")
    with OpenAIBatchHook() as hook:
        file = hook.upload_file(source)
        batch = hook.create_batch(file.id, "/v1/chat/completions")
        batch = hook.wait_for_batch(batch.id, poll_interval=1, timeout=1800)
        output = hook.retrieve_file(batch.output_file_id) if batch.output_file_id else None
    print(f"batch {batch.id}: {batch.status}, output file {output.bytes if output else 0:,} bytes", file=sys.stderr)
    return batch.id


def run_export(emulator: EmulatorProcess, batch_id: str, destination: Path, fmt: str) -> dict:
    code = CHILD % {
        "conn": emulator.connection_json({"timeout": 300}),
        "batch_id": batch_id,
        "destination": str(destination),
        "format": fmt,
    }
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--answer-bytes", type=int, default=4096)
    parser.add_argument("--formats", nargs="+", default=["jsonl", "parquet"])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-results-") as tmp:
        # What run_emulator_process starts, with padded answers (--answer-bytes 0: the plain emulator).
        emulator = PaddedEmulator(args.answer_bytes, phase_seconds=1).start()
        try:
            batch_id = make_batch(emulator, args.requests, Path(tmp))
            print(f"\n{args.requests:,} requests, answers padded by {args.answer_bytes:,} bytes\n")
            print("| format | rows | seconds | rows/s | RSS before (MB) | peak RSS growth (MB) | file (MB) |")
            print("|---|---|---|---|---|---|---|")
            for fmt in args.formats:
                for _ in range(args.repeat):
                    destination = Path(tmp) / f"out.{fmt}"
                    r = run_export(emulator, batch_id, destination, fmt)
                    size = destination.stat().st_size / 1e6
                    growth = (r["peak"] - r["baseline"]) / 1e6
                    print(
                        f"| {fmt} | {r['rows']:,} | {r['seconds']:.1f} | {r['rows'] / r['seconds']:,.0f} | "
                        f"{r['baseline'] / 1e6:.0f} | {growth:.1f} | {size:.0f} |",
                        flush=True,
                    )
        finally:
            emulator.stop()


if __name__ == "__main__":
    main()
