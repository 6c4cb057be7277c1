"""A job of several batches: the shards of one large input, submitted within limits, waited for as one.

:class:`~airflow_provider_openai_batch.operators.batch.CreateBatchOperator` runs an input that does not fit one
batch as a job: it splits it (:mod:`~airflow_provider_openai_batch.split`), uploads every shard, then creates
the shards' batches in order as the queue allows, and waits for them together.

**The queue.** A shard's batch is created only while fewer than ``max_active_batches`` batches of the job are
running and the input-token estimates of the running ones plus this shard's stay within
``max_enqueued_tokens`` (an estimate: bytes of the shard's lines / 4, see
:func:`~airflow_provider_openai_batch.split.estimate_tokens`). Shards go in input order; one that does not
fit waits, and so do the ones behind it. A shard whose batch fails with ``token_limit_exceeded`` (refused at
validation, never billed: the organisation's queue was fuller than the estimate knew, e.g. from other jobs)
goes back to the head of the queue with a back-off (``poll_interval`` doubling per refusal, at most an hour)
and a new attempt, at most :data:`TOKEN_LIMIT_ATTEMPTS` times.

**Retry-safe per shard.** The job's record in the task state store (``openai_batch_job``) holds every shard's
uploaded file, attempt and batch id, written before each create ("creating since T") and after it. Each
shard's batch carries its own idempotency key (job key, shard number, attempt) in its metadata. A retried or
resumed task reads the record, re-attaches to every shard already created, finds a create cut off by a kill
through its key, and creates only the missing ones: never two batches for one shard. Without a record (no
store, or one emptied), a retry finds the job's batches of the last 25 hours by their keys in one pass over
the batch list.

**The wait.** Deferred, the triggerer polls the running batches and wakes the task when any of them ends
while shards are queued (or a back-off is over), else when all ended or one failed; the task then records
the ends, creates the next shards and defers again. The triggerer never creates a batch. Without
``deferrable`` the same steps run in the worker, one poll every ``poll_interval``. Without
``wait_for_completion`` the task still waits (the same way) until every shard's batch is created and has
passed ``validating``: a ``token_limit_exceeded`` refusal comes at the end of that phase, and the shard must
then be re-queued by the task; so the task returns once no refusal can come any more, not when the last create
returned.

**A shard that ended for good.** When a shard's batch ends ``failed`` (other than a ``token_limit_exceeded``
refusal with attempts left), ``expired`` or ``cancelled``, the job can only fail (a retry re-attaches to the
same batch), so the task creates no further shard and fails at once without retries, naming the shard, its
batch and status, and the shards never submitted. Batches of the job still running are *not* cancelled (as at
the deadline: cancelling is what ``cancel_on_kill`` asks for on a kill only); the error names them so a user
can cancel them, and their results can still be exported.

**Kill.** With ``cancel_on_kill`` every running batch of the job is cancelled. **Timeout**: ``timeout``
counts from the job's start (kept in the record across retries); it is checked before any create, so no
shard is submitted past it (a task resumed late fails without creating one); when it passes the task fails without
retries and the running batches go on at the API (cancelled first with ``cancel_on_kill`` only on a kill).

Import-light: the operator imports this at execute time only.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

from airflow_provider_openai_batch.statuses import COMPLETED, TERMINAL, UNSUCCESSFUL, VALIDATING

if TYPE_CHECKING:
    from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
    from airflow_provider_openai_batch.split import SplitResult

#: The task state store key holding the job's record.
JOB_STATE_KEY = "openai_batch_job"
#: The error code of a batch refused for the organisation's enqueued-token limit.
TOKEN_LIMIT_EXCEEDED = "token_limit_exceeded"
#: How many batches one shard may have refused for the token limit before the refusal stands.
TOKEN_LIMIT_ATTEMPTS = 20
#: The longest back-off before a refused shard is submitted again.
MAX_BACKOFF_SECONDS = 3600.0


def shard_key(job_key: str, index: int, attempt: int) -> str:
    """The idempotency key of attempt ``attempt`` (from 1) of shard ``index`` (from 0)."""
    return hashlib.sha256(f"{job_key}:shard:{index}:attempt:{attempt}".encode()).hexdigest()


def new_state(job_key: str, split: SplitResult) -> dict[str, Any]:
    """A job's record before anything was uploaded: JSON only (it goes to the state store and the trigger)."""
    return {
        "job_key": job_key,
        "started_at": time.time(),
        "requests": split.requests,
        "shards": [
            {
                "index": shard.index,
                "digest": shard.digest,
                "requests": shard.requests,
                "bytes": shard.bytes,
                "tokens": shard.tokens,
                "file_id": None,
                "attempt": 1,
                "batch_id": None,
                "creating_since": None,
                "not_before": 0.0,
                "history": [],  # earlier attempts' batches (refused for the token limit)
                "status": None,
                "done": 0,
                "failed": 0,
                "total_tokens": 0,
            }
            for shard in split.shards
        ],
    }


