"""The runner: applies the decision table (:mod:`.decide`) to a job with the hook, and waits.

:func:`prepare` turns the operator's input into the job record (new, or the one an earlier try left, or one
rebuilt from the batches' keys) and uploads what is not uploaded yet. :class:`JobRunner` then loops: it reads
the running batches, asks :func:`~.decide.decide` what to do, applies the actions (claim a cut-off create,
create, re-queue, repeat, resubmit the unfinished lines), records each step in the task state store before
and after its API call, and ends as the table says: done, stopped for good, or waiting. A wait polls in the
worker, or defers to :class:`~airflow_provider_openai_batch.triggers.batch.BatchTrigger`; the resumed task
reads the record again and goes on, so every resume (a deferral's end, a retry, ``airflow dags test``, a
restarted worker or triggerer) takes this one path.

Import-light: loaded when a task runs.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import TYPE_CHECKING, Any, NoReturn

from airflow_provider_openai_batch.exceptions import APIError, BatchNotSuccessfulError, BatchTimeoutError
from airflow_provider_openai_batch.jobs import decide as table
from airflow_provider_openai_batch.jobs.keys import attempt_key
from airflow_provider_openai_batch.jobs.record import UNFINISHED, Attempt, JobRecord, Shard
from airflow_provider_openai_batch.jobs.store import RecordStore
from airflow_provider_openai_batch.outcome import describe, fail_for_good, judge
from airflow_provider_openai_batch.progress import ProgressLog, Snapshot

if TYPE_CHECKING:
    from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook


class JobRunner:
    """Drive one job to its end (see the module docstring).

    :param task: The :class:`~airflow_provider_openai_batch.operators.batch.CreateBatchOperator` whose settings
        apply (it defers, logs and cancels on kill).
    :param context: The task's context.
    :param hook: The hook every call goes through.
    :param record: The job (from :func:`prepare`, or the store when resuming).
    :param store: Where the record is kept between tries.
    """

    def __init__(self, task: Any, context: Any, hook: OpenAIBatchHook, record: JobRecord, store: RecordStore) -> None:
        self.task = task
        self.context = context
        self.hook = hook
        self.record = record
        self.store = store
        self.log = task.log
        self.ti = context["ti"]
        self.try_number = int(self.ti.try_number or 1)
        #: Each batch as last seen (JSON), for log lines, the final XCom and the verdict's details.
        self.seen: dict[str, dict[str, Any]] = {}

    # --------------------------------------------------------------------------------------------- loop

    def policy(self) -> table.Policy:
        task = self.task
        return table.Policy(
            try_number=self.try_number,
            wait_for_completion=task.wait_for_completion,
            resubmit_unfinished=task.resubmit_unfinished,
            rebill_completed_requests=task.rebill_completed_requests,
            max_active_batches=task.max_active_batches,
            max_enqueued_tokens=task.max_enqueued_tokens,
            max_failed_fraction=task.max_failed_fraction,
            deadline=None if task.wait_timeout is None else self.record.started_at + task.wait_timeout,
            window_seconds=window_seconds(task.completion_window),
            backoff_base=task.poll_interval,
        )

    def run(self, seen: list[dict[str, Any]] | None = None) -> str | list[str]:
        """Go on with the job until it is done (return what the task returns), stops (fail without retries) or
        waits in the triggerer (defer); ``seen``: batches a trigger's event carries, as fresh as a read."""
        progress = ProgressLog(self.log)
        look, polls = True, 0
        while True:
            if look:
                self._refresh(seen)
                seen, look = None, False
            plan = table.decide(self.record, self.policy(), time.time())
            if plan.actions:
                for action in plan.actions:
                    getattr(self, f"_{action.kind}")(action)
                self._push_batch_ids()
                continue
            outcome = plan.outcome
            if isinstance(outcome, table.Done):
                return self._finish(outcome)
            if isinstance(outcome, table.Stop):
                self._stop(outcome)
            assert isinstance(outcome, table.Wait)
            self._push_batch_ids()
            if self.task.deferrable:
                self._defer(outcome)
            progress.observe(self.snapshot())
            polls += 1
            time.sleep(self._pause(outcome, polls))
            look = True

    def _pause(self, wait: table.Wait, polls: int) -> float:
        pause = float(self.task.poll_interval)
        if wait.wake == table.WAKE_ADMITTED:
            pause = table.admission_interval(pause, polls)
        for moment in (wait.wake_at, wait.end_time):
            if moment is not None:
                pause = min(pause, max(0.0, moment - time.time()))
        return pause

    def _defer(self, wait: table.Wait) -> NoReturn:
        from airflow_provider_openai_batch.triggers.batch import BatchTrigger

        self.task.defer(
            trigger=BatchTrigger(
                batch_ids=wait.batch_ids,
                conn_id=self.task.conn_id,
                poll_interval=self.task.poll_interval,
                end_time=wait.end_time,
                cancel_on_kill=self.task.cancel_on_kill,
                wake_on=wait.wake,
                wake_at=wait.wake_at,
                progress=self.progress_base(),
            ),
            method_name="execute_complete",
        )
        raise AssertionError("defer() raises")  # pragma: no cover

    # ------------------------------------------------------------------------------------------ reading

    def _refresh(self, seen: list[dict[str, Any]] | None) -> None:
        """Read every running batch: from ``seen`` where it has it, else with a GET."""
        by_id = {str(b.get("id")): b for b in seen or []}
        changed = False
        for shard in self.record.shards:
            attempt = shard.last
            if not attempt.running:
                continue
            batch = by_id.get(str(attempt.batch_id))
            if batch is None:
                batch = self.hook.retrieve_batch(str(attempt.batch_id)).model_dump(mode="json")
            self._observe(attempt, batch)
            changed = True
        if changed:
            self.store.write(self.record)

    def _observe(self, attempt: Attempt, batch: dict[str, Any]) -> None:
        if batch.get("status") != attempt.status:
            self.log.info("OpenAI %s", describe(batch))
        attempt.observe(batch, self.try_number)
        self.seen[str(attempt.batch_id)] = batch

    # ------------------------------------------------------------------------------------------ actions

    def _claim(self, action: table.Action) -> None:
        """A create a kill cut off: find its batch by its key, if it landed."""
        from airflow_provider_openai_batch.exactly_once import claim
        from airflow_provider_openai_batch.jobs.recover import SKEW_SECONDS

        shard = self.record.shards[action.shard]
        attempt = shard.last
        found = claim(self.hook, attempt.key, float(attempt.creating_since or 0) - SKEW_SECONDS)
        attempt.creating_since = None
        if found is not None:
            self.log.info(
                "Shard %s: re-attaching to batch %s created before the task stopped", self._name(shard), found.id
            )
            attempt.batch_id = found.id
            self._observe(attempt, found.model_dump(mode="json"))
        elif attempt.file_id is None and attempt.kind == UNFINISHED:
            shard.attempts.pop()  # its input was never uploaded: the round is built again from the batch before it
            shard.last.carried = None
        self.store.write(self.record)

    def _create(self, action: table.Action) -> None:
        """Create the shard's queued attempt: recorded "creating since" before the POST, the batch after it."""
        from airflow_provider_openai_batch.task_metadata import RESUBMIT_OF_KEY, with_task_metadata

        shard = self.record.shards[action.shard]
        attempt = shard.last
        task = self.task
        metadata = with_task_metadata(task.metadata, self.ti)  # which DAG, task, run and map index made it
        if attempt.resubmit_of:
            metadata[RESUBMIT_OF_KEY] = attempt.resubmit_of
        attempt.creating_since = time.time()
        self.store.write(self.record)
        try:
            batch = self.hook.create_batch(
                str(attempt.file_id),
                self.record.endpoint,
                task.completion_window,
                metadata,
                task.output_expires_after,
                idempotency_key=attempt.key,
            )
        except APIError as err:
            self._forget_refused_upload(attempt, err)
            raise
        attempt.batch_id, attempt.creating_since = batch.id, None
        self._observe(attempt, batch.model_dump(mode="json"))
        self.store.write(self.record)
        self.log.info(
            "Shard %s (%d requests, ~%d input tokens, attempt %d): batch %s",
            self._name(shard),
            attempt.requests or shard.requests,
            shard.tokens,
            attempt.n,
            batch.id,
        )
        from airflow_provider_openai_batch.links import remember_batch_link

        remember_batch_link(task, self.context, self.hook.settings, batch.id)

    def _forget_refused_upload(self, attempt: Attempt, err: APIError) -> None:
        """A definite refusal (any 4xx) means no batch will ever use the upload: delete it, unless it is the
        user's own ``input_file_id``; a retry uploads again. After a 5xx the batch may exist after all, so the
        file and the "creating since" mark stay for the retry's claim."""
        if err.status_code is None or not 400 <= err.status_code < 500:
            return
        attempt.creating_since = None
        if attempt.file_id and attempt.file_id != self.task.input_file_id:
            try:
                self.hook.delete_file(attempt.file_id)
            except Exception as cleanup:  # hygiene must not hide the refusal
                self.log.warning("Could not delete the unused input file %s: %s", attempt.file_id, cleanup)
            attempt.file_id = None
        self.store.write(self.record)

    def _requeue(self, action: table.Action) -> None:
        shard = self.record.shards[action.shard]
        self.log.warning(
            "Shard %s: batch %s was refused for the enqueued-token limit (never billed); back in the queue, attempt "
            "%d in %.0fs",
            self._name(shard),
            shard.last.batch_id,
            shard.last.n + 1,
            max(0.0, action.not_before - time.time()),
        )
        self._again(shard, action.not_before)

    def _repeat(self, action: table.Action) -> None:
        shard = self.record.shards[action.shard]
        last = shard.last
        if action.rebill:
            self.log.warning(
                "Shard %s: batch %s ended %s with %d of %d requests completed; sending its input again as "
                "rebill_completed_requests=True asks: those %d requests are billed a second time",
                self._name(shard),
                last.batch_id,
                last.status,
                last.completed,
                last.requests,
                last.completed,
            )
        else:
            self.log.info(
                "Shard %s: batch %s ended %s while no try of this task watched it, with nothing billed: sending its "
                "input again",
                self._name(shard),
                last.batch_id,
                last.status,
            )
        self._again(shard, 0.0)

    def _again(self, shard: Shard, not_before: float) -> None:
        """A new attempt with the same input as the last one (it replaces it)."""
        last = shard.last
        number = last.n + 1
        shard.attempts.append(
            Attempt(
                number,
                last.kind,
                attempt_key(self.record.job_key, shard.index, number),
                requests=last.requests,
                file_id=last.file_id,
                resubmit_of=last.resubmit_of,
                not_before=not_before,
            )
        )
        self.store.write(self.record)

    def _resubmit(self, action: table.Action) -> None:
        """Build the shard's next round from the lines of its last batch that did not finish."""
        from airflow_provider_openai_batch.jobs.unfinished import write_unfinished_input

        shard = self.record.shards[action.shard]
        last = shard.last
        batch = self.seen.get(str(last.batch_id)) or self.hook.retrieve_batch(str(last.batch_id)).model_dump(
            mode="json"
        )
        if last.completed == 0 and last.failed == 0 and batch.get("input_file_id"):
            count, total, file_id = last.requests, last.requests, str(batch["input_file_id"])  # nothing ran
        else:
            with tempfile.TemporaryDirectory(prefix="openai-batch-round-") as tmp:
                path = os.path.join(tmp, f"shard-{shard.index + 1}-attempt-{last.n + 1}.jsonl")
                count, total = write_unfinished_input(self.hook, batch, path)
                file_id = None
                if count:
                    uploaded = self.hook.upload_file(path, purpose="batch", expires_after=self.task.input_expires_after)
                    file_id = uploaded.id
        last.carried = count
        if count:
            number = last.n + 1
            shard.attempts.append(
                Attempt(
                    number,
                    UNFINISHED,
                    attempt_key(self.record.job_key, shard.index, number),
                    requests=count,
                    file_id=file_id,
                    resubmit_of=last.batch_id,
                )
            )
            self.log.info(
                "Shard %s, round %d of at most %d: re-submitting the %d of %d requests of batch %s (%s) that did not "
                "finish; the %d that finished are not sent again",
                self._name(shard),
                shard.rounds,
                self.task.resubmit_unfinished,
                count,
                total,
                last.batch_id,
                last.status,
                total - count,
            )
        self.store.write(self.record)

    # ------------------------------------------------------------------------------------------- ending

    def _finish(self, done: table.Done) -> str | list[str]:
        summary = self._push_results()
        self.log.info(
            "Job of %d shard(s): %s; %d of %d requests completed, %d failed; tokens %d",
            summary["shards"],
            summary["statuses"],
            summary["completed"],
            summary["requests"],
            summary["failed"],
            summary["total_tokens"],
        )
        if done.failure is not None:
            last = self.seen.get(self.record.final_batch_ids()[-1])
            detail = f"; last batch: {describe(last)}" if last else ""
            fail_for_good(
                BatchNotSuccessfulError(done.failure + detail, last or {}),
                "the job's batches ended and will not change",
            )
        ids = self.record.final_batch_ids()
        return ids[0] if len(self.record.shards) == 1 else ids

    def _stop(self, stop: table.Stop) -> NoReturn:
        self._push_results()
        running = [str(a.batch_id) for a in self.record.running()]
        never = [s.index + 1 for s in self.record.shards if not s.last.batch_id]
        tail = ""
        if len(self.record.shards) > 1:
            tail = f"; shards {never} were not submitted" if never else "; every shard had been submitted"
        if running:
            tail += f"; still running, not cancelled: {running}"
        if stop.reason in ("deadline", "stale"):
            timeout = self.task.wait_timeout
            why = (
                f"the deadline (timeout={timeout:g}s from the job's start) passed; no further shard was submitted"
                if stop.reason == "deadline"
                else "the batch outlived its completion window"
            )
            fail_for_good(BatchTimeoutError(stop.message + tail), why)
        batch = self.seen.get(str(self.record.shards[stop.shard or 0].last.batch_id)) or {}
        errors = ""
        if stop.reason == "ended" and (batch.get("errors") or {}).get("data"):
            try:
                judge(batch, 1.0)  # its line: the batch's own error messages (a bad line's number, a refusal)
            except BatchNotSuccessfulError as err:
                errors = f". {err}"
        fail_for_good(
            BatchNotSuccessfulError(stop.message + tail + errors, batch),
            "a shard ended and will not change, so the job cannot succeed"
            if stop.reason == "ended"
            else "a repeat would bill completed requests twice",
        )

    def _push_results(self) -> dict[str, Any]:
        """XCom: every batch id, the job's summary and, for one shard, its batch as last seen."""
        summary = self.record.summary()
        self._push_batch_ids()
        self.ti.xcom_push(key="job", value=summary)
        if len(self.record.shards) == 1 and self.record.shards[0].last.batch_id:
            batch_id = str(self.record.shards[0].last.batch_id)
            batch = self.seen.get(batch_id) or self.hook.retrieve_batch(batch_id).model_dump(mode="json")
            self.ti.xcom_push(key="batch", value=batch)
        return summary

    def _push_batch_ids(self) -> None:
        self.ti.xcom_push(key="batch_ids", value=self.record.batch_ids())

    # ----------------------------------------------------------------------------------------- progress

    def _name(self, shard: Shard) -> str:
        return f"{shard.index + 1}/{len(self.record.shards)}"

    def progress_base(self) -> dict[str, Any]:
        """The job's progress outside the batches a wait watches, and each watched batch's expected size (the
        trigger adds what it sees of those)."""
        base: dict[str, Any] = {"batches_total": len(self.record.shards), "batches_done": 0, "done": 0, "total": 0}
        base.update(failed=0, tokens=0)
        for shard in self.record.shards:
            done, failed = shard.settled()
            last = shard.chain()[-1]
            base["done"] += done
            base["failed"] += failed
            base["total"] += shard.total_requests
            base["tokens"] += sum(a.total_tokens for a in shard.attempts if not a.running)
            if last.running:
                base["total"] -= last.requests  # the trigger counts the watched batch itself
            else:
                base["done"] += last.completed + last.failed
                base["failed"] += last.failed
                base["batches_done"] += 1 if last.ended else 0
        base["expected"] = {str(a.batch_id): a.requests for a in self.record.running()}
        return base

    def snapshot(self) -> Snapshot:
        """Where the whole job stands, for the progress lines of a wait in the worker."""
        base = self.progress_base()
        running = [self.seen.get(str(a.batch_id)) or {} for a in self.record.running()]
        from airflow_provider_openai_batch.progress import snapshot

        return snapshot(
            running,
            batches_total=len(self.record.shards) if len(self.record.shards) > 1 else None,
            base=base,
            expected=base["expected"],
        )


def window_seconds(completion_window: Any) -> float:
    """The completion window in seconds (``"24h"``: 86,400; the API offers no other today)."""
    text = str(completion_window)
    return float(int(text[:-1]) * 3600) if text.endswith("h") and text[:-1].isdigit() else 24 * 3600.0
