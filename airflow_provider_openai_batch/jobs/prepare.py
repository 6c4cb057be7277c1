"""From the operator's input to a job record with every shard uploaded: split and check the input, find the
job an earlier try left (in the task state store, or by the batches' keys), refuse a change that would bill
twice, and upload what is missing.

Import-light: loaded when a task runs.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import TYPE_CHECKING, Any, NoReturn

from airflow_provider_openai_batch.exceptions import BatchValidationError
from airflow_provider_openai_batch.jobs.inputs import (
    check_input_expiry,
    new_record,
    uploaded_file_record,
    write_requests_jsonl,
)
from airflow_provider_openai_batch.jobs.keys import job_key, legacy_layout_job_key
from airflow_provider_openai_batch.jobs.record import FULL, JobRecord
from airflow_provider_openai_batch.jobs.store import LEGACY_JOB_KEY, STATE_KEY, RecordStore

if TYPE_CHECKING:
    from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook

#: The split settings a record keeps, to name what changed when its shards no longer match the input's.
LAYOUT_SETTINGS = ("max_requests_per_batch", "max_enqueued_tokens", "max_bytes_per_file", "max_embedding_inputs")


def prepare(
    task: Any, context: Any, hook: OpenAIBatchHook, store: RecordStore, tmp: str, resuming: bool = False
) -> JobRecord:
    """The job record for ``task``'s input, every shard uploaded and the record stored.

    :param task: The :class:`~airflow_provider_openai_batch.operators.batch.CreateBatchOperator`.
    :param tmp: A directory for the shard files, alive until the job's first wait.
    :param resuming: The task resumes from a wait without a record: its batches exist, search for them as a
        retry does.
    """
    from airflow_provider_openai_batch.jobs.recover import LayoutChanged, from_batch_list, from_previous_release

    ti = context["ti"]
    now = time.time()
    split = None
    # What an earlier try left: this release's record, or the previous release's (a lone batch's under the same
    # key, a job's under its own).
    earlier, earlier_job = store.read_raw(STATE_KEY), store.read_raw(LEGACY_JOB_KEY)
    if task.input_file_id is not None:
        from airflow_provider_openai_batch import api

        api.validate_id(task.input_file_id, "input_file_id")
        digest = hashlib.sha256(task.input_file_id.encode()).hexdigest()
        fresh = uploaded_file_record(job_key(ti, digest, task.reattach), task.endpoint, task.input_file_id, now)
        layout_job = None
    else:
        first = not resuming and (ti.try_number or 1) == 1 and earlier is None and earlier_job is None
        split = _split(task, tmp, hook, uploads=first and _may_upload_early(task))
        rules = task.backend_rules()
        layout = {
            "max_requests_per_batch": min(task.max_requests_per_batch, rules.max_requests_per_file),
            "max_enqueued_tokens": task.max_enqueued_tokens,
            "max_bytes_per_file": rules.max_bytes_per_file,
            "max_embedding_inputs": rules.max_embedding_inputs,
        }
        fresh = new_record(job_key(ti, split.digest, task.reattach), task.endpoint, split, layout, now)
        layout_job = legacy_layout_job_key(
            ti, split.digest, layout["max_requests_per_batch"], task.max_enqueued_tokens, task.endpoint, task.reattach
        )
        shards = len(split.shards)
        task.log.info(
            "Job: %d requests in %d shard%s of at most %d requests and %d bytes (split in %.1fs); "
            "max_active_batches=%s, max_enqueued_tokens=%s",
            split.requests,
            shards,
            "" if shards == 1 else "s",
            layout["max_requests_per_batch"],
            rules.max_bytes_per_file,
            time.time() - now,
            task.max_active_batches,
            task.max_enqueued_tokens,
        )
    stored = JobRecord.from_json(earlier) if task.reattach == "auto" else None
    if stored is not None and stored.job_key == fresh.job_key:
        record = _reattach(task, stored, fresh)
    else:
        previous = None
        if task.reattach == "auto":
            previous = from_previous_release(fresh, earlier, earlier_job, layout_job, now)
        record = previous or fresh
        if previous is not None:
            task.log.info("Re-attaching to the batches an earlier try recorded")
        elif task.reattach == "auto" and ((ti.try_number or 1) > 1 or resuming):
            try:
                found = from_batch_list(hook, fresh, task.resubmit_unfinished, layout_job, now)
            except LayoutChanged as err:
                _refuse_layout(str(err))
            if found:
                task.log.info("Found the batches of %d shard(s) of this job by their keys", found)
    if split is not None:
        _upload(task, hook, store, record, split)
    store.write(record)
    return record


def _may_upload_early(task: Any) -> bool:
    """Whether a new job's shards may be uploaded as they are cut: always, unless ``input_expires_after`` must be
    checked against a queue of several rounds, which only the whole cut tells (then every file waits for it)."""
    if task.input_expires_after is None:
        return True
    if task.max_active_batches is not None or task.max_enqueued_tokens is not None:
        return False
    from airflow_provider_openai_batch.jobs.runner import window_seconds

    check_input_expiry(  # one round of batches: only what a round of resubmit_unfinished needs is left to check
        task.task_id,
        task.input_expires_after,
        [0],
        max_active_batches=None,
        max_enqueued_tokens=None,
        resubmit_unfinished=task.resubmit_unfinished,
        window_seconds=window_seconds(task.completion_window),
    )
    return True


def _split(task: Any, tmp: str, hook: OpenAIBatchHook, uploads: bool) -> Any:
    """The input cut into checked shards; with ``uploads``, each shard uploaded as soon as it is cut
    (:mod:`.uploads`), its file id set on the shard (``file_id``)."""
    from airflow_provider_openai_batch.jobs.uploads import ShardUploads
    from airflow_provider_openai_batch.split import split_input

    if task.requests is not None:
        path = os.path.join(tmp, "requests.jsonl")
        write_requests_jsonl(task.requests, task.endpoint, path)
        sources: list[Any] = [path]
        names, label = ["requests"], "requests; line N is requests[N-1]"
    else:
        sources = task.input_sources()
        names, label = None, None
    os.makedirs(os.path.join(tmp, "shards"), exist_ok=True)
    early = ShardUploads(hook, task.input_expires_after) if uploads else None
    try:
        split = split_input(
            sources,
            task.endpoint,
            os.path.join(tmp, "shards"),
            rules=task.backend_rules(),
            max_requests_per_batch=task.max_requests_per_batch,
            max_tokens_per_batch=task.max_enqueued_tokens,
            names=names,
            label=label,
            on_shard=early.submit if early is not None else None,
        )
    except BatchValidationError as err:
        deleted = early.discard() if early is not None else 0
        if not deleted or err.source is None:
            raise
        # Say what happened to the files of the shards cut (and uploaded) before the bad line was reached.
        outcome = f"nothing was billed, and the {deleted} file(s) uploaded while the input was cut were deleted"
        raise BatchValidationError.of_input(err.source, err.problems, outcome) from None
    except BaseException:
        if early is not None:
            early.discard()
        raise
    if early is not None:
        for index, file_id in early.file_ids().items():
            split.shards[index].file_id = file_id
    return split


def _reattach(task: Any, stored: JobRecord, fresh: JobRecord) -> JobRecord:
    """The stored job when its shards are this input's; else ``fresh``, unless a batch exists for the old ones."""
    if [s.digest for s in stored.shards] == [s.digest for s in fresh.shards]:
        task.log.info("Re-attaching to the job an earlier try recorded (%d shard(s))", len(stored.shards))
        return stored
    if not stored.has_batches():  # nothing created yet: nothing is billed twice
        fresh.started_at = stored.started_at
        return fresh
    changed = [
        f"{name}={stored.layout.get(name)} then, {fresh.layout.get(name)} now"
        for name in LAYOUT_SETTINGS
        if stored.layout.get(name) != fresh.layout.get(name)
    ]
    _refuse_layout(
        f"this input was cut into {len(stored.shards)} shard(s) when its batches were created, and is cut into "
        f"{len(fresh.shards)} now" + (f" ({'; '.join(changed)})" if changed else "")
    )


