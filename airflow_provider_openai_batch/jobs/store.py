"""Where the job record lives between tries: Airflow's task state store (Airflow 3.3+,
``context["task_state_store"]``), which outlives a killed worker and a deferral.

The store is an optimisation, never a condition: every failure to read or write it is logged and survived,
because the keys in the batches' metadata still lead back to them (:mod:`.recover`).
"""

from __future__ import annotations

from typing import Any

from airflow_provider_openai_batch.jobs.record import JobRecord

#: The task state store key holding the job record (a lone batch's record was kept here before it was a job).
STATE_KEY = "openai_batch"
#: Where the previous release kept the record of a job of several batches.
LEGACY_JOB_KEY = "openai_batch_job"


class RecordStore:
    """This task instance's job record in the task state store.

    :param context: The task's context (``task_state_store`` is absent in bare tests).
    :param log: Where to say what the store could not do.
    """

    def __init__(self, context: Any, log: Any) -> None:
        self._store = context.get("task_state_store")
        self.log = log

    @property
    def available(self) -> bool:
        return self._store is not None

    def read(self) -> JobRecord | None:
        """The record, or ``None`` (none, a record of another format, or no usable store)."""
        return JobRecord.from_json(self.read_raw(STATE_KEY))

    def read_raw(self, key: str) -> Any:
        """What the store holds under ``key`` (``None`` when nothing, or when the store fails)."""
        if self._store is None:
            return None
        try:
            return self._store.get(key)
        except Exception as err:  # the store is an optimisation: the search by key still works
            self.log.warning("Could not read the task state store (%s); searching the batch list instead", err)
            self._store = None
            return None

    def write(self, record: JobRecord) -> None:
        if self._store is None:
            return
        try:
            self._store.set(STATE_KEY, record.to_json())
        except Exception as err:
            self.log.warning("Could not write the task state store (%s); a retry will search the batch list", err)
