"""N BatchTriggers in one asyncio loop, as in the triggerer, against a stand-in API with 100 ms latency.

Every batch completes COMPLETE_AFTER seconds after the start; triggers poll every POLL seconds. Reports how
late each trigger fired after its batch completed, the event-loop lag (overshoot of a 10 ms ticker), memory
per waiting trigger, the longest garbage collection of the process (which stalls the loop too, and
explains most of the max lag that remains), the loop lag again for the ticks after start-up (from WINDOW
intervals before completion to the end: every trigger placed, the sweeps in their cadence), and the API
requests per waiting batch per poll interval, counted by the stand-in over the last WINDOW poll intervals
before the batches complete (after the waits have settled into their cadence). The waited batches are the
newest in the account (``--others`` older
ones exist too), as for a DAG run's waits; the stand-in answers ``GET /batches`` (100 a page, newest first,
``after`` paging) as well as ``GET /batches/{id}``.

    .venv/bin/python bench/trigger_scale.py --n 1000
    .venv/bin/python bench/trigger_scale.py --n 10000
    .venv/bin/python bench/trigger_scale.py --n 30000
    .venv/bin/python bench/trigger_scale.py --n 20000 --triggerers 2   # two triggerers sharing 20,000 waits

With ``--triggerers K`` the waits are dealt round-robin to K processes, each one event loop as a triggerer
is, against the one stand-in: as Airflow spreads the deferred tasks of a DAG run over its triggerers, each
triggerer's waits are interleaved with the other's in the account's newest-first list.

The stand-in server runs in a separate process (aiohttp) so it does not share the measured loop. The
connection comes from the AIRFLOW_CONN_OPENAI_DEFAULT environment variable, read with aget_connection.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import resource
import socket
import statistics
import sys
import time

LATENCY = 0.1
#: Poll intervals before completion over which requests are counted.
WINDOW = 3


def serve(port: int, start: float, complete_after: float, n: int, others: int) -> None:
    from aiohttp import web

    # Newest first: the waited batches batch_{n-1} .. batch_0, then older ones of other runs.
    ids = [f"batch_{i}" for i in reversed(range(n))] + [f"other_{i}" for i in range(others)]
    position = {batch_id: index for index, batch_id in enumerate(ids)}
    counted: dict[str, list[float]] = {"list": [], "retrieve": []}

    def body_of(batch_id: str) -> dict[str, object]:
        done = batch_id.startswith("other_") or time.time() >= start + complete_after
        return {
            "id": batch_id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "status": "completed" if done else "in_progress",
            "created_at": int(start) - position.get(batch_id, 0),
            "request_counts": {"total": 1, "completed": int(done), "failed": 0},
        }

    async def batch(request: web.Request) -> web.Response:
        counted["retrieve"].append(time.time())
        await asyncio.sleep(LATENCY)
        return web.json_response(body_of(request.match_info["id"]), headers={"x-request-id": "req_bench"})

    async def listing(request: web.Request) -> web.Response:
        counted["list"].append(time.time())
        await asyncio.sleep(LATENCY)
        limit = int(request.query.get("limit", "20"))
        after = request.query.get("after")
        first = 0 if after is None else position.get(after, len(ids) - 1) + 1
        page = [body_of(batch_id) for batch_id in ids[first : first + limit]]
        body = {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": first + limit < len(ids),
        }
        return web.json_response(body, headers={"x-request-id": "req_bench"})

    async def stats(request: web.Request) -> web.Response:
        since, until = float(request.query["since"]), float(request.query["until"])
        return web.json_response({kind: sum(since <= t < until for t in times) for kind, times in counted.items()})

    app = web.Application()
    app.router.add_get("/v1/batches", listing)
    app.router.add_get("/v1/batches/{id}", batch)
    app.router.add_get("/_stats", stats)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, backlog=4096)


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def measure(ids: list[int], poll: float, complete_at: float) -> dict[str, float]:
    # As in the triggerer, the trigger class (and what it imports) is loaded before its run() starts.
    from airflow_provider_openai_batch.triggers.batch import BatchTrigger

    lags: list[float] = []
    steady: list[float] = []  # ticks of the last WINDOW intervals before completion and after: start-up left out
    steady_from = complete_at - WINDOW * poll
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            lag = time.perf_counter() - before - 0.01
            lags.append(lag)
            if time.time() >= steady_from:
                steady.append(lag)

    fired: list[float] = []

    async def one(i: int) -> None:
        async for event in BatchTrigger(f"batch_{i}", poll_interval=poll).run():
            assert event.payload["status"] == "terminal", event.payload
            fired.append(time.time())

    gc_pauses: list[float] = []
    gc_started: list[float] = [0.0]

    def gc_timer(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            gc_pauses.append(time.perf_counter() - gc_started[0])

    base_rss = rss_mb()
    gc.callbacks.append(gc_timer)
    tick = asyncio.ensure_future(ticker())
    tasks = [asyncio.ensure_future(one(i)) for i in ids]
    await asyncio.sleep(max(0.0, complete_at - time.time() - 1.0))
    waiting_rss = rss_mb()
    await asyncio.gather(*tasks)
    from airflow_provider_openai_batch.hooks.async_client import close_shared_session

    await close_shared_session()
    stop.set()
    await tick
    gc.callbacks.remove(gc_timer)
    late = [t - complete_at for t in fired]
    n = len(ids)
    lags.sort()
    steady.sort()
    return {
        "steady_p99_ms": steady[int(len(steady) * 0.99) - 1] * 1000,
        "steady_max_ms": steady[-1] * 1000,
        "n": n,
        "fired": len(fired),
        "late_max_s": max(late),
        "late_p50_s": statistics.median(late),
        "lag_p99_ms": lags[int(len(lags) * 0.99) - 1] * 1000,
        "lag_max_ms": lags[-1] * 1000,
        "kb_per_trigger": (waiting_rss - base_rss) * 1024 / n,
        "gc_max_ms": max(gc_pauses, default=0.0) * 1000,
    }


def _one_triggerer(ids: list[int], poll: float, complete_at: float, answers: multiprocessing.Queue) -> None:
    answers.put(asyncio.run(measure(ids, poll, complete_at)))


def share_out(n: int, triggerers: int, poll: float, complete_at: float) -> list[dict[str, float]]:
    """Run the waits in ``triggerers`` processes (forked after the connection is set), each its own loop."""
    answers: multiprocessing.Queue = multiprocessing.Queue()
    processes = [
        multiprocessing.Process(target=_one_triggerer, args=(list(range(k, n, triggerers)), poll, complete_at, answers))
        for k in range(triggerers)
    ]
    for process in processes:
        process.start()
    results = [answers.get() for _ in processes]
    for process in processes:
        process.join()
    return results


def requests_per_wait(port: int, n: int, poll: float, complete_at: float) -> dict[str, float]:
    """Requests the stand-in counted over the last WINDOW intervals before completion, per wait per interval."""
    import urllib.request

    url = f"http://127.0.0.1:{port}/_stats?since={complete_at - WINDOW * poll}&until={complete_at}"
    with urllib.request.urlopen(url, timeout=30) as answer:
        counted = json.loads(answer.read())
    return {
        "list_calls": counted["list"] / WINDOW,
        "retrieves": counted["retrieve"] / WINDOW,
        "per_wait": (counted["list"] + counted["retrieve"]) / (n * WINDOW),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--poll", type=float, default=5.0)
    parser.add_argument(
        "--complete-after",
        type=float,
        default=None,
        help="seconds from the start to the batches' end (default: 10 + 1 per 1,000 waits, so the count of "
        "requests is taken after the start-up sweeps have placed every wait on its page)",
    )
    parser.add_argument("--others", type=int, default=1000, help="older batches in the account, not waited")
    parser.add_argument("--triggerers", type=int, default=1, help="processes sharing the waits (round-robin)")
    args = parser.parse_args()
    if args.complete_after is None:
        args.complete_after = 10.0 + args.n / 1000 + WINDOW * args.poll
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.time() + 2.0  # leave the server time to start
    server = multiprocessing.Process(
        target=serve, args=(port, start, args.complete_after, args.n, args.others), daemon=True
    )
    server.start()
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    os.environ["AIRFLOW_CONN_OPENAI_DEFAULT"] = json.dumps(
        {"conn_type": "openai_batch", "host": f"http://127.0.0.1:{port}/v1", "password": "bench-key"}
    )
    complete_at = start + args.complete_after
    try:
        if args.triggerers == 1:
            results = [asyncio.run(measure(list(range(args.n)), args.poll, complete_at))]
        else:
            results = share_out(args.n, args.triggerers, args.poll, complete_at)
        calls = requests_per_wait(port, args.n, args.poll, complete_at)
    finally:
        server.terminate()
    print(
        "| triggers | fired | latest after completion (s) | median (s) | loop lag p99 (ms) | max (ms) | KB/trigger "
        "| longest GC (ms) | after start-up: lag p99 (ms) | max (ms) | list calls / interval | retrieves / interval "
        "| requests per wait per interval |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for result in results:
        print(
            f"| {result['n']} | {result['fired']} | {result['late_max_s']:.2f} | {result['late_p50_s']:.2f} | "
            f"{result['lag_p99_ms']:.1f} | {result['lag_max_ms']:.1f} | {result['kb_per_trigger']:.1f} | "
            f"{result['gc_max_ms']:.0f} | {result['steady_p99_ms']:.1f} | {result['steady_max_ms']:.1f} | "
            f"{calls['list_calls']:.1f} | {calls['retrieves']:.1f} | "
            f"{calls['per_wait']:.4f} |"
        )
    if len(results) > 1:
        print("(list calls, retrieves and requests per wait: all triggerers together, counted by the stand-in)")
    # The poll that sees the end comes at most one interval after it; its answer then takes LATENCY.
    ok = sum(r["fired"] for r in results) == args.n and max(r["late_max_s"] for r in results) <= args.poll + LATENCY
    print("within one poll interval (plus the answer's latency):", ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
