"""A new job's shards are uploaded while the rest of the input is cut, and a refused input leaves no file."""

from __future__ import annotations

import threading

import pytest

from airflow_provider_openai_batch import split as split_module
from airflow_provider_openai_batch.exceptions import BatchValidationError
from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
from airflow_provider_openai_batch.operators.batch import CreateBatchOperator
from tests.helpers import FakeStateStore, ctx, prompts


def wait_for_an_upload_before_the_last_shard(monkeypatch) -> list[bool]:
    """Hold the cut of the last of 5 shards until an upload has finished (at most 60 s: only a split that uploads
    nothing before it ends waits that out); the list says whether one had."""
    uploaded = threading.Event()
    upload = OpenAIBatchHook.upload_file

    def recording(self, *args, **kwargs):
        made = upload(self, *args, **kwargs)
        uploaded.set()
        return made

    close = split_module._Split.close
    before_the_end: list[bool] = []

    def cut(self):
        if self.shard is not None and self.shard.index == 4:
            before_the_end.append(uploaded.wait(60))
        close(self)

    monkeypatch.setattr(OpenAIBatchHook, "upload_file", recording)
    monkeypatch.setattr(split_module._Split, "close", cut)
    return before_the_end


def test_the_first_shard_is_uploaded_before_the_last_is_cut(openai_batch_connection, monkeypatch):
    started_before_the_end = wait_for_an_upload_before_the_last_shard(monkeypatch)
    op = CreateBatchOperator(task_id="create", requests=prompts(10), max_requests_per_batch=2, poll_interval=0.05)
    ids = op.execute(ctx(state=FakeStateStore()))
    assert started_before_the_end == [True] and len(ids) == 5
    stats = openai_batch_connection.stats()
    assert stats["files_created"] == 5 and stats["batches_created"] == 5


def test_a_bad_line_after_shards_were_uploaded_leaves_no_file(openai_batch_connection, monkeypatch):
    uploaded_before_the_end = wait_for_an_upload_before_the_last_shard(monkeypatch)
    requests = prompts(10)
    requests[8]["method"] = "GET"  # in shard 5 of 5: shards 1-4 were cut, checked and uploaded by then
    with pytest.raises(
        BatchValidationError,
        match=r"nothing was billed, and the \d file\(s\) uploaded while the input was cut were deleted:[\s\S]*"
        r"requests line 9: method must be 'POST'",
    ):
        CreateBatchOperator(task_id="create", requests=requests, max_requests_per_batch=2).execute(ctx())
    stats = openai_batch_connection.stats()
    assert uploaded_before_the_end == [True] and stats["files_created"] >= 1
    assert stats["batches_created"] == 0 and stats["files"] == 0  # every file uploaded for it was deleted


def test_a_retry_uploads_only_what_its_record_lacks_after_the_split(openai_batch_connection):
    """Early uploads are for a job's first try: a retry knows its files from the record."""
    store = FakeStateStore()
    first = CreateBatchOperator(task_id="create", requests=prompts(6), max_requests_per_batch=2, poll_interval=0.05)
    ids = first.execute(ctx(state=store, try_number=1))
    again = CreateBatchOperator(task_id="create", requests=prompts(6), max_requests_per_batch=2, poll_interval=0.05)
    assert again.execute(ctx(state=store, try_number=2)) == ids
    assert openai_batch_connection.stats()["files_created"] == 3
