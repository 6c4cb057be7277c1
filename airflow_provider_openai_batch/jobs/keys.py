"""The idempotency keys of a job and of its attempts: one formula for every batch the provider creates.

A job's identity is the task instance (dag id, task id, run id, map index) and a digest of its input's bytes:
never a tuning setting (``max_requests_per_batch``, ``max_enqueued_tokens``, ``max_active_batches``...), so
changing one and clearing the task finds the same job. Each attempt's key (stored in its batch's metadata
under ``airflow_idempotency_key``) is derived from the job key, the shard and the attempt number, so a retry
that lost its record still finds every batch of the job in the batch list.

Import-free beyond the standard library.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

REATTACH_CHOICES = ("auto", "never")


def job_key(ti: Any, input_digest: str, reattach: str = "auto") -> str:
    """The job's key: stable across the tries of one task instance with the same input.

    With ``reattach="never"`` the try number is part of it, so every try is a job of its own.

    :param ti: The task instance (``context["ti"]``).
    :param input_digest: SHA-256 over the input's bytes in order (or of the uploaded file id it was given).
    """
    identity: list[Any] = [ti.dag_id, ti.task_id, ti.run_id, getattr(ti, "map_index", -1), input_digest]
    if reattach == "never":
        identity.append(ti.try_number or 1)
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()


def attempt_key(job: str, shard: int, attempt: int) -> str:
    """The idempotency key of attempt ``attempt`` (from 1) of shard ``shard`` (from 0) of job ``job``."""
    return hashlib.sha256(f"{job}:shard:{shard}:attempt:{attempt}".encode()).hexdigest()


def legacy_keys(job: str, shards: int, layout_job: str | None, attempts: int) -> dict[str, tuple[int, int]]:
    """Keys the previous release gave batches, each mapped to its (shard, attempt), so a retry whose record is
    gone still finds a batch created before the upgrade. A batch runs at most 25 hours, so these can go once no
    task deferred before the upgrade is left.

    :param job: This job's key (the previous release keyed a lone batch by it, and its rounds by
        ``"<key>:round:<n>"``).
    :param shards: The job's shard count.
    :param layout_job: The key the previous release gave a job of several shards (it covered the split settings
        too), or ``None``.
    :param attempts: How many attempts per shard to look for.
    """
    found: dict[str, tuple[int, int]] = {}
    if shards == 1:
        found[job] = (0, 1)
        for number in range(2, attempts + 1):
            found[legacy_round_key(job, number)] = (0, number)
    if layout_job is not None:
        for index in range(shards):
            for number in range(1, attempts + 1):
                found[attempt_key(layout_job, index, number)] = (index, number)
    return found


def legacy_round_key(job: str, number: int) -> str:
    """The key the previous release gave round ``number`` (from 2) of a lone batch's ``resubmit_unfinished``."""
    return hashlib.sha256(f"{job}:round:{number}".encode()).hexdigest()


def legacy_layout_job_key(
    ti: Any, input_digest: str, cap: int, max_tokens: int | None, endpoint: str, reattach: str
) -> str:
    """The key the previous release gave a job of several shards: it covered the split settings too."""
    layout = f"{input_digest}:{cap}:{max_tokens}:{endpoint}"
    return job_key(ti, hashlib.sha256(layout.encode()).hexdigest(), reattach)
