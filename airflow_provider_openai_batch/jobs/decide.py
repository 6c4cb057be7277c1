"""The decision table of a job: a pure function from the record, the policy and the clock to the next steps.

Nothing here does I/O. :func:`decide` looks at every shard's last attempt and answers with the actions to
apply now (the runner applies them with the hook and asks again) or, when none is left, how the job stands:
wait (for which batches, until when), done (with its verdict), or stopped for good. The same table serves a
job of one shard and of many, the first try and a retry, a polling task and a deferred one.

A shard's last attempt, once its batch ended:

======================================  ==================================================================
the batch ended                         next
======================================  ==================================================================
``completed``, requests failed and a    ``resubmit``: send the lines that did not finish (429, 5xx,
round of ``resubmit_unfinished`` left   expired) as the next attempt; none left: the shard is done
``completed`` otherwise                 the shard is done
``failed``, ``token_limit_exceeded``    ``requeue``: the same input again after a back-off (nothing was
                                        billed), up to :data:`MAX_TOKEN_REFUSALS` times per shard
``expired``, a round left               ``resubmit``
ended while this try watched it         ``stop``: the job ends with that batch's verdict. A cancel the
(``failed``, ``expired``, ``cancelled``)  task sees came from a person (the task itself cancels only when
                                        it is killed), so it is never undone
ended while no try watched it           ``repeat`` the same input when the batch billed nothing; else
                                        repeat with ``rebill_completed_requests``, else ``stop`` (refused)
======================================  ==================================================================

Then, in order: a shard to claim ("creating since", no batch id: a create a kill cut off) comes first; any
stop wins; with every shard done the job is done; past the deadline (``timeout`` from the job's first start)
or with a batch running longer than its completion window plus an hour, the job stops before any create;
without ``wait_for_completion`` the job is done once every batch passed ``validating`` (the phase at whose end
``token_limit_exceeded`` comes); else the queue admits creates in shard order within ``max_active_batches``
and ``max_enqueued_tokens`` (a shard waiting out a back-off holds the ones behind it), and what is left is a
wait.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from airflow_provider_openai_batch.jobs.record import JobRecord, Shard
from airflow_provider_openai_batch.statuses import CANCELLING, COMPLETED, EXPIRED, VALIDATING

#: How many batches one shard may have refused for the enqueued-token limit before the refusal stands.
MAX_TOKEN_REFUSALS = 20
#: The longest back-off before a refused shard is submitted again.
MAX_BACKOFF_SECONDS = 3600.0
#: A batch still running this long after its completion window: the API should have expired it.
STALE_MARGIN_SECONDS = 3600.0

CLAIM = "claim"
REQUEUE = "requeue"
RESUBMIT = "resubmit"
REPEAT = "repeat"
CREATE = "create"
#: Wake the wait when any batch ends; when all ended (or one ended other than completed); or once every batch
#: passed ``validating``.
WAKE_ANY, WAKE_ALL, WAKE_ADMITTED = "any", "all", "admitted"


@dataclass(frozen=True)
class Policy:
    """The operator's settings the table reads.

    :param try_number: The running try; tells an end seen under this try's watch from one between tries.
    :param deadline: Unix time after which nothing more is created and the job stops (``None``: no deadline).
    :param window_seconds: The batches' completion window, for the staleness bound.
    :param backoff_base: Seconds before the first repeat after a refusal; doubles per refusal, at most an hour.
    """

    try_number: int
    wait_for_completion: bool = True
    resubmit_unfinished: int = 0
    rebill_completed_requests: bool = False
    max_active_batches: int | None = None
    max_enqueued_tokens: int | None = None
    max_failed_fraction: float = 1.0
    deadline: float | None = None
    window_seconds: float = 24 * 3600.0
    backoff_base: float = 60.0


@dataclass(frozen=True)
class Action:
    """One step for the runner: ``kind`` on shard ``shard``.

    :param not_before: For ``requeue``: no create before this Unix time.
    :param rebill: For ``repeat``: the batch repeated billed requests (``rebill_completed_requests``).
    """

    kind: str
    shard: int
    not_before: float = 0.0
    rebill: bool = False


@dataclass(frozen=True)
class Wait:
    """What the job waits for: these batches (``wake``: any, all, or admitted), a back-off (``wake_at``), and
    at most until ``end_time``."""

    batch_ids: list[str]
    wake: str
    wake_at: float | None
    end_time: float | None


@dataclass(frozen=True)
class Stop:
    """The job ends without success, for good: a retry would meet the same end.

    :param reason: ``ended`` (a shard's batch ended for good), ``refused`` (a repeat would bill twice),
        ``deadline`` or ``stale``.
    :param shard: The shard it is about, if one.
    """

    reason: str
    message: str
    shard: int | None = None


@dataclass(frozen=True)
class Done:
    """Every shard is done (or, without ``wait_for_completion``, admitted). ``failure`` is the verdict's reason
    when the job's failed share is over ``max_failed_fraction``, else ``None``."""

    failure: str | None = None


@dataclass(frozen=True)
class Plan:
    """Apply ``actions`` and ask again; with none, ``outcome`` is where the job stands."""

    actions: list[Action] = field(default_factory=list)
    outcome: Wait | Stop | Done | None = None


def decide(record: JobRecord, policy: Policy, now: float) -> Plan:
    """The next steps of ``record`` under ``policy`` at ``now`` (see the module docstring)."""
    claims = [Action(CLAIM, s.index) for s in record.shards if s.last.creating_since and not s.last.batch_id]
    if claims:
        return Plan(claims)
    actions: list[Action] = []
    done = 0
    for shard in record.shards:
        if not shard.last.ended:
            continue
        step = _after_end(shard, len(record.shards), policy, now)
        if isinstance(step, Stop):
            return Plan(outcome=step)
        if step is None:
            done += 1
        else:
            actions.append(step)
    if actions:
        return Plan(actions)
    if done == len(record.shards):
        return Plan(outcome=_verdict(record, policy))
    if policy.deadline is not None and now >= policy.deadline:
        return Plan(outcome=Stop("deadline", f"the job was still running at its deadline: {_progress(record)}"))
    for attempt in record.running():
        if attempt.created_at and now >= attempt.created_at + policy.window_seconds + STALE_MARGIN_SECONDS:
            return Plan(
                outcome=Stop(
                    "stale",
                    f"batch {attempt.batch_id} is still {attempt.status} more than its completion window plus an hour "
                    "after its creation; the API should have ended it",
                )
            )
    if not policy.wait_for_completion and all(_admitted(s) for s in record.shards):
        return Plan(outcome=Done())
    creates, head_waits_until = _admit(record, policy, now)
    if creates:
        return Plan(creates)
    return Plan(outcome=_wait(record, policy, head_waits_until))


def _after_end(shard: Shard, shards: int, policy: Policy, now: float) -> Action | Stop | None:
    """The step after the shard's last attempt ended; ``None`` when the shard is done."""
    last = shard.last
    rounds_left = last.carried is None and shard.rounds < policy.resubmit_unfinished
    if last.carried == 0:
        return None  # nothing of it was left unfinished
    if last.status == COMPLETED:
        return Action(RESUBMIT, shard.index) if last.failed and rounds_left else None
    if last.refused_for_tokens:
        refusals = shard.token_refusals
        if refusals < MAX_TOKEN_REFUSALS:
            pause = min(MAX_BACKOFF_SECONDS, policy.backoff_base * 2 ** (refusals - 1))
            return Action(REQUEUE, shard.index, not_before=now + pause)
        return _ended(shard, shards, f" after {refusals} refusals for the enqueued-token limit")
    if last.status == EXPIRED and rounds_left:
        return Action(RESUBMIT, shard.index)
    if last.watched_in_try == policy.try_number:
        return _ended(shard, shards)
    # It ended while no try of this task watched it (the last try was killed, failed or cleared meanwhile).
    if last.completed == 0:
        return Action(REPEAT, shard.index)
    if policy.rebill_completed_requests:
        return Action(REPEAT, shard.index, rebill=True)
    return Stop(
        "refused",
        f"shard {shard.index + 1} of {shards}: batch {last.batch_id} ended {last.status} with {last.completed} of "
        f"{last.requests} "
        "requests completed and billed; sending its input again would bill those a second time, so no batch was "
        "created. Set rebill_completed_requests=True to send it all again"
        + ("" if last.status == "cancelled" else ", or resubmit_unfinished to send only the unfinished requests"),
        shard.index,
    )


def _ended(shard: Shard, shards: int, detail: str = "") -> Stop:
    last = shard.last
    codes = f" ({', '.join(last.error_codes)})" if last.error_codes else ""
    message = f"shard {shard.index + 1} of {shards}: batch {last.batch_id} ended {last.status}{codes}{detail}"
    return Stop("ended", message, shard.index)


def _verdict(record: JobRecord, policy: Policy) -> Done:
    if not policy.wait_for_completion:
        return Done()
    total = record.requests
    failed = sum(s.failed for s in record.shards)
    if total and failed / total > policy.max_failed_fraction:
        return Done(
            f"{failed / total:.1%} of the job's {total} requests failed ({failed}, each in its last attempt), more "
            f"than max_failed_fraction={policy.max_failed_fraction:g} allows"
        )
    return Done()


def _admitted(shard: Shard) -> bool:
    """The shard's batch passed ``validating`` (no ``token_limit_exceeded`` refusal can come any more) and is not
    being cancelled (it will end without its results, and the table decides then)."""
    return shard.last.batch_id is not None and shard.last.status not in (None, VALIDATING, CANCELLING)


def _admit(record: JobRecord, policy: Policy, now: float) -> tuple[list[Action], float | None]:
    """The creates the queue admits now, in shard order; and when the head of the queue's back-off ends, if it
    holds the queue."""
    running = [s for s in record.shards if s.last.running]
    count, tokens = len(running), sum(s.tokens for s in running)
    creates: list[Action] = []
    for shard in record.shards:
        if shard.last.batch_id or shard.last.ended:
            continue
        if shard.last.not_before > now:
            return creates, shard.last.not_before  # first in, first out: the rest wait behind it
        if policy.max_active_batches is not None and count >= policy.max_active_batches:
            break
        if policy.max_enqueued_tokens is not None and count and tokens + shard.tokens > policy.max_enqueued_tokens:
            break
        creates.append(Action(CREATE, shard.index))
        count += 1
        tokens += shard.tokens
    return creates, None


def _wait(record: JobRecord, policy: Policy, wake_at: float | None) -> Wait:
    running = record.running()
    queued = any(not s.last.batch_id for s in record.shards)
    more_rounds = policy.resubmit_unfinished > 0
    if not policy.wait_for_completion:
        wake = WAKE_ADMITTED
    elif queued or more_rounds:
        wake = WAKE_ANY  # an end may free room in the queue, or leave requests to send again
    else:
        wake = WAKE_ALL
    ends = [a.created_at + policy.window_seconds + STALE_MARGIN_SECONDS for a in running if a.created_at]
    if policy.deadline is not None:
        ends.append(policy.deadline)
    return Wait([str(a.batch_id) for a in running], wake, wake_at, min(ends) if ends else None)


def admission_interval(poll_interval: float, polls: int) -> float:
    """The pause after the ``polls``-th check of a wait for admission: validation usually takes seconds, so
    the checks start half a second apart and double up to ``poll_interval``."""
    return min(float(poll_interval), 0.5 * 2 ** min(max(polls - 1, 0), 16))


def _progress(record: JobRecord) -> str:
    summary = record.summary()
    return (
        f"{summary['completed']} of {summary['requests']} requests done in {len(record.shards)} shard(s); "
        f"batches {summary['statuses']}"
    )
