"""One timed export, or the naive join it is measured against, in a fresh interpreter (run by
``results_export.py`` and ``large_job.py``; not meant to be run by hand).

The argument is a JSON object: ``mode`` (``naive``, ``jsonl`` or ``parquet``), ``conn`` (the connection as
``AIRFLOW_CONN_OPENAI_DEFAULT``), ``ids`` (batch ids), ``destination`` and ``work_dir``. It prints one JSON
line: ``rows``, ``seconds``, ``cpu`` (this process's CPU seconds: less moved by other work on the machine),
``growth`` (peak RSS over the RSS just before the timed part, sampled from ``/proc/self/status`` every 5 ms;
``ru_maxrss`` would include whatever the interpreter did before) and, for an export, its manifest's ``counts``.

The naive join is what anyone would write first: download every file, decode each line with msgspec, keep
every result line decoded in a dict by ``custom_id``, then write one line per input line in input order (the
result line, encoded by msgspec). It holds the whole job in memory; the export does not.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def rss() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


class Peak:
    """The peak RSS of this process from now on, sampled every 5 ms by a thread."""

    def __init__(self) -> None:
        self.baseline = self.peak = rss()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(0.005)

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        return max(self.peak, rss()) - self.baseline


def naive_join(hook: Any, ids: list[str], destination: Path, work_dir: str) -> int:
    import msgspec

    decode, encode = msgspec.json.Decoder().decode, msgspec.json.Encoder().encode
    rows = 0
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        inputs = []
        results: dict[str, Any] = {}
        for batch_id in ids:
            batch = hook.retrieve_batch(batch_id)
            for kind in ("input", "output", "error"):
                file_id = getattr(batch, f"{kind}_file_id")
                if not file_id:
                    continue
                local = Path(tmp) / f"{batch_id}-{kind}.jsonl"
                hook.download_file(file_id, local)
                if kind == "input":
                    inputs.append(local)
                    continue
                with open(local, "rb") as handle:
                    for line in handle:
                        item = decode(line)
                        results[item["custom_id"]] = item
        with open(destination, "wb") as out:
            for local in inputs:
                with open(local, "rb") as handle:
                    for line in handle:
                        out.write(encode(results.get(decode(line)["custom_id"])) + b"\n")
                        rows += 1
    return rows


def main() -> None:
    args = json.loads(sys.argv[1])
    os.environ["AIRFLOW_CONN_OPENAI_DEFAULT"] = args["conn"]
    import msgspec  # noqa: F401  (imported before the baseline, as the export's modules are)

    import airflow_provider_openai_batch.results.export  # noqa: F401
    from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook

    if args["mode"] == "parquet":
        import pyarrow.parquet  # noqa: F401

    hook = OpenAIBatchHook()
    hook.retrieve_batch(args["ids"][0])  # connection read and session open before the baseline
    peak = Peak()
    started, cpu = time.perf_counter(), time.process_time()
    counts = None
    if args["mode"] == "naive":
        rows = naive_join(hook, args["ids"], Path(args["destination"]), args["work_dir"])
    else:
        manifest = hook.export_results(args["ids"], args["destination"], format=args["mode"], work_dir=args["work_dir"])
        rows, counts = manifest["rows"], manifest["counts"]
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    growth = peak.stop()
    print(json.dumps({"rows": rows, "seconds": seconds, "cpu": cpu, "growth": growth, "counts": counts}))


if __name__ == "__main__":
    main()
