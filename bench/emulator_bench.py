"""Emulator scale on this machine: status requests per second, 10,000 batches held at once, and the time it
takes to judge a full-size (50,000-request) input file against the contract.

The emulator runs as its own process (as in `make demo`); the load comes from this process with an
asyncio + aiohttp client keeping --concurrency requests in flight.

    .venv/bin/python bench/emulator_bench.py --seconds 10 --batches 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

import aiohttp
import requests
from openai_batch_emulator.testing import EmulatorProcess, run_emulator_process

HEADERS = {"Authorization": "Bearer bench-key"}


async def load(url: str, seconds: float, concurrency: int) -> tuple[int, list[float]]:
    done = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(headers=HEADERS, connector=aiohttp.TCPConnector(limit=concurrency)) as http:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                async with http.get(url) as response:
                    await response.read()
                    assert response.status == 200
                latencies.append(time.perf_counter() - started)
                done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, latencies


def validation_seconds(http: requests.Session, emulator: EmulatorProcess, lines: int) -> float:
    """From create to the first answer past ``validating`` for a file of ``lines`` requests (the emulator
    judges every line against the spec's line schema, once per file and endpoint)."""
    body = b"".join(
        json.dumps(
            {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}
        ).encode()
        + b"\n"
        for i in range(lines)
    )
    file_id = http.post(
        f"{emulator.base_url}/files", files={"file": ("big.jsonl", body)}, data={"purpose": "batch"}
    ).json()["id"]
    emulator.configure(phase_seconds=0.01)
    create = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    started = time.perf_counter()
    batch = http.post(f"{emulator.base_url}/batches", json=create).json()
    while batch["status"] == "validating":
        batch = http.get(f"{emulator.base_url}/batches/{batch['id']}").json()
    assert batch["status"] == "in_progress", batch
    return time.perf_counter() - started


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--batches", type=int, default=10_000)
    parser.add_argument("--lines", type=int, default=50_000, help="requests in the file whose validation is timed")
    args = parser.parse_args()
    with run_emulator_process(phase_seconds=3600) as emulator:
        http = requests.Session()
        http.headers.update(HEADERS)
        line = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}) + "\n"
        file_id = http.post(
            f"{emulator.base_url}/files", files={"file": ("a.jsonl", line)}, data={"purpose": "batch"}
        ).json()["id"]
        create = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        batch_id = http.post(f"{emulator.base_url}/batches", json=create).json()["id"]
        done, latencies = asyncio.run(load(f"{emulator.base_url}/batches/{batch_id}", args.seconds, args.concurrency))
        assert emulator.process is not None
        pid = emulator.process.pid
        rss_before = rss_mb(pid)
        started = time.perf_counter()
        for _ in range(args.batches - 1):
            http.post(f"{emulator.base_url}/batches", json=create)
        create_rate = (args.batches - 1) / (time.perf_counter() - started)
        rss_after = rss_mb(pid)
        t0 = time.perf_counter()
        page = http.get(f"{emulator.base_url}/batches?limit=100").json()
        list_ms = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        http.get(f"{emulator.base_url}/batches/{page['data'][-1]['id']}").raise_for_status()
        get_ms = (time.perf_counter() - t0) * 1000
        held = emulator.stats()["batches"]
        validate_s = validation_seconds(http, emulator, args.lines)
    latencies.sort()
    print("| metric | value |")
    print("|---|---|")
    print(
        f"| GET /v1/batches/{{id}} per second ({args.concurrency} in flight, {args.seconds:g} s) | "
        f"{done / args.seconds:,.0f} |"
    )
    print(
        f"| latency p50 / p99 (ms) | {statistics.median(latencies) * 1000:.1f} / "
        f"{latencies[int(len(latencies) * 0.99)] * 1000:.1f} |"
    )
    print(f"| batches held | {held:,} |")
    print(
        f"| emulator RSS growth for them (MB) | {rss_after - rss_before:.1f} "
        f"({(rss_after - rss_before) * 1024 / max(held - 1, 1):.2f} KB/batch) |"
    )
    print(f"| creates per second (sequential) | {create_rate:,.0f} |")
    print(f"| list 100 newest / retrieve one, with {held:,} held (ms) | {list_ms:.1f} / {get_ms:.1f} |")
    print(f"| validate a {args.lines:,}-request input file (s) | {validate_s:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