def queue_rounds(tokens: list[int], max_active_batches: int | None, max_enqueued_tokens: int | None) -> int:
    """How many rounds the queue needs at least: shards (their token estimates, in order) packed into rounds of
    at most ``max_active_batches`` shards and ``max_enqueued_tokens`` tokens, as :meth:`Job.submit` admits them."""
    rounds, count, total = 0, 0, 0
    for shard_tokens in tokens:
        full = max_active_batches is not None and count >= max_active_batches
        over = max_enqueued_tokens is not None and count and total + shard_tokens > max_enqueued_tokens
        if not rounds or full or over:
            rounds, count, total = rounds + 1, 0, 0
        count += 1
        total += shard_tokens
    return rounds


def same_layout(state: dict[str, Any] | None, split: SplitResult) -> bool:
    """Whether a stored record describes these very shards (same content, same cuts)."""
    if not state:
        return False
    return [s.get("digest") for s in state.get("shards") or []] == [s.digest for s in split.shards]


class JobLedger:
    """The job's record in the task state store; a failing store is logged and survived (the keys in the
    batches' metadata still lead back to them).

    :param context: The task's context (``task_state_store`` is absent before Airflow 3.3 and in bare tests).
    :param job_key: The job's idempotency key.
    :param log: Where to say what the store could not do.
    """

    def __init__(self, context: Any, job_key: str, log: Any) -> None:
        self._store = context.get("task_state_store")
        self.job_key = job_key
        self.log = log

    def read(self) -> dict[str, Any] | None:
        if self._store is None:
            return None
        try:
            record = self._store.get(JOB_STATE_KEY)
        except Exception as err:
            self.log.warning("Could not read the task state store (%s); searching the batch list instead", err)
            self._store = None
            return None
        return record if isinstance(record, dict) and record.get("job_key") == self.job_key else None

    def write(self, state: dict[str, Any]) -> None:
        if self._store is None:
            return
        try:
            self._store.set(JOB_STATE_KEY, state)
        except Exception as err:
            self.log.warning("Could not write the task state store (%s); a retry will search the batch list", err)


def recover_from_batch_list(hook: OpenAIBatchHook, state: dict[str, Any], since: float) -> int:
    """Attach the batches of this job created since ``since`` to their shards by their idempotency keys, in
    one pass over the batch list (newest first); the newest attempt of a shard wins, earlier ones become its
    history. Returns how many shards were found."""
    from airflow_provider_openai_batch import api

    keys = {
        shard_key(state["job_key"], shard["index"], attempt): (shard["index"], attempt)
        for shard in state["shards"]
        for attempt in range(1, TOKEN_LIMIT_ATTEMPTS + 1)
    }
    found: dict[int, list[tuple[int, Any]]] = {}
    for batch in hook.iter_batches():
        if batch.created_at is not None and batch.created_at < since:
            break
        where = keys.get((batch.metadata or {}).get(api.IDEMPOTENCY_METADATA_KEY, ""))
        if where is not None:
            found.setdefault(where[0], []).append((where[1], batch))
    for index, attempts in found.items():
        attempts.sort(key=lambda pair: pair[0])
        shard = state["shards"][index]
        attempt, batch = attempts[-1]
        shard.update(attempt=attempt, batch_id=batch.id, file_id=batch.input_file_id)
        shard["history"] = [b.id for _, b in attempts[:-1]]
        _record(shard, batch.model_dump(mode="json"))
    return len(found)


