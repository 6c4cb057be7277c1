"""Finding the batch an earlier try of the same task instance created, so a retry never bills twice.

Two records lead back to it. The task state store (Airflow 3.3+, ``context["task_state_store"]``), which
outlives a killed worker: before the create POST the operator writes "creating since T", after it the batch
id. And the batch's own metadata, which carries the idempotency key. A retry reads the store: a batch id is
one ``GET``; "creating since T" (the worker died around the POST) is one list pass over the batches created
since T; nothing on a first try means no earlier try created a batch for this input. Only a retry that finds
no record (no store, a failing one, or one emptied since) searches the API's batch list more widely, over the
24 h completion window plus slack.

Import-light: operator modules import this at execute time only.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
    from airflow_provider_openai_batch.models import Batch

#: The task state store key holding this task instance's create record.
STATE_KEY = "openai_batch"
#: Without a record in the task state store, a retry searches the batches created this long ago: the 24 h completion
#: window, in which an earlier try's batch may still be running, plus an hour of slack.
FALLBACK_WINDOW_SECONDS = 25 * 3600
#: Clock skew allowed between this worker and the API when comparing creation times.
SKEW_SECONDS = 300

REATTACH_CHOICES = ("auto", "never")


def idempotency_key(context: Context, input_digest: str = "", reattach: str = "auto") -> str:
    """A key stable across the tries of one task instance with the same input: dag id, task id, run id,
    map index and a digest of the input, hashed. A cleared task whose input changed gets a new batch.

    With ``reattach="never"`` the try number is part of the key, so every try makes its own batch.
    """
    ti = context["ti"]
    identity: list[Any] = [ti.dag_id, ti.task_id, ti.run_id, getattr(ti, "map_index", -1), input_digest]
    if reattach == "never":
        identity.append(ti.try_number or 1)
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()


class CreateLedger:
    """This task instance's create record in the task state store; every failure of the store is logged and
    survived, since the batch's metadata still leads back to it.

    :param context: The task's context (``task_state_store`` is absent before Airflow 3.3 and in bare tests).
    :param key: The idempotency key of this input.
    :param log: Where to say what the store could not do.
    """

    def __init__(self, context: Context, key: str, log: Any) -> None:
        self._store = context.get("task_state_store")  # type: ignore[call-overload]
        self.key = key
        self.log = log
        #: The record as last read for this key (``None`` before a read or when there is none).
        self.record: dict[str, Any] | None = None

    def read(self) -> dict[str, Any] | None:
        """The record for this key, or ``None`` (no record, another input's record, or no store)."""
        if self._store is None:
            return None
        try:
            record = self._store.get(STATE_KEY)
        except Exception as err:  # the store is an optimisation: the metadata search still works
            self.log.warning("Could not read the task state store (%s); searching the batch list instead", err)
            self._store = None
            return None
        self.record = record if isinstance(record, dict) and record.get("idempotency_key") == self.key else None
        return self.record

    def creating(self, key: str | None = None, rounds: list[str] | None = None) -> None:
        """Say, before the POST, that a create is under way, since when, and under which key (a later round
        of ``resubmit_unfinished`` has a key of its own)."""
        self._write(
            {
                "idempotency_key": self.key,
                "create_started_at": time.time(),
                "batch_id": None,
                "creating_key": key or self.key,
                "rounds": list(rounds or []),
            }
        )

    def created(self, batch_id: str, started_at: float, rounds: list[str] | None = None) -> None:
        """Record the batch a create made; ``rounds`` lists every round's batch so far, this one last."""
        self._write(
            {
                "idempotency_key": self.key,
                "create_started_at": started_at,
                "batch_id": batch_id,
                "rounds": list(rounds or [batch_id]),
            }
        )

    def _write(self, record: dict[str, Any]) -> None:
        if self._store is None:
            return
        try:
            self._store.set(STATE_KEY, record)
        except Exception as err:
            self.log.warning("Could not write the task state store (%s); a retry will search the batch list", err)


def round_key(key: str, number: int) -> str:
    """The idempotency key of round ``number`` (1-based) of one input: the input's own key for the first."""
    return key if number <= 1 else hashlib.sha256(f"{key}:round:{number}".encode()).hexdigest()


def find_earlier_batch(hook: OpenAIBatchHook, ledger: CreateLedger, try_number: int) -> tuple[Batch | None, list[str]]:
    """The batch an earlier try (or an earlier run of a cleared task) created for the same input, if any, and
    the rounds so far ending with it: the latest round's, when the input was re-run in rounds.

    Several batches carrying one key (creates that timed out and were carried out late) are settled: the
    oldest live one is kept and the others are cancelled (:meth:`OpenAIBatchHook.claim_batch_by_idempotency_key`).
    """
    from airflow_provider_openai_batch.exceptions import NotFoundError

    record = ledger.read()
    rounds = [str(b) for b in ((record or {}).get("rounds") or [])]
    if record and record.get("batch_id"):
        try:
            return hook.retrieve_batch(str(record["batch_id"])), rounds or [str(record["batch_id"])]
        except NotFoundError:  # deleted, or another project's: look for the key instead
            pass
    if record:
        since = float(record.get("create_started_at") or time.time()) - SKEW_SECONDS
        found = hook.claim_batch_by_idempotency_key(str(record.get("creating_key") or ledger.key), since)
        if found is not None:
            return found, [*[r for r in rounds if r != found.id], found.id]
        if rounds:  # a later round's create never landed: go on from the last round that exists
            return hook.retrieve_batch(rounds[-1]), rounds
        return None, []
    if try_number > 1:
        # No record on a retry: no store, a failing one, or one emptied since (`[state_store] clear_on_success`,
        # retention). The key in the batches' metadata still leads back to any batch of the last 25 h.
        found = hook.claim_batch_by_idempotency_key(ledger.key, time.time() - FALLBACK_WINDOW_SECONDS)
        return (found, [found.id]) if found is not None else (None, [])
    return None, []
