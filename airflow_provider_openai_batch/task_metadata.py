"""The Airflow task instance that created a batch, recorded in the batch's own metadata.

:class:`~airflow_provider_openai_batch.operators.batch.CreateBatchOperator` adds four pairs to every batch it
creates, so that anyone who sees the batch (at OpenAI, or on the "OpenAI Batches" page of the Airflow UI)
can find the DAG run and task behind it:

========================  =============================================
key                       value
========================  =============================================
``airflow_dag_id``        the DAG id
``airflow_task_id``       the task id
``airflow_run_id``        the DAG run id
``airflow_map_index``     the map index (``-1`` for a task that is not mapped)
========================  =============================================

The Batch API allows 16 pairs, keys of at most 64 characters and values of at most 512. Airflow ids are at
most 250 characters, so they fit; a longer value (from a custom Airflow build) is cut and ends in
``~sha256:`` and 16 hex digits of the whole value's digest, so two long ids never look the same, and the
UI shows it but does not link to it. These four keys, the idempotency key (``airflow_idempotency_key``) and,
on a round of ``resubmit_unfinished``, ``airflow_resubmit_of`` (the batch whose unfinished requests it sends
again) are the provider's: a user's ``metadata`` may have at most 11 pairs (10 with ``resubmit_unfinished``),
and a pair under one of these names is refused with an error that says so, before anything is uploaded.

Importing this module is cheap (no Airflow import): the operators import it at DAG-parse time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

DAG_ID_KEY = "airflow_dag_id"
TASK_ID_KEY = "airflow_task_id"
RUN_ID_KEY = "airflow_run_id"
MAP_INDEX_KEY = "airflow_map_index"
#: The keys that say which task instance created a batch.
TASK_KEYS: tuple[str, ...] = (DAG_ID_KEY, TASK_ID_KEY, RUN_ID_KEY, MAP_INDEX_KEY)
#: On a batch that sends again the unfinished requests of an earlier one (``resubmit_unfinished``): that batch's
#: id, so its results and the earlier ones' are exported together from the last batch's id alone.
RESUBMIT_OF_KEY = "airflow_resubmit_of"
#: The API's limit on a metadata value (api.METADATA_MAX_VALUE; repeated here so importing stays cheap).
MAX_VALUE = 512
#: Marks a value that was too long and was cut: ``<start of value>~sha256:<16 hex digits>``.
TRUNCATION_MARK = "~sha256:"
_DIGEST_CHARS = 16


def reserved_keys(resubmit: bool = False) -> tuple[str, ...]:
    """The metadata keys the provider sets itself: the idempotency key and :data:`TASK_KEYS`, and with
    ``resubmit`` (rounds of ``resubmit_unfinished`` may come) :data:`RESUBMIT_OF_KEY`."""
    from airflow_provider_openai_batch.api import IDEMPOTENCY_METADATA_KEY

    return (IDEMPOTENCY_METADATA_KEY, *TASK_KEYS, *((RESUBMIT_OF_KEY,) if resubmit else ()))


def validate_user_metadata(metadata: Any, resubmit: bool = False) -> dict[str, str]:
    """Check a user's ``metadata`` before anything is uploaded: the API's limits, with the provider's pairs
    counted (five: at most 11 of the user's own; six with ``resubmit``: at most 10), and none of the
    provider's keys used.

    :raises ValueError: naming the key or the count and the fix.
    """
    from airflow_provider_openai_batch import api

    reserved = reserved_keys(resubmit)
    if isinstance(metadata, Mapping):
        room = api.METADATA_MAX_PAIRS - len(reserved)
        if len(metadata) > room:
            raise ValueError(
                f"metadata has {len(metadata)} pairs; at most {room} are allowed (the provider sets "
                f"{', '.join(reserved[:-1])} and {reserved[-1]}): remove some keys"
            )
        taken = [key for key in (*TASK_KEYS, RESUBMIT_OF_KEY) if key in metadata]
        if taken:
            raise ValueError(
                f"metadata key {taken[0]!r} is reserved: the provider records the creating DAG, task, run and map "
                f"index under {', '.join(TASK_KEYS)} so the Airflow UI can link a batch to its task, and the batch a "
                f"round re-runs under {RESUBMIT_OF_KEY}; rename your key"
            )
    return api.validate_metadata(metadata, reserved_keys=reserved)


def fit(value: str) -> str:
    """``value`` if it fits in a metadata value, else its start followed by :data:`TRUNCATION_MARK` and a
    digest of the whole value."""
    if len(value) <= MAX_VALUE:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_CHARS]
    return value[: MAX_VALUE - len(TRUNCATION_MARK) - _DIGEST_CHARS] + TRUNCATION_MARK + digest


def is_truncated(value: str) -> bool:
    """Whether ``value`` was cut by :func:`fit` (then it names no real id and must not be linked)."""
    return len(value) == MAX_VALUE and value[-_DIGEST_CHARS - len(TRUNCATION_MARK) : -_DIGEST_CHARS] == (
        TRUNCATION_MARK
    )


def task_metadata(ti: Any) -> dict[str, str]:
    """The pairs that record the task instance ``ti`` (any object with ``dag_id``, ``task_id``, ``run_id`` and
    ``map_index``, such as the running task's ``context["ti"]``)."""
    map_index = getattr(ti, "map_index", None)
    return {
        DAG_ID_KEY: fit(str(ti.dag_id)),
        TASK_ID_KEY: fit(str(ti.task_id)),
        RUN_ID_KEY: fit(str(ti.run_id)),
        MAP_INDEX_KEY: str(map_index if isinstance(map_index, int) else -1),
    }


def with_task_metadata(metadata: Mapping[str, str] | None, ti: Any) -> dict[str, str]:
    """The user's ``metadata`` plus the pairs of :func:`task_metadata`, to send with the create call.
    Without a task instance (``ti`` is ``None``, e.g. a hook used outside a task) the user's pairs alone."""
    merged = dict(metadata or {})
    if ti is not None:
        merged.update(task_metadata(ti))
    return merged


def creator(metadata: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The task instance recorded in a batch's metadata: ``dag_id``, ``task_id``, ``run_id``, ``map_index``
    and ``linkable`` (false when a value was cut or is missing), or ``None`` when the batch has no DAG id
    (not created by this provider, or by a version before it recorded one)."""
    if not isinstance(metadata, Mapping):
        return None
    dag_id = metadata.get(DAG_ID_KEY)
    if not isinstance(dag_id, str) or not dag_id:
        return None
    values = {key: metadata.get(key) for key in (TASK_ID_KEY, RUN_ID_KEY)}
    raw_index = metadata.get(MAP_INDEX_KEY)
    try:
        map_index = int(raw_index) if isinstance(raw_index, str) else -1
    except ValueError:
        map_index = -1
    texts = [dag_id, *(v for v in values.values() if isinstance(v, str))]
    complete = all(isinstance(v, str) and v for v in values.values())
    return {
        "dag_id": dag_id,
        "task_id": values[TASK_ID_KEY] if isinstance(values[TASK_ID_KEY], str) else None,
        "run_id": values[RUN_ID_KEY] if isinstance(values[RUN_ID_KEY], str) else None,
        "map_index": map_index,
        "linkable": complete and not any(is_truncated(t) for t in texts),
        "dag_id_complete": not is_truncated(dag_id),
    }