def _record(shard: dict[str, Any], batch: dict[str, Any]) -> None:
    counts = batch.get("request_counts") or {}
    shard["status"] = batch.get("status")
    shard["done"] = int(counts.get("completed") or 0) + int(counts.get("failed") or 0)
    shard["failed"] = int(counts.get("failed") or 0)
    shard["total_tokens"] = int((batch.get("usage") or {}).get("total_tokens") or 0)
    shard["error_codes"] = [e.get("code") for e in ((batch.get("errors") or {}).get("data") or [])][:5]


class Job:
    """One job's steps on its record; the operator drives them (see the module docstring).

    :param state: The job's record (changed in place).
    :param ledger: Where the record is kept between tries.
    :param log: The task's log.
    :param max_active_batches: Most batches of the job running at once (``None``: no bound).
    :param max_enqueued_tokens: Most estimated input tokens of the job's running batches (``None``: no bound).
    :param backoff_base: Seconds before the first re-submission of a shard refused for the token limit.
    """

    def __init__(
        self,
        state: dict[str, Any],
        ledger: JobLedger,
        log: Any,
        *,
        max_active_batches: int | None,
        max_enqueued_tokens: int | None,
        backoff_base: float,
    ) -> None:
        self.state = state
        self.ledger = ledger
        self.log = log
        self.max_active_batches = max_active_batches
        self.max_enqueued_tokens = max_enqueued_tokens
        self.backoff_base = backoff_base

    @property
    def shards(self) -> list[dict[str, Any]]:
        return list(self.state["shards"])

    def active(self) -> list[dict[str, Any]]:
        return [s for s in self.shards if s["batch_id"] and s["status"] not in TERMINAL]

    def queued(self) -> list[dict[str, Any]]:
        return [s for s in self.shards if not s["batch_id"]]

    def finished(self) -> bool:
        return all(s["batch_id"] and s["status"] in TERMINAL for s in self.shards)

    def ended_for_good(self) -> dict[str, Any] | None:
        """The first shard whose batch ended other than ``completed`` and will not be re-queued (anything but a
        ``token_limit_exceeded`` refusal with attempts left; call after :meth:`requeue_refused`): the job can
        then only fail, so nothing more should be created."""
        for shard in self.shards:
            if shard["batch_id"] and shard["status"] in UNSUCCESSFUL:
                return shard
        return None

    def admitted(self) -> bool:
        """Every shard has a batch past ``validating``, the phase at whose end a batch over the enqueued-token
        limit is refused: no refusal can come any more that the job would have to re-queue."""
        return all(s["batch_id"] and s["status"] not in (None, VALIDATING) for s in self.shards)

    def batch_ids(self) -> list[str]:
        """Every batch of the job so far, shard by shard: refused attempts first, the current one last."""
        return [b for s in self.shards for b in [*s["history"], *([s["batch_id"]] if s["batch_id"] else [])]]

    def final_batch_ids(self) -> list[str]:
        return [str(s["batch_id"]) for s in self.shards if s["batch_id"]]

    # ----------------------------------------------------------------------------------------- steps

    def upload(self, hook: OpenAIBatchHook, paths: list[str], expires_after: int | None) -> None:
        """Upload every shard not uploaded yet (files are free; batches are what is billed)."""
        for shard, path in zip(self.state["shards"], paths, strict=True):
            if shard["file_id"]:
                continue
            uploaded = hook.upload_file(path, purpose="batch", expires_after=expires_after)
            shard["file_id"] = uploaded.id
            self.ledger.write(self.state)

    def claim_cut_off_creates(self, hook: OpenAIBatchHook) -> None:
        """A create a kill cut off ("creating since T", no batch id): find its batch by its key, if it landed."""
        from airflow_provider_openai_batch.operators.reattach import SKEW_SECONDS

        for shard in self.shards:
            if shard["batch_id"] or not shard["creating_since"]:
                continue
            key = shard_key(self.state["job_key"], shard["index"], shard["attempt"])
            found = hook.claim_batch_by_idempotency_key(key, float(shard["creating_since"]) - SKEW_SECONDS)
            shard["creating_since"] = None
            if found is not None:
                self.log.info(
                    "Shard %d: re-attaching to batch %s created before the task stopped", shard["index"] + 1, found.id
                )
                shard["batch_id"] = found.id
                _record(shard, found.model_dump(mode="json"))
            self.ledger.write(self.state)

    def refresh(self, hook: OpenAIBatchHook, seen: list[dict[str, Any]] | None = None) -> None:
        """Update the running shards: from ``seen`` (a trigger event's batches) where given, else by a GET."""
        by_id = {str(b.get("id")): b for b in seen or []}
        for shard in self.active():
            batch = by_id.get(str(shard["batch_id"]))
            if batch is None:  # the trigger's look is as fresh as a GET would be
                batch = hook.retrieve_batch(str(shard["batch_id"])).model_dump(mode="json")
            _record(shard, batch)

    def requeue_refused(self, now: float | None = None) -> None:
        """Put every shard whose batch failed with ``token_limit_exceeded`` back in the queue, with back-off."""
        now = time.time() if now is None else now
        for shard in self.shards:
            if shard["status"] != "failed" or TOKEN_LIMIT_EXCEEDED not in (shard.get("error_codes") or []):
                continue
            if shard["attempt"] >= TOKEN_LIMIT_ATTEMPTS:
                continue  # the refusal stands: judged with the rest at the end
            pause = min(MAX_BACKOFF_SECONDS, self.backoff_base * 2 ** (shard["attempt"] - 1))
            self.log.warning(
                "Shard %d: batch %s was refused for the enqueued-token limit (never billed); back in the queue, "
                "attempt %d in %.0fs",
                shard["index"] + 1,
                shard["batch_id"],
                shard["attempt"] + 1,
                pause,
            )
            shard["history"].append(shard["batch_id"])
            shard.update(batch_id=None, status=None, attempt=shard["attempt"] + 1, not_before=now + pause)
            shard.update(done=0, failed=0, total_tokens=0, error_codes=[])
        self.ledger.write(self.state)

    def submit(self, create: Any, now: float | None = None) -> int:
        """Create the batches of the queued shards, in order, while the limits allow; return how many.

        :param create: ``create(file_id, idempotency_key) -> batch`` (the operator's create path).
        """
        now = time.time() if now is None else now
        active = self.active()
        tokens = sum(s["tokens"] for s in active)
        made = 0
        total = len(self.state["shards"])
        for shard in self.queued():
            if float(shard["not_before"] or 0) > now:
                break  # first in, first out: the head waits out its back-off and the rest wait behind it
            if self.max_active_batches is not None and len(active) >= self.max_active_batches:
                break
            if self.max_enqueued_tokens is not None and active and tokens + shard["tokens"] > self.max_enqueued_tokens:
                break
            key = shard_key(self.state["job_key"], shard["index"], shard["attempt"])
            shard["creating_since"] = time.time()
            self.ledger.write(self.state)
            batch = create(str(shard["file_id"]), key)
            shard.update(batch_id=batch.id, creating_since=None)
            _record(shard, batch.model_dump(mode="json"))
            self.ledger.write(self.state)
            self.log.info(
                "Shard %d/%d (%d requests, ~%d input tokens): batch %s",
                shard["index"] + 1,
                total,
                shard["requests"],
                shard["tokens"],
                batch.id,
            )
            active.append(shard)
            tokens += shard["tokens"]
            made += 1
        return made

    def wake_at(self, now: float | None = None) -> float | None:
        """When the head of the queue's back-off is over, if it waits for one at ``now``.

        Give the ``now`` that :meth:`submit` judged the back-off by: read again later, a back-off that ended in
        between would be neither submitted nor waited for, and the wait would have nothing to end it."""
        now = time.time() if now is None else now
        queued = self.queued()
        if not queued:
            return None
        head = float(queued[0]["not_before"] or 0)
        return head if head > now else None

    def progress(self) -> dict[str, Any]:
        """The progress of the shards a wait does not watch, and each watched batch's expected size."""
        watched = self.active()
        others = [s for s in self.shards if s not in watched]
        return {
            "batches_total": len(self.state["shards"]),
            "batches_done": sum(1 for s in others if s["batch_id"] and s["status"] in TERMINAL),
            "done": sum(s["done"] for s in others),
            "total": sum(s["requests"] for s in others),
            "failed": sum(s["failed"] for s in others),
            "tokens": sum(s["total_tokens"] for s in others),
            "expected": {str(s["batch_id"]): s["requests"] for s in watched},
        }

    def totals(self) -> dict[str, Any]:
        """The progress of every shard, as recorded at the last refresh."""
        return {
            "batches_done": sum(1 for s in self.shards if s["batch_id"] and s["status"] in TERMINAL),
            "done": sum(s["done"] for s in self.shards),
            "total": self.state["requests"],
            "failed": sum(s["failed"] for s in self.shards),
            "tokens": sum(s["total_tokens"] for s in self.shards),
        }

    def summary(self, finals: list[dict[str, Any]]) -> dict[str, Any]:
        """The job summary pushed to XCom ``job``."""
        statuses: dict[str, int] = {}
        for batch in finals:
            statuses[str(batch.get("status"))] = statuses.get(str(batch.get("status")), 0) + 1
        counts = [b.get("request_counts") or {} for b in finals]
        usage = [b.get("usage") or {} for b in finals]
        return {
            "shards": len(self.state["shards"]),
            "batches": len(self.batch_ids()),
            "batch_ids": self.final_batch_ids(),
            "statuses": statuses,
            "requests": self.state["requests"],
            "completed": sum(int(c.get("completed") or 0) for c in counts),
            "failed": sum(int(c.get("failed") or 0) for c in counts),
            "input_tokens": sum(int(u.get("input_tokens") or 0) for u in usage),
            "output_tokens": sum(int(u.get("output_tokens") or 0) for u in usage),
            "total_tokens": sum(int(u.get("total_tokens") or 0) for u in usage),
            "token_limit_requeues": sum(len(s["history"]) for s in self.shards),
        }


