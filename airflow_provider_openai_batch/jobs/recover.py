"""Rebuilding a job record that the task state store no longer holds, from the batches' own keys.

Every batch of a job carries its attempt's idempotency key (:mod:`.keys`), so a retry without a record (no
store, a failing one, or one emptied since: ``[state_store] clear_on_success``, retention) finds the job's
batches in one pass over the batch list. The pass goes back 25 hours (a batch runs at most its 24 h window,
plus slack): older batches of a long job are not found, and those shards are created again
(docs/reliability.md says so). Records written by the previous release are converted here too, so a task
deferred before an upgrade re-attaches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_openai_batch.jobs.decide import MAX_TOKEN_REFUSALS
from airflow_provider_openai_batch.jobs.keys import attempt_key, legacy_keys, legacy_round_key
from airflow_provider_openai_batch.jobs.record import FULL, UNFINISHED, Attempt, JobRecord
from airflow_provider_openai_batch.task_metadata import RESUBMIT_OF_KEY

if TYPE_CHECKING:
    from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
    from airflow_provider_openai_batch.models import Batch

#: How far back the batch list is searched without a record: the 24 h completion window plus an hour.
SEARCH_WINDOW_SECONDS = 25 * 3600
#: Clock skew allowed between this worker and the API when comparing creation times.
SKEW_SECONDS = 300
#: Attempts per shard looked for beyond the resubmit rounds and the token-limit refusals (repeats after a
#: batch ended between tries).
EXTRA_ATTEMPTS = 10


class LayoutChanged(ValueError):
    """The input is cut into other shards than those that already have batches: creating the new ones would
    bill every request again."""


def from_batch_list(
    hook: OpenAIBatchHook, fresh: JobRecord, resubmit_unfinished: int, layout_job: str | None, now: float
) -> int:
    """Attach to ``fresh`` (a record with nothing created) every batch of its job found by its key in the last
    25 hours; returns how many shards were found. Keys of the previous release are looked for too.

    :param layout_job: The previous release's key of a job of several shards (it covered the split settings).
    :raises LayoutChanged: a found batch holds another number of requests than its shard now.
    """
    attempts = 1 + resubmit_unfinished + MAX_TOKEN_REFUSALS + EXTRA_ATTEMPTS
    where = {attempt_key(fresh.job_key, s.index, n): (s.index, n) for s in fresh.shards for n in range(1, attempts + 1)}
    where.update(legacy_keys(fresh.job_key, len(fresh.shards), layout_job, attempts))
    from airflow_provider_openai_batch.exactly_once import batches_with_keys, keep_one

    found = batches_with_keys(hook, where.keys(), now - SEARCH_WINDOW_SECONDS)
    by_shard: dict[int, list[tuple[int, str, Batch]]] = {}
    for key, batches in found.items():
        kept = keep_one(hook, batches, None) or batches[0]  # late twins of one create: one stays live
        index, number = where[key]
        by_shard.setdefault(index, []).append((number, key, kept))
    for index, attempts_found in sorted(by_shard.items()):
        shard = fresh.shards[index]
        shard.attempts = [_attempt(number, key, batch) for number, key, batch in sorted(attempts_found)]
        first = shard.attempts[0]
        if first.n == 1 and first.kind == FULL and first.requests and shard.requests != first.requests:
            raise LayoutChanged(
                f"batch {first.batch_id} holds {first.requests} requests, but shard {index + 1} of this input now "
                f"holds {shard.requests}: the input was cut into shards differently when its batches were created"
            )
    created = [a.created_at for s in fresh.shards for a in s.attempts if a.created_at]
    if created:
        # Without a record the job's first start is unknown; its first batch's creation is the nearest known.
        fresh.started_at = min(created)
    return len(by_shard)


def _attempt(number: int, key: str, batch: Batch) -> Attempt:
    previous = (batch.metadata or {}).get(RESUBMIT_OF_KEY)
    attempt = Attempt(
        n=number,
        kind=UNFINISHED if previous else FULL,
        key=key,
        file_id=batch.input_file_id,
        batch_id=batch.id,
        resubmit_of=previous,
    )
    attempt.observe(batch.model_dump(mode="json"), try_number=0)
    attempt.watched_in_try = None  # no try of this task is known to have watched it
    return attempt


def from_previous_release(
    fresh: JobRecord, single: Any, job: Any, layout_job: str | None, now: float
) -> JobRecord | None:
    """``fresh`` filled from a record the previous release wrote, when it is this job's: a lone batch's record
    (under ``openai_batch``: its rounds and a create under way) or a job's (under ``openai_batch_job``: each
    shard's attempt, earlier refused attempts and a create under way). ``None`` when neither is.
    """
    if isinstance(single, dict) and single.get("idempotency_key") == fresh.job_key and len(fresh.shards) == 1:
        key = fresh.job_key
        rounds = [str(b) for b in single.get("rounds") or ([single["batch_id"]] if single.get("batch_id") else [])]
        shard = fresh.shards[0]
        file_id = shard.last.file_id
        shard.attempts = []
        for number, batch_id in enumerate(rounds, start=1):
            round_key = key if number == 1 else legacy_round_key(key, number)
            previous = rounds[number - 2] if number > 1 else None
            kind = UNFINISHED if previous else FULL
            shard.attempts.append(
                Attempt(number, kind, round_key, file_id=None if previous else file_id, batch_id=batch_id)
            )
            shard.attempts[-1].resubmit_of = previous
        if not single.get("batch_id") and single.get("creating_key"):
            previous = rounds[-1] if rounds else None
            shard.attempts.append(
                Attempt(
                    len(rounds) + 1,
                    UNFINISHED if previous else FULL,
                    str(single["creating_key"]),
                    file_id=None if previous else file_id,
                    creating_since=float(single.get("create_started_at") or now),
                    resubmit_of=previous,
                )
            )
        if not shard.attempts:
            return None
        fresh.started_at = float(single.get("create_started_at") or now)
        return fresh
    if isinstance(job, dict) and layout_job and job.get("job_key") == layout_job:
        old = job.get("shards") or []
        if [s.get("digest") for s in old] != [s.digest for s in fresh.shards]:
            return None
        for shard, was in zip(fresh.shards, old, strict=True):
            # history: the batches of attempts 1..k-1 (each refused for the token limit); then attempt k.
            history, number, file_id = list(was.get("history") or []), int(was.get("attempt") or 1), was.get("file_id")
            shard.attempts = [
                Attempt(n, FULL, attempt_key(layout_job, shard.index, n), file_id=file_id, batch_id=batch_id)
                for n, batch_id in enumerate(history, start=1)
            ]
            shard.attempts.append(
                Attempt(
                    number,
                    FULL,
                    attempt_key(layout_job, shard.index, number),
                    file_id=file_id,
                    batch_id=was.get("batch_id"),
                    creating_since=was.get("creating_since"),
                    not_before=float(was.get("not_before") or 0.0),
                )
            )
        fresh.started_at = float(job.get("started_at") or now)
        return fresh
    return None
