"""The job record: one JSON document per task instance, kept in Airflow's task state store.

It holds everything a resumed or retried task needs, whatever moved it (a deferral ending, a triggerer or
worker restart, ``airflow dags test``, a retry, a clear): when the job started, its shards, and every attempt of
every shard with its input file, idempotency key, batch id, "creating since" mark and last seen outcome.

A shard's **attempts** run in order; only the last one may still be open. An attempt is ``full`` (the shard's
whole input: the first try, or a repeat after a refusal that billed nothing) or ``unfinished`` (only the lines
of the previous attempt that did not finish). Everything else (is the shard queued, running, ended; how many
requests finally failed) is derived from the attempts, never stored twice.

JSON primitives only, versioned by :data:`VERSION`. Import-free beyond the standard library.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from itertools import pairwise
from typing import Any

from airflow_provider_openai_batch.statuses import CANCELLING, FAILED, TERMINAL

#: The record's format; a record of another version (or of none) is converted by :mod:`.legacy` or ignored.
VERSION = 2
FULL = "full"
UNFINISHED = "unfinished"
#: The error code of a batch refused at validation for the organisation's enqueued-token limit (never billed).
TOKEN_LIMIT_EXCEEDED = "token_limit_exceeded"


@dataclass
class Attempt:
    """One batch of a shard (or the intent to create one).

    :param n: 1-based position among the shard's attempts; part of the idempotency key.
    :param kind: :data:`FULL` or :data:`UNFINISHED`.
    :param key: The idempotency key stored in the batch's metadata.
    :param requests: Request lines of its input file (0 while unknown).
    :param file_id: Its uploaded input file (``None`` until uploaded).
    :param batch_id: Its batch, once created (or claimed by its key).
    :param creating_since: Unix time a create began whose answer was not recorded yet (a kill may have cut it off).
    :param not_before: No create before this Unix time (a back-off after a refusal).
    :param resubmit_of: The batch whose unfinished requests this attempt sends again.
    :param status: The batch's status as last seen (``None`` before creation).
    :param created_at: The batch's creation time (for the staleness bound).
    :param completed: Requests completed successfully (billed), as last seen.
    :param failed: Requests failed, as last seen.
    :param error_codes: The batch-level error codes (e.g. ``token_limit_exceeded``).
    :param watched_in_try: The last try of the task that saw this batch still running: an end seen by that same
        try happened under its watch (a person cancelled it, the API failed it); any other end happened between
        tries, while no task watched.
    :param carried: Once the lines that did not finish were counted: how many went on to the next attempt
        (``0``: none, the shard is done with this attempt).
    :param model: The model the batch reports (for the lineage facet's models and cost).
    """

    n: int
    kind: str
    key: str
    requests: int = 0
    file_id: str | None = None
    batch_id: str | None = None
    creating_since: float | None = None
    not_before: float = 0.0
    resubmit_of: str | None = None
    status: str | None = None
    created_at: float | None = None
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    error_codes: list[str] = field(default_factory=list)
    watched_in_try: int | None = None
    carried: int | None = None
    model: str | None = None

    @property
    def ended(self) -> bool:
        return self.batch_id is not None and self.status in TERMINAL

    @property
    def running(self) -> bool:
        """Created and not ended (a status the API adds later counts as running)."""
        return self.batch_id is not None and self.status not in TERMINAL

    @property
    def refused_for_tokens(self) -> bool:
        return self.status == FAILED and TOKEN_LIMIT_EXCEEDED in self.error_codes

    def observe(self, batch: dict[str, Any], try_number: int) -> None:
        """Take a batch's state as seen now (a retrieve, a list page or a trigger's event)."""
        counts = batch.get("request_counts") or {}
        usage = batch.get("usage") or {}
        self.status = str(batch.get("status"))
        self.created_at = batch.get("created_at") or self.created_at
        self.completed = int(counts.get("completed") or 0)
        self.failed = int(counts.get("failed") or 0)
        if counts.get("total") and not self.requests:
            self.requests = int(counts["total"])
        self.input_tokens = int(usage.get("input_tokens") or 0)
        self.output_tokens = int(usage.get("output_tokens") or 0)
        self.total_tokens = int(usage.get("total_tokens") or 0)
        self.error_codes = [str(e.get("code")) for e in ((batch.get("errors") or {}).get("data") or [])][:5]
        self.model = batch.get("model") or self.model
        # First seen already cancelling, the cancel was asked for before this try watched it.
        if self.status not in TERMINAL and self.status != CANCELLING:
            self.watched_in_try = try_number


@dataclass
class Shard:
    """A piece of the input that fits one batch, and its attempts (never empty).

    :param index: 0-based position in the job; shard 0 holds the first requests.
    :param digest: SHA-256 of its content (``""`` for an input given as an uploaded file id).
    :param requests: Request lines (0 while unknown: an uploaded file id's count comes from its batch).
    :param bytes: Its size.
    :param tokens: Its input-token estimate (:func:`~airflow_provider_openai_batch.split.estimate_tokens`).
    """

    index: int
    digest: str
    requests: int
    bytes: int
    tokens: int
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def last(self) -> Attempt:
        return self.attempts[-1]

    @property
    def total_requests(self) -> int:
        return self.requests or self.attempts[0].requests

    def chain(self) -> list[Attempt]:
        """The attempts whose results stand: an unfinished round continues the attempt before it (its requests
        are that attempt's unfinished lines); any other attempt repeats the one before it (the same lines) and
        replaces it. Together they hold each request of the shard exactly once."""
        chain: list[Attempt] = []
        for attempt in self.attempts:
            if chain and not (attempt.resubmit_of and attempt.resubmit_of == chain[-1].batch_id):
                chain.pop()
            chain.append(attempt)
        return chain

    @property
    def succeeded(self) -> int:
        """Requests that succeeded: a request is sent again only while it has not succeeded."""
        return sum(a.completed for a in self.chain())

    def settled(self) -> tuple[int, int]:
        """(finished, failed) requests of the attempts before the last in :meth:`chain`: each finished what it
        did not hand on to the next round, and failed what of that it did not complete."""
        chain = self.chain()
        done = failed = 0
        for attempt, following in pairwise(chain):
            done += attempt.requests - following.requests
            failed += attempt.requests - attempt.completed - following.requests
        return done, failed

    @property
    def failed(self) -> int:
        """Requests failed for good so far; once the last attempt ended, every request it did not complete."""
        last = self.chain()[-1]
        return self.settled()[1] + (last.requests - last.completed if last.ended else last.failed)

    @property
    def rounds(self) -> int:
        """Rounds of ``resubmit_unfinished``: attempts that continue the attempt before them (a repeat of a round
        after a refusal is the same round)."""
        return sum(1 for before, after in pairwise(self.attempts) if after.resubmit_of == before.batch_id)

    @property
    def token_refusals(self) -> int:
        return sum(1 for a in self.attempts if a.refused_for_tokens)

    def batch_ids(self) -> list[str]:
        return [a.batch_id for a in self.attempts if a.batch_id]


@dataclass
class JobRecord:
    """A job of one or more shards (see the module docstring).

    :param job_key: The job's identity: the task instance and a digest of its input
        (:func:`~airflow_provider_openai_batch.jobs.keys.job_key`).
    :param started_at: When the job first started (Unix time): its deadline counts from here in every try.
    :param endpoint: The batch endpoint, in the back end's shape.
    :param layout: The split settings that cut the shards, to name what changed when they no longer match.
    """

    job_key: str
    started_at: float
    endpoint: str
    shards: list[Shard]
    layout: dict[str, Any] = field(default_factory=dict)
    version: int = VERSION

    @property
    def requests(self) -> int:
        return sum(s.total_requests for s in self.shards)

    def batch_ids(self) -> list[str]:
        """Every batch of the job, shard by shard and attempt by attempt."""
        return [b for s in self.shards for b in s.batch_ids()]

    def final_batch_ids(self) -> list[str]:
        """Each shard's latest batch, in shard order: what the task returns."""
        return [s.batch_ids()[-1] for s in self.shards if s.batch_ids()]

    def running(self) -> list[Attempt]:
        return [s.last for s in self.shards if s.last.running]

    def has_batches(self) -> bool:
        return any(a.batch_id or a.creating_since for s in self.shards for a in s.attempts)

    def summary(self) -> dict[str, Any]:
        """The job as pushed to XCom ``job``: counts over every request of the job as it stands, each request
        counted once, in its last attempt."""
        statuses: dict[str, int] = {}
        for shard in self.shards:
            status = str(shard.last.status)
            statuses[status] = statuses.get(status, 0) + 1
        attempts = [a for s in self.shards for a in s.attempts]
        return {
            "shards": len(self.shards),
            "batches": len(self.batch_ids()),
            "batch_ids": self.final_batch_ids(),
            "statuses": statuses,
            "requests": self.requests,
            "completed": sum(s.succeeded for s in self.shards),
            # A request counts as failed only when its last attempt failed (or ended without running it).
            "failed": sum(s.failed for s in self.shards),
            "input_tokens": sum(a.input_tokens for a in attempts),
            "output_tokens": sum(a.output_tokens for a in attempts),
            "total_tokens": sum(a.total_tokens for a in attempts),
            "token_limit_requeues": sum(s.token_refusals for s in self.shards),
            "resubmitted_rounds": sum(s.rounds for s in self.shards),
        }

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: Any) -> JobRecord | None:
        """The record in ``value``, or ``None`` when it is not a record of this version (unknown keys are
        ignored, so a record written by a later release with more fields still reads)."""
        if not isinstance(value, dict) or value.get("version") != VERSION:
            return None
        try:
            shards = [
                Shard(
                    **{**_known(Shard, s), "attempts": [Attempt(**_known(Attempt, a)) for a in s.get("attempts") or []]}
                )
                for s in value["shards"]
            ]
            record = cls(**{**_known(cls, value), "shards": shards})
        except (KeyError, TypeError):
            return None
        return record if all(s.attempts for s in shards) else None


def _known(kind: type, value: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(kind)}
    return {k: v for k, v in value.items() if k in names}
