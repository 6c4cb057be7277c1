"""Jobs of any size: an input split into shards, submitted within limits, re-queued after
``token_limit_exceeded``, retry-safe per shard, waited for as one, and merged back in input order.

Small inputs and a small ``max_requests_per_batch`` exercise the very path a million requests take."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred
from openai_batch_emulator.__main__ import parse_args

from airflow_provider_openai_batch.backends import rules_for
from airflow_provider_openai_batch.exceptions import BatchValidationError
from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
from airflow_provider_openai_batch.jobs.store import STATE_KEY
from airflow_provider_openai_batch.operators.batch import CreateBatchOperator
from airflow_provider_openai_batch.operators.results import BatchResultsOperator
from airflow_provider_openai_batch.split import estimate_tokens, split_input
from airflow_provider_openai_batch.triggers.batch import BatchTrigger
from tests.helpers import ENDPOINT, FakeStateStore, ctx, make_batch, prompts, run


def write_lines(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def lines(n: int, start: int = 0, text: str = "q") -> list[dict]:
    return [
        {
            "custom_id": f"p{i}",
            "method": "POST",
            "url": ENDPOINT,
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"{text}{i}"}]},
        }
        for i in range(start, start + n)
    ]


def shard_ids(path: str) -> list[str]:
    return [json.loads(line)["custom_id"] for line in Path(path).read_text().splitlines()]


def job(**kwargs) -> CreateBatchOperator:
    kwargs.setdefault("requests", prompts(10))
    kwargs.setdefault("max_requests_per_batch", 4)
    kwargs.setdefault("poll_interval", 0.05)
    return CreateBatchOperator(task_id="create", **kwargs)


def input_ids(batch_id: str) -> list[str]:
    import io

    with OpenAIBatchHook() as hook:
        batch = hook.retrieve_batch(batch_id)
        buffer = io.BytesIO()
        hook.download_file(str(batch.input_file_id), buffer)
    return [json.loads(line)["custom_id"] for line in buffer.getvalue().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------- splitting


def test_split_cuts_at_max_requests_in_input_order(tmp_path):
    source = write_lines(tmp_path / "in.jsonl", lines(10))
    result = split_input([source], ENDPOINT, str(tmp_path), max_requests_per_batch=4)
    assert [s.requests for s in result.shards] == [4, 4, 2]
    assert [shard_ids(s.path) for s in result.shards] == [
        ["p0", "p1", "p2", "p3"],
        ["p4", "p5", "p6", "p7"],
        ["p8", "p9"],
    ]
    assert result.requests == 10


def test_max_requests_per_batch_is_capped_by_the_back_ends_rules(tmp_path):
    source = write_lines(tmp_path / "in.jsonl", lines(7))
    rules = rules_for(max_requests_per_file=3)
    result = split_input([source], ENDPOINT, str(tmp_path), rules=rules, max_requests_per_batch=50_000)
    assert [s.requests for s in result.shards] == [3, 3, 1]
    (tmp_path / "default").mkdir()
    assert len(split_input([source], ENDPOINT, str(tmp_path / "default")).shards) == 1


def test_split_cuts_at_the_byte_limit_and_never_exceeds_it(tmp_path):
    items = lines(20, text="x" * 200)
    source = write_lines(tmp_path / "in.jsonl", items)
    one = len(json.dumps(items[0])) + 1
    rules = rules_for(max_bytes_per_file=3 * one + 10)  # three lines fit, four do not
    result = split_input([source], ENDPOINT, str(tmp_path), rules=rules)
    assert [s.requests for s in result.shards] == [3, 3, 3, 3, 3, 3, 2]
    assert all(Path(s.path).stat().st_size == s.bytes <= rules.max_bytes_per_file for s in result.shards)
    assert [i for s in result.shards for i in shard_ids(s.path)] == [f"p{i}" for i in range(20)]


def test_split_cuts_at_embedding_inputs_and_at_a_token_bound(tmp_path):
    items = [
        {"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": ["a"] * 30}}
        for i in range(5)
    ]
    source = write_lines(tmp_path / "emb.jsonl", items)
    rules = rules_for(max_embedding_inputs=70)  # two requests of 30 inputs fit, three do not
    (tmp_path / "a").mkdir()
    result = split_input([source], "/v1/embeddings", str(tmp_path / "a"), rules=rules)
    assert [s.requests for s in result.shards] == [2, 2, 1]
    chat = write_lines(tmp_path / "chat.jsonl", lines(6))
    per_line = estimate_tokens((json.dumps(lines(1)[0]) + "\n").encode())
    (tmp_path / "b").mkdir()
    by_tokens = split_input([chat], ENDPOINT, str(tmp_path / "b"), max_tokens_per_batch=2 * per_line)
    assert [s.requests for s in by_tokens.shards] == [2, 2, 2]
    assert all(s.tokens <= 2 * per_line for s in by_tokens.shards)


def test_problems_name_the_line_of_the_input_across_files_and_shards(tmp_path):
    first = write_lines(tmp_path / "a.jsonl", lines(5))
    bad = lines(5, start=5)
    bad[3]["method"] = "GET"  # p8: line 4 of the second file
    bad[4]["custom_id"] = "p1"  # p1 again: line 5 of the second file, first used on line 2 of the first
    second = write_lines(tmp_path / "b.jsonl", bad)
    with pytest.raises(BatchValidationError) as err:
        split_input([first, second], ENDPOINT, str(tmp_path), max_requests_per_batch=3)
    text = str(err.value)
    assert "input_file[1] line 4: method must be 'POST'" in text
    assert "nothing was uploaded or billed" in text
    # The shard holding p8 is refused by the per-shard rules, so cross-shard duplicates there are not reached;
    # a clean input with a duplicate across shards is named with both places:
    clean = write_lines(tmp_path / "c.jsonl", [*lines(4), lines(1, start=1)[0]])
    with pytest.raises(BatchValidationError, match=r"input_file line 5: custom_id 'p1' is also used on line 2"):
        split_input([clean], ENDPOINT, str(tmp_path), max_requests_per_batch=2)


# ------------------------------------------------------------------------------------------------- jobs


def test_a_small_input_is_a_job_of_one_batch_and_returns_its_id(openai_batch_connection):
    context = ctx()
    batch_id = job(requests=prompts(3), max_requests_per_batch=50_000).execute(context)
    assert isinstance(batch_id, str)
    assert context["ti"].xcom["batch_ids"] == [batch_id] and context["ti"].xcom["batch"]["id"] == batch_id
    assert context["ti"].xcom["job"]["shards"] == 1 and context["ti"].xcom["job"]["batch_ids"] == [batch_id]
    assert openai_batch_connection.stats()["batches_created"] == 1


def test_a_job_waits_for_every_shard_and_the_results_merge_in_input_order(openai_batch_connection, tmp_path):
    context = ctx()
    ids = job(wait_for_completion=True, deferrable=False).execute(context)
    assert len(ids) == 3 and context["ti"].xcom["batch_ids"] == ids
    assert [input_ids(b) for b in ids] == [[f"p{i}" for i in r] for r in (range(4), range(4, 8), range(8, 10))]
    summary = context["ti"].xcom["job"]
    assert summary["shards"] == 3 and summary["statuses"] == {"completed": 3}
    assert summary["requests"] == 10 and summary["completed"] == 10 and summary["total_tokens"] > 0
    assert openai_batch_connection.stats()["batches_created"] == 3
    out = tmp_path / "results.jsonl"
    manifest = BatchResultsOperator(task_id="export", batch_id=ids, destination=str(out)).execute(ctx())
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["index"], r["custom_id"], r["status"]) for r in rows] == [(i, f"p{i}", "succeeded") for i in range(10)]
    assert manifest["rows"] == 10


def test_a_list_of_input_files_is_one_job(openai_batch_connection, tmp_path):
    first = write_lines(tmp_path / "a.jsonl", lines(3))
    second = write_lines(tmp_path / "b.jsonl", lines(3, start=3))
    context = ctx()
    ids = CreateBatchOperator(
        task_id="create", input_file=[str(first), str(second)], max_requests_per_batch=4, poll_interval=0.05
    ).execute(context)
    assert [input_ids(b) for b in ids] == [["p0", "p1", "p2", "p3"], ["p4", "p5"]]


def test_max_active_batches_bounds_what_runs_at_once(openai_batch_connection, monkeypatch):
    running_at_create: list[int] = []
    original = OpenAIBatchHook.create_batch

    def counting(self, *args, **kwargs):
        live = [b for b in self.iter_batches() if not b.is_terminal]
        running_at_create.append(len(live))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(OpenAIBatchHook, "create_batch", counting)
    ids = job(requests=prompts(12), max_active_batches=2, wait_for_completion=True, deferrable=False).execute(ctx())
    assert len(ids) == 3 and running_at_create[:2] == [0, 1] and max(running_at_create) <= 1


def test_the_queue_keeps_within_max_enqueued_tokens(openai_batch_connection, monkeypatch):
    running: list[int] = []
    original = OpenAIBatchHook.create_batch

    def counting(self, *args, **kwargs):
        running.append(sum(1 for b in self.iter_batches() if not b.is_terminal))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(OpenAIBatchHook, "create_batch", counting)
    op = job(requests=prompts(8), wait_for_completion=True, deferrable=False)
    line = {"custom_id": "p0", "body": prompts(1)[0]["body"], "method": "POST", "url": ENDPOINT}
    per_line = estimate_tokens((json.dumps(line) + "\n").encode())
    op.max_enqueued_tokens = 4 * per_line + 40  # room for one shard of 4 requests, not for two
    ids = op.execute(ctx())
    assert len(ids) == 2 and running == [0, 0]  # the second shard waited until the first ended


def test_token_limit_exceeded_is_requeued_not_failed(openai_batch_connection):
    emulator = openai_batch_connection
    # The emulator's own estimate of 4 of these prompts is about 17 tokens: one shard fits, two do not.
    # Phases of 1 s: the three creates land well within the first batch's run, however busy the machine.
    emulator.configure(enqueued_token_limit=20, phase_seconds=1.0)
    context = ctx()
    ids = job(wait_for_completion=True, deferrable=False).execute(context)
    summary = context["ti"].xcom["job"]
    assert summary["statuses"] == {"completed": 3} and summary["completed"] == 10
    assert summary["token_limit_requeues"] >= 1
    every = context["ti"].xcom["batch_ids"]
    assert len(every) == 3 + summary["token_limit_requeues"] and every[-1] == ids[-1]
    with OpenAIBatchHook() as hook:
        refused = [hook.retrieve_batch(b) for b in every if b not in ids]
    assert refused and all(b.status == "failed" and b.errors.data[0].code == "token_limit_exceeded" for b in refused)
    assert emulator.stats()["batches_created"] == len(every)
    assert emulator.stats()["requests_completed"] == 10  # nothing billed twice


def test_a_task_killed_after_a_create_is_resumed_without_a_duplicate_shard(openai_batch_connection, monkeypatch):
    store = FakeStateStore()
    original = OpenAIBatchHook.create_batch
    calls = []

    def dies_after_the_second_post(self, *args, **kwargs):
        batch = original(self, *args, **kwargs)
        calls.append(batch.id)
        if len(calls) == 2:
            raise RuntimeError("worker killed right after the POST")
        return batch

    monkeypatch.setattr(OpenAIBatchHook, "create_batch", dies_after_the_second_post)
    with pytest.raises(RuntimeError):
        job().execute(ctx(state=store, try_number=1))
    cut_off = store.values[STATE_KEY]["shards"][1]["attempts"][-1]
    assert cut_off["creating_since"] and not cut_off["batch_id"]
    monkeypatch.setattr(OpenAIBatchHook, "create_batch", original)
    ids = job().execute(ctx(state=store, try_number=2))
    assert ids[:2] == calls  # re-attached to both, the second found by its key
    assert openai_batch_connection.stats()["batches_created"] == 3
    assert [input_ids(b) for b in ids] == [[f"p{i}" for i in r] for r in (range(4), range(4, 8), range(8, 10))]


def test_a_retry_without_a_state_store_finds_the_shards_by_their_keys(openai_batch_connection):
    first = job().execute(ctx(try_number=1))
    again = job().execute(ctx(try_number=2))
    assert again == first and openai_batch_connection.stats()["batches_created"] == 3


def test_a_deferred_job_wakes_submits_and_defers_again_until_done(openai_batch_connection):
    store = FakeStateStore()
    context = ctx(state=store)
    op = job(wait_for_completion=True, deferrable=True, max_active_batches=1)
    with pytest.raises(TaskDeferred) as first:
        op.execute(context)
    deferred = first.value
    wakes = 0
    while True:
        trigger = deferred.trigger
        assert isinstance(trigger, BatchTrigger) and len(trigger.batch_ids) == 1  # one at a time
        assert not deferred.kwargs  # the record is in the task state store, nothing rides along
        revived = BatchTrigger(**json.loads(json.dumps(trigger.serialize()[1])))
        payload = run(revived)
        wakes += 1
        try:
            # A new operator object, as a resumed task on another worker has.
            op = job(wait_for_completion=True, deferrable=True, max_active_batches=1)
            ids = op.execute_complete(context, payload)
            break
        except TaskDeferred as again:
            deferred = again
        assert wakes < 10
    assert wakes == 3 and len(ids) == 3
    assert context["ti"].xcom["job"]["statuses"] == {"completed": 3}
    assert openai_batch_connection.stats()["batches_created"] == 3


def first_wake(op: CreateBatchOperator, context: dict, emulator, status: str) -> dict:
    """Defer the job, end its first batch with ``status`` and run its trigger to the wake; return the event as
    the metadata database hands it back."""
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    trigger = deferred.value.trigger
    emulator.force_status(trigger.batch_ids[0], status)
    return run(BatchTrigger(**json.loads(json.dumps(trigger.serialize()[1]))))


def test_a_job_resumed_after_its_deadline_creates_no_further_batch(openai_batch_connection):
    # The first shard ended before the deadline; the task resumed after it (a busy worker pool). The record's
    # start is moved back instead of sleeping past a short timeout: the same resume, on any machine's speed.
    emulator = openai_batch_connection
    store = FakeStateStore()
    context = ctx(state=store)
    op = job(wait_for_completion=True, deferrable=True, max_active_batches=1, timeout=3600)
    payload = first_wake(op, context, emulator, "completed")
    assert payload["status"] == "terminal"
    store.values[STATE_KEY]["started_at"] -= 7200
    with pytest.raises(AirflowFailException, match=r"deadline .* no further shard was submitted"):
        op.execute_complete(context, payload)
    assert emulator.stats()["batches_created"] == 1  # no batch is billed and abandoned past the deadline


@pytest.mark.parametrize("status", ["failed", "expired", "cancelled"])
def test_a_shard_ended_for_good_stops_the_job_before_any_further_create(openai_batch_connection, status):
    # The job can only fail (a retry re-attaches to the same batch): shards 2 and 3 would be billed for results
    # nobody exports. The task fails at once, naming the shard; nothing running is cancelled.
    emulator = openai_batch_connection
    context = ctx(state=FakeStateStore())
    op = job(wait_for_completion=True, deferrable=True, max_active_batches=1)
    payload = first_wake(op, context, emulator, status)
    with pytest.raises(
        AirflowFailException,
        match=rf"shard 1 of 3: batch \S+ ended {status}( \(\w+\))?; shards \[2, 3\] were not submitted",
    ):
        op.execute_complete(context, payload)
    assert emulator.stats()["batches_created"] == 1


def test_a_shard_ended_for_good_fails_a_polling_job_and_leaves_the_running_batches(
    openai_batch_connection, monkeypatch
):
    emulator = openai_batch_connection
    emulator.configure(phase_seconds=30)
    op = job(wait_for_completion=True, deferrable=False, max_active_batches=2)
    created: list[str] = []
    original = OpenAIBatchHook.create_batch

    def create_then_fail_the_first(self, *args, **kwargs):
        batch = original(self, *args, **kwargs)
        created.append(batch.id)
        if len(created) == 2:
            emulator.force_status(created[0], "failed")
        return batch

    monkeypatch.setattr(OpenAIBatchHook, "create_batch", create_then_fail_the_first)
    with pytest.raises(AirflowFailException, match=r"shard 1 of 3: .* not cancelled: \['"):
        op.execute(ctx(state=FakeStateStore()))
    assert emulator.stats()["batches_created"] == 2
    with OpenAIBatchHook() as hook:
        assert hook.retrieve_batch(created[1]).status == "validating"  # left running, not cancelled


def test_without_wait_a_token_limit_refusal_is_requeued_before_the_task_succeeds(openai_batch_connection):
    # Without wait_for_completion the task used to succeed once every shard had a batch, and the refusals that
    # come at the end of `validating` were never re-queued: shards that would never run, in a successful task.
    emulator = openai_batch_connection
    emulator.configure(enqueued_token_limit=20, phase_seconds=0.2)  # one shard of 4 prompts fits, two do not
    context = ctx(state=FakeStateStore())
    ids = job(deferrable=False).execute(context)
    with OpenAIBatchHook() as hook:
        assert all(hook.retrieve_batch(b).status != "validating" for b in ids)  # no refusal can come any more
        ended = [hook.wait_for_batch(b, 0.05, 60) for b in ids]
    assert [b.status for b in ended] == ["completed"] * 3
    summary = context["ti"].xcom["job"]
    assert summary["token_limit_requeues"] >= 1 and len(context["ti"].xcom["batch_ids"]) > 3


def test_a_deferred_job_without_wait_wakes_once_its_batches_passed_validation(openai_batch_connection):
    emulator = openai_batch_connection
    emulator.configure(phase_seconds=0.3)
    context = ctx(state=FakeStateStore())
    op = job(deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    trigger = deferred.value.trigger
    assert trigger.wake_on == "admitted" and len(trigger.batch_ids) == 3
    payload = run(BatchTrigger(**json.loads(json.dumps(trigger.serialize()[1]))))
    assert payload["status"] == "wake" and all(b["status"] != "validating" for b in payload["batches"])
    ids = op.execute_complete(context, payload)
    assert ids == trigger.batch_ids and emulator.stats()["batches_created"] == 3


def test_an_input_expiry_a_queued_shard_may_outlive_is_refused_before_any_upload(openai_batch_connection):
    # 3 shards, one at a time: the third may wait two 24 h windows for its create, its file uploaded up front.
    op = job(max_active_batches=1, input_expires_after=86400)
    with pytest.raises(ValueError, match=r"input_expires_after=86400s .* max_active_batches=1 .* at least 176400s"):
        op.execute(ctx())
    assert openai_batch_connection.stats()["batches_created"] == 0
    with OpenAIBatchHook() as hook:
        assert not hook.list_files().data  # refused before any upload
    # Room for every shard at once: one round, so the shortest expiry the API takes is fine.
    assert len(job(max_active_batches=3, input_expires_after=3600).execute(ctx())) == 3


def test_queue_rounds_pack_shards_as_the_queue_admits_them():
    from airflow_provider_openai_batch.jobs.inputs import queue_rounds

    assert queue_rounds([1] * 5, 2, None) == 3
    assert queue_rounds([5, 5, 5], None, 10) == 2
    assert queue_rounds([5, 5, 5], 1, 100) == 3
    assert queue_rounds([5] * 4, None, None) == 1


def test_job_arguments_are_checked_at_parse_time():
    with pytest.raises(ValueError, match="max_requests_per_batch must be a whole number >= 1"):
        job(max_requests_per_batch=0)
    with pytest.raises(ValueError, match="max_enqueued_tokens must be a whole number >= 1"):
        job(max_enqueued_tokens=-5)


# --------------------------------------------------------------------------------------------- emulator


def test_the_emulator_refuses_a_batch_over_its_enqueued_token_limit(openai_batch_connection):
    emulator = openai_batch_connection
    emulator.configure(enqueued_token_limit=10, phase_seconds=2)
    first, second = make_batch(emulator), make_batch(emulator)  # about 9 tokens each
    with OpenAIBatchHook() as hook:
        done = hook.wait_for_batch(second, 0.1, 60)
        assert hook.retrieve_batch(first).status in ("in_progress", "finalizing", "completed")
    assert done.status == "failed" and done.errors.data[0].code == "token_limit_exceeded"
    assert "Limit: 10 enqueued tokens" in done.errors.data[0].message
    assert done.request_counts.completed == 0


def test_the_emulator_cli_takes_an_enqueued_token_limit():
    assert parse_args(["--enqueued-token-limit", "90000"]).enqueued_token_limit == 90000
    assert parse_args([]).enqueued_token_limit is None
    with pytest.raises(SystemExit):
        parse_args(["--enqueued-token-limit", "0"])


def test_one_file_per_batch_when_asked(openai_batch_connection, tmp_path):
    ids = job(wait_for_completion=True, deferrable=False).execute(ctx())
    out = tmp_path / "answers.jsonl"
    manifest = BatchResultsOperator(
        task_id="export", batch_id=ids, destination=str(out), one_file_per_batch=True
    ).execute(ctx())
    files = [tmp_path / f"answers-{n:05d}.jsonl" for n in (1, 2, 3)]
    assert [len(f.read_text().splitlines()) for f in files] == [4, 4, 2] and not out.exists()
    assert [json.loads(f.read_text().splitlines()[0])["custom_id"] for f in files] == ["p0", "p4", "p8"]
    assert manifest["rows"] == 10 and manifest["counts"]["succeeded"] == 10 and len(manifest["files"]) == 3
    assert manifest["batch_ids"] == ids


def test_an_object_storage_input_is_split_too(openai_batch_connection, tmp_path):
    from airflow.sdk import ObjectStoragePath

    source = write_lines(tmp_path / "in.jsonl", lines(5))
    context = ctx()
    ids = CreateBatchOperator(
        task_id="create", input_file=ObjectStoragePath(source.as_uri()), max_requests_per_batch=2, poll_interval=0.05
    ).execute(context)
    assert [input_ids(b) for b in ids] == [["p0", "p1"], ["p2", "p3"], ["p4"]]


def test_a_killed_job_cancels_every_running_batch(openai_batch_connection):
    openai_batch_connection.configure(phase_seconds=30)
    # Killed while it waits for its batches to pass validation (a job without wait_for_completion waits that
    # long, see test_without_wait_a_token_limit_refusal_is_requeued_before_the_task_succeeds).
    op = job(cancel_on_kill=True, deferrable=True)
    context = ctx()
    with pytest.raises(TaskDeferred):
        op.execute(context)
    ids = context["ti"].xcom["batch_ids"]
    assert len(ids) == 3
    op.on_kill()
    with OpenAIBatchHook() as hook:
        assert {hook.retrieve_batch(b).status for b in ids} == {"cancelling"}
