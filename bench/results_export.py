"""Speed and memory of ``OpenAIBatchHook.export_results`` against a naive in-memory join of the same files
(default: one completed batch of 50,000 chat requests; ``--answer-bytes`` pads every answer).

The emulator runs as a separate process (its files live in its memory, not ours). The batch is created once;
then, ``--repeat`` times, the naive join (``export_child.py`` says what it does) and the export in each
format run one after the other, each in a fresh interpreter that samples its own ``VmRSS``; each export's
time is divided by the naive join's of the same round.

    .venv/bin/python bench/results_export.py --requests 50000
    .venv/bin/python bench/results_export.py --requests 50000 --answer-bytes 4096
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from openai_batch_emulator.testing import EmulatorProcess

from airflow_provider_openai_batch.testing import connection_json

# Run in the emulator process: pad every chat answer, then start the emulator as its command line says.
PADDED_EMULATOR = r"""
import sys
from openai_batch_emulator import results
real = results._fake_body
def padded(endpoint, model, body, seed):
    response, tokens = real(endpoint, model, body, seed)
    for choice in response.get("choices", []):
        choice["message"]["content"] += " " + "x" * %(answer_bytes)d
    return response, tokens
results._fake_body = padded
from openai_batch_emulator.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


class PaddedEmulator(EmulatorProcess):
    """The emulator process with its chat answers padded to ``answer_bytes``."""

    def __init__(self, answer_bytes: int, **flags: object) -> None:
        super().__init__(**flags)  # type: ignore[arg-type]
        self.answer_bytes = answer_bytes

    def command(self) -> list[str]:
        # Replace "-m openai_batch_emulator" with the padding wrapper; keep the flags.
        return [sys.executable, "-c", PADDED_EMULATOR % {"answer_bytes": self.answer_bytes}, *super().command()[3:]]


def make_batch(emulator: EmulatorProcess, requests: int, workdir: Path) -> str:
    import os

    os.environ["AIRFLOW_CONN_OPENAI_DEFAULT"] = connection_json(emulator, {"timeout": 300})
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


def run_child(emulator: EmulatorProcess, mode: str, ids: list[str], destination: Path, work_dir: Path) -> dict:
    """One export (or the naive join) in a fresh interpreter: ``export_child.py``."""
    args = {
        "mode": mode,
        "conn": connection_json(emulator, {"timeout": 300}),
        "ids": ids,
        "destination": str(destination),
        "work_dir": str(work_dir),
    }
    child = Path(__file__).with_name("export_child.py")
    result = subprocess.run(
        [sys.executable, str(child), json.dumps(args)], capture_output=True, text=True, cwd=Path(__file__).parents[1]
    )
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def compare(
    emulator: EmulatorProcess, ids: list[str], tmp: Path, formats: list[str], repeat: int
) -> list[dict[str, object]]:
    """``repeat`` rounds of the naive join and then each format's export, over the same batches, each in a
    fresh interpreter; every export is set against the naive join of its own round."""
    measured: list[dict[str, object]] = []
    for run in range(1, repeat + 1):
        naive = None
        for mode in ["naive", *formats]:
            destination = tmp / f"out-{mode}.{'parquet' if mode == 'parquet' else 'jsonl'}"
            r = run_child(emulator, mode, ids, destination, tmp)
            naive = naive or r
            measured.append(
                {
                    "mode": mode,
                    "run": run,
                    "rows": r["rows"],
                    "seconds": r["seconds"],
                    "ratio": r["seconds"] / naive["seconds"],
                    "cpu": r["cpu"],
                    "cpu_ratio": r["cpu"] / naive["cpu"],
                    "growth_mb": r["growth"] / 1e6,
                    "file_mb": destination.stat().st_size / 1e6,
                }
            )
            destination.unlink()
    return measured


def print_table(measured: list[dict[str, object]]) -> None:
    print(
        "| run | what | rows | seconds | rows/s | time / naive join | CPU s | CPU / naive join |"
        " peak RSS growth (MB) | file (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for m in measured:
        what = "naive in-memory join" if m["mode"] == "naive" else f"export, {m['mode']}"
        print(
            f"| {m['run']} | {what} | {m['rows']:,} | {m['seconds']:.2f} | {m['rows'] / m['seconds']:,.0f} | "
            f"{m['ratio']:.2f} | {m['cpu']:.2f} | {m['cpu_ratio']:.2f} | {m['growth_mb']:.1f} | {m['file_mb']:.0f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--answer-bytes", type=int, default=0)
    parser.add_argument("--formats", nargs="+", default=["jsonl", "parquet"])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-results-") as tmp:
        # What run_emulator_process starts, with padded answers (--answer-bytes 0: the plain emulator).
        emulator = PaddedEmulator(args.answer_bytes, phase_seconds=1).start()
        try:
            batch_id = make_batch(emulator, args.requests, Path(tmp))
            print(f"\n{args.requests:,} requests, answers padded by {args.answer_bytes:,} bytes\n")
            print_table(compare(emulator, [batch_id], Path(tmp), args.formats, args.repeat))
        finally:
            emulator.stop()


if __name__ == "__main__":
    main()
