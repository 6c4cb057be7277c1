"""The export against the simplest code that follows its rules: every file read whole with ``json``, positions
and results in dicts, rows built by ``rows.py`` and written with ``json.dumps``. On a job that mixes shuffled
results, failed requests, error files, an expired shard, a resubmitted round, a batch refused at validation,
embeddings, floats that ``json`` writes with an exponent and lines that only ``json`` reads, the JSONL is the
same bytes, the Parquet the same values and the manifest the same figures, merged or one file per batch."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_openai_batch.models import Batch
from airflow_provider_openai_batch.results.export import _batch_error, export
from airflow_provider_openai_batch.results.prices import CostEstimate
from airflow_provider_openai_batch.results.rows import STATUSES, RowShape, row_from_line, row_without_line
from airflow_provider_openai_batch.task_metadata import RESUBMIT_OF_KEY
from tests.results.helpers import FakeHook

CHAT, EMBEDDINGS = "/v1/chat/completions", "/v1/embeddings"
MODELS = ["gpt-4o-mini", "gpt-4o", "model-nobody-prices"]
# Floats json writes with an exponent (msgspec would not, or differently), big integers, text beyond ASCII.
ODD_NUMBERS = [-1.2e-05, 3e-07, 1e16, 1.7976931348623157e308, 0.0001, 12345.678, -0.0, 12345678901234567890123]
TEXT = 'é, 日本語, 😀, \u2028, \x7f, tab\there, quote " and backslash \\'


def request(custom_id: str, model: str, text: str, endpoint: str = CHAT) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}], "temperature": 1e-05}
    if endpoint == EMBEDDINGS:
        body = {"model": model, "input": text}
    return {"custom_id": custom_id, "method": "POST", "url": endpoint, "body": body}


def answer(custom_id: str, n: int, model: str, status: int = 200) -> dict[str, Any]:
    if status != 200:
        body: dict[str, Any] = {"error": {"code": "invalid_request", "message": f"refused {custom_id} ({TEXT})"}}
    else:
        body = {
            "model": f"{model}-2024-07-18" if n % 3 == 0 else model,
            "choices": [
                {
                    "message": {"role": "assistant", "content": f"answer {n}: {TEXT}"},
                    "logprobs": {"content": [{"logprob": ODD_NUMBERS[n % len(ODD_NUMBERS)], "top": ODD_NUMBERS}]},
                }
            ],
            "usage": {"prompt_tokens": 10 + n, "completion_tokens": 5 + n, "total_tokens": 15 + 2 * n},
        }
    return {"id": f"req_{n}", "custom_id": custom_id, "response": {"status_code": status, "body": body}, "error": None}


def failure(custom_id: str, code: str) -> dict[str, Any]:
    return {
        "id": f"req_{custom_id}",
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": TEXT},
    }


def lines(items: list[Any]) -> bytes:
    return b"".join((i if isinstance(i, bytes) else json.dumps(i).encode()) + b"\n" for i in items)


def mixed_job() -> tuple[list[dict[str, Any]], dict[str, bytes], list[str]]:
    """The batches, their files, and the ids to export (each given batch after the attempts it continues)."""
    shuffle = random.Random(7).shuffle
    a_in = [request(f"a{i:02d}", MODELS[i % 3], f"question {i} {TEXT}") for i in range(30)]
    a_out: list[Any] = [answer(f"a{i:02d}", i, MODELS[i % 3]) for i in range(20)]
    a_out += [answer(f"a{i:02d}", i, MODELS[i % 3], status=400) for i in range(20, 25)]
    a_out += [answer("a03", 99, "gpt-4o-mini"), answer("nobody-asked", 1, "gpt-4o")]  # a later line wins; unmatched
    nan_line = json.dumps(answer("a05", 5, "gpt-4o")).replace('"total_tokens": 25', '"total_tokens": 25, "x": NaN')
    a_out += [nan_line.encode(), b"not json", b"   "]  # only json reads NaN; unreadable; blank
    shuffle(a_out)
    first = next(n for n, item in enumerate(a_out) if isinstance(item, dict))
    a_out[first] = b"\xef\xbb\xbf" + json.dumps(a_out[first]).encode()  # a byte-order mark: only json reads it
    a_out.insert(0, a_out.pop(first))
    a_err = [failure(f"a{i:02d}", "server_error") for i in range(25, 28)]  # a28, a29: no line at all

    # The round resends a20..a27 (keys of each line reordered, in another order): a20 fails again, a26 gets an
    # error line, a27 no line at all.
    a2_in = [dict(reversed(list(line.items()))) for line in a_in[20:28]]
    shuffle(a2_in)
    a2_out = [answer("a20", 120, MODELS[2], status=400)] + [
        answer(f"a{i:02d}", 100 + i, MODELS[i % 3]) for i in range(21, 26)
    ]
    a2_err = [failure("a26", "rate_limit_exceeded")]

    b_in = [request(f"b{i:02d}", "gpt-4o-mini", f"b question {i}") for i in range(20)]
    b_out = [answer(f"b{i:02d}", 200 + i, "gpt-4o-mini") for i in range(10)]
    shuffle(b_out)
    b_err = [failure(f"b{i:02d}", "batch_expired") for i in range(10, 15)]  # b15..b19: no line, batch expired

    c_in: list[Any] = [request(f"c{i}", "gpt-4o", "c") for i in range(3)] + [b"{broken"]
    e_in = [request(f"e{i}", "text-embedding-3-small", f"embed {i}", EMBEDDINGS) for i in range(5)]
    vectors = [[0.012, -1.5e-05, 3e-06, 0.25 * i, 1e-4] for i in range(5)]
    e_out = [
        {
            "custom_id": f"e{i}",
            "response": {
                "status_code": 200,
                "body": {"data": [{"embedding": vectors[i]}], "usage": {"prompt_tokens": 3, "total_tokens": 3}},
            },
            "error": None,
        }
        for i in range(5)
    ]
    shuffle(e_out)

    def batch(batch_id: str, status: str, endpoint: str = CHAT, **extra: Any) -> dict[str, Any]:
        return {"id": batch_id, "status": status, "endpoint": endpoint, "input_file_id": f"{batch_id}-in", **extra}

    batches = [
        batch("batch_a", "completed", output_file_id="batch_a-out", error_file_id="batch_a-err"),
        batch(
            "batch_a2",
            "completed",
            output_file_id="batch_a2-out",
            error_file_id="batch_a2-err",
            metadata={RESUBMIT_OF_KEY: "batch_a"},
        ),
        batch("batch_b", "expired", output_file_id="batch_b-out", error_file_id="batch_b-err"),
        batch(
            "batch_c",
            "failed",
            errors={"data": [{"code": "invalid_json_line", "message": "line 4 is not JSON", "line": 4}]},
        ),
        batch("batch_e", "completed", EMBEDDINGS, output_file_id="batch_e-out"),
    ]
    files = {
        "batch_a-in": lines(a_in),
        "batch_a-out": lines(a_out),
        "batch_a-err": lines(a_err),
        "batch_a2-in": lines(a2_in),
        "batch_a2-out": lines(a2_out),
        "batch_a2-err": lines(a2_err),
        "batch_b-in": lines(b_in),
        "batch_b-out": lines(b_out),
        "batch_b-err": lines(b_err),
        "batch_c-in": lines(c_in),
        "batch_e-in": lines(e_in),
        "batch_e-out": lines(e_out),
    }
    return batches, files, ["batch_a2", "batch_b", "batch_c", "batch_e"]


def reference(batches: list[Batch], files: dict[str, bytes]) -> tuple[list[dict[str, Any]], list[str | None], int]:
    """Rows in input order, the model each input asked for, and the unmatched result ids: the export's rules
    in plain dicts, for ``batches`` in the order the export reads them."""
    positions: dict[str, list[Any]] = {}  # custom_id -> [index, last rank, model]
    results: dict[tuple[str, int], dict[str, Any]] = {}
    for rank, batch in enumerate(batches):
        for line in files[str(batch.input_file_id)].splitlines():
            try:
                item = json.loads(line)
                custom_id = item["custom_id"]
            except (ValueError, TypeError, KeyError):
                continue
            model = item["body"].get("model")
            place = positions.setdefault(custom_id, [len(positions), rank, model])
            place[1:] = [rank, model]
        for file_id in (batch.output_file_id, batch.error_file_id):
            for line in files[file_id].splitlines() if file_id else []:
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                results[(item["custom_id"], rank)] = item
    rows, models = [], []
    for custom_id, (index, rank, model) in positions.items():
        b = batches[rank]
        line = results.get((custom_id, rank))
        if line is not None:
            rows.append(row_from_line(custom_id, index, line, b.id, b.endpoint, RowShape(embeddings=True)))
        else:
            rows.append(row_without_line(custom_id, index, b.id, b.status, _batch_error(b), RowShape(embeddings=True)))
        models.append(model)
    unmatched = len({custom_id for custom_id, _ in results} - set(positions))
    return rows, models, unmatched


def as_json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@pytest.fixture
def job() -> tuple[FakeHook, list[str], list[dict[str, Any]], list[str | None], int]:
    batches, files, ids = mixed_job()
    hook = FakeHook(batches, files)
    order = ["batch_a", "batch_a2", "batch_b", "batch_c", "batch_e"]
    rows, models, unmatched = reference([hook.batches[batch_id] for batch_id in order], files)
    return hook, ids, rows, models, unmatched


def test_the_mixed_job_covers_every_case(job):
    _, _, rows, _, unmatched = job
    statuses = Counter(row["status"] for row in rows)
    assert statuses == {"succeeded": 40, "failed": 5, "expired": 10, "missing": 3}
    assert {row["batch_id"] for row in rows} == {"batch_a", "batch_a2", "batch_b", "batch_c", "batch_e"}
    assert unmatched == 1 and b"e-05" in as_json(rows) and b"NaN" in as_json(rows)


def test_jsonl_is_the_same_bytes_and_the_manifest_the_same_figures(job, tmp_path):
    hook, ids, rows, models, unmatched = job

    manifest = export(hook, ids, tmp_path / "out.jsonl")  # type: ignore[arg-type]

    assert (tmp_path / "out.jsonl").read_bytes() == b"".join(as_json(row) + b"\n" for row in rows)
    assert manifest["rows"] == len(rows) and manifest["unmatched_results"] == unmatched
    assert manifest["counts"] == {status: sum(r["status"] == status for r in rows) for status in STATUSES}
    assert manifest["models"] == dict(sorted(Counter(model or "unknown" for model in models).items()))
    for side in ("input", "output", "total"):
        assert manifest[f"{side}_tokens"] == sum(r[f"{side}_tokens"] or 0 for r in rows)
    cost = CostEstimate()  # each row priced by the model its answer names, else by the one its input asked for
    for row, model in zip(rows, models, strict=True):
        ran = row["response"].get("model") if isinstance(row["response"], dict) else None
        cost.add(ran, row["input_tokens"], row["output_tokens"], row["total_tokens"], requested=model)
    assert manifest["estimated_cost_usd"] == round(cost.cost_usd, 6) > 0
    assert (
        manifest["unpriced_models"]
        == sorted(cost.unpriced)
        == ["model-nobody-prices", "model-nobody-prices-2024-07-18"]
    )
    assert manifest["batch_ids"] == ["batch_a", "batch_a2", "batch_b", "batch_c", "batch_e"]


def test_parquet_holds_the_same_values(job, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    hook, ids, rows, _, _ = job

    export(hook, ids, tmp_path / "out.parquet")  # type: ignore[arg-type]

    table = pq.read_table(tmp_path / "out.parquet")
    texts = [
        {**row, "response": None if row["response"] is None else as_json(row["response"]).decode()} for row in rows
    ]
    assert table.to_pylist() == type(table).from_pylist(texts, schema=table.schema).to_pylist()  # the file's types
    assert table.column("response").to_pylist() == [text["response"] for text in texts]


def test_one_file_per_batch_holds_each_shard_as_it_ended(job, tmp_path):
    hook, ids, rows, _, _ = job
    first_attempt_ids = {"batch_a2": "a", "batch_b": "b", "batch_c": "c", "batch_e": "e"}

    manifest = export(hook, ids, tmp_path / "out.jsonl", one_file_per_batch=True)  # type: ignore[arg-type]

    for number, (batch_id, entry) in enumerate(zip(ids, manifest["files"], strict=True), start=1):
        shard = [row for row in rows if row["custom_id"].startswith(first_attempt_ids[batch_id])]
        written = Path(tmp_path / f"out-{number:05d}.jsonl").read_bytes()
        assert written == b"".join(as_json(row) + b"\n" for row in shard)
        assert entry["batch_id"] == batch_id and entry["rows"] == len(shard)