def _refuse_layout(detail: str) -> NoReturn:
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException(
        f"{detail}: creating batches for the new shards would bill every request again, so nothing was created. Set "
        "the split settings back to their values then, or run the input again on purpose with reattach='never'"
    )


def _upload(task: Any, hook: OpenAIBatchHook, store: RecordStore, record: JobRecord, split: Any) -> None:
    """Upload every shard whose next attempt sends the whole shard and has no file yet (files are free;
    batches are what is billed). The expiry asked for is checked first, before any upload."""
    missing = [s for s in record.shards if s.last.kind == FULL and s.last.file_id is None and not s.last.batch_id]
    if not missing:
        return
    from airflow_provider_openai_batch.jobs.runner import window_seconds

    check_input_expiry(
        task.task_id,
        task.input_expires_after,
        [s.tokens for s in record.shards],
        max_active_batches=task.max_active_batches,
        max_enqueued_tokens=task.max_enqueued_tokens,
        resubmit_unfinished=task.resubmit_unfinished,
        window_seconds=window_seconds(task.completion_window),
    )
    for shard in missing:
        uploaded = hook.upload_file(
            split.shards[shard.index].path, purpose="batch", expires_after=task.input_expires_after
        )
        for attempt in shard.attempts:
            if attempt.kind == FULL and attempt.file_id is None:
                attempt.file_id = uploaded.id
        store.write(record)
