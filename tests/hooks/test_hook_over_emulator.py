"""Every hook call over a real socket against the emulator: the whole life of a batch, pagination, files."""

from __future__ import annotations

import json

import pytest

from airflow_provider_openai_batch.exceptions import ConflictError, NotFoundError
from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
from tests.helpers import ENDPOINT


def jsonl(n: int, fail: frozenset[int] = frozenset()) -> bytes:
    messages = [{"role": "user", "content": "hi"}]
    lines = [
        {
            "custom_id": f"q{i}",
            "method": "POST",
            "url": ENDPOINT,
            # A temperature the API refuses fails that request alone (the file names one model).
            "body": {"model": "gpt-4o-mini", "messages": messages, **({"temperature": 3} if i in fail else {})},
        }
        for i in range(n)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def test_the_life_of_a_batch(openai_batch_connection, tmp_path):
    openai_batch_connection.configure(phase_seconds=0.2)
    hook = OpenAIBatchHook()
    source = tmp_path / "prompts.jsonl"
    source.write_bytes(jsonl(5, fail=frozenset({3})))
    uploaded = hook.upload_file(source)
    assert uploaded.purpose == "batch" and uploaded.bytes == source.stat().st_size
    assert uploaded.filename.startswith("prompts-") and hook.retrieve_file(uploaded.id).id == uploaded.id

    created = hook.create_batch(uploaded.id, ENDPOINT, metadata={"team": "search"}, output_expires_after=7200)
    assert created.status == "validating" and created.metadata == {"team": "search"}
    assert created.http is not None and created.http.status_code == 200 and created.http.request_id

    batch = hook.wait_for_batch(created.id, poll_interval=0.05, timeout=30)
    assert batch.status == "completed" and batch.request_counts.model_dump() == {
        "total": 5,
        "completed": 4,
        "failed": 1,
    }
    assert batch.usage is not None and batch.usage.total_tokens > 0

    downloaded = hook.download_file(str(batch.output_file_id), tmp_path / "out" / "output.jsonl")
    assert downloaded.bytes == (tmp_path / "out" / "output.jsonl").stat().st_size > 0
    records = list(hook.iter_results(batch))
    assert sorted(r.custom_id for r in records) == ["q0", "q1", "q2", "q3", "q4"]
    assert {r.source for r in records} == {"output", "error"}
    results = hook.get_results(batch.id)
    assert not results["q3"].ok and "'temperature'" in str(results["q3"].error_message)
    assert results["q0"].ok and results["q0"].body["object"] == "chat.completion"  # type: ignore[index]

    assert hook.delete_file(uploaded.id).deleted
    with pytest.raises(NotFoundError, match=uploaded.id):
        hook.retrieve_file(uploaded.id)
    with pytest.raises(ConflictError):
        hook.cancel_batch(batch.id)  # a finished batch cannot be cancelled


def test_listing_pages_through_every_batch_newest_first(openai_batch_connection):
    openai_batch_connection.configure(phase_seconds=60)
    hook = OpenAIBatchHook()
    file_id = hook.upload_file(jsonl(1)).id
    made = [hook.create_batch(file_id, ENDPOINT).id for _ in range(7)]
    page = hook.list_batches(limit=3)
    assert [b.id for b in page.data] == made[::-1][:3] and page.has_more and page.last_id == made[-3]
    assert [b.id for b in hook.iter_batches(limit=2)] == made[::-1]  # four pages, followed lazily
    assert [b.id for b in hook.iter_batches(after=made[2], limit=2)] == made[:2][::-1]
    assert {f.id for f in hook.list_files(purpose="batch").data} == {file_id}


def test_cancelling_a_running_batch(openai_batch_connection):
    openai_batch_connection.configure(phase_seconds=0.3)
    hook = OpenAIBatchHook()
    batch = hook.create_batch(hook.upload_file(jsonl(4)).id, ENDPOINT)
    assert hook.cancel_batch(batch.id).status == "cancelling"
    assert hook.wait_for_batch(batch.id, poll_interval=0.05, timeout=30).status == "cancelled"


def test_a_batch_input_file_is_always_uploaded_under_a_jsonl_name(openai_batch_connection, tmp_path):
    # The API refuses a purpose=batch file named otherwise; when the provider picks the name, it ends in .jsonl
    # whatever the source is called, and any other purpose keeps the source's extension.
    hook = OpenAIBatchHook()
    source = tmp_path / "prompts.txt"
    source.write_bytes(jsonl(2))
    uploaded = hook.upload_file(source)
    assert uploaded.filename.startswith("prompts-") and uploaded.filename.endswith(".jsonl")
    assert hook.upload_file(jsonl(1)).filename.endswith(".jsonl")  # bytes: batch_input-<tag>.jsonl
    notes = hook.upload_file(source, purpose="user_data")
    assert notes.filename.startswith("prompts-") and notes.filename.endswith(".txt")
    assert hook.upload_file(source, filename="mine.jsonl").filename == "mine.jsonl"  # an explicit name, as given
    assert openai_batch_connection.stats()["files"] == 4