def judge_job(finals: list[dict[str, Any]], max_failed_fraction: float) -> None:
    """Raise :class:`BatchNotSuccessfulError` unless every shard's batch completed and the failed share of the
    job's requests stays within ``max_failed_fraction``."""
    from airflow_provider_openai_batch.exceptions import BatchNotSuccessfulError
    from airflow_provider_openai_batch.outcome import describe, judge

    bad = [b for b in finals if b.get("status") != COMPLETED]
    if bad:
        reasons = []
        for batch in bad[:5]:
            try:
                judge(batch, 1.0)
            except BatchNotSuccessfulError as err:
                reasons.append(str(err))
        raise BatchNotSuccessfulError(
            f"{len(bad)} of the job's {len(finals)} batches did not complete: " + " | ".join(reasons), bad[0]
        )
    total = sum(int((b.get("request_counts") or {}).get("total") or 0) for b in finals)
    failed = sum(int((b.get("request_counts") or {}).get("failed") or 0) for b in finals)
    if total and failed / total > max_failed_fraction:
        raise BatchNotSuccessfulError(
            f"{failed / total:.1%} of the job's {total} requests failed, more than max_failed_fraction="
            f"{max_failed_fraction:g} allows; last batch: {describe(finals[-1])}",
            finals[-1],
        )
