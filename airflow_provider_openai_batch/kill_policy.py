"""What a kill does to the batches a task runs, in one place for the operators, the sensor and the trigger.

The rule (cancel with ``cancel_on_kill``, unless the task instance is now ``success`` or still ``deferred``) is
written in docs/retries-and-kills.md; this module reads the task instance's state and applies it. Airflow
calls ``on_kill`` (the operator's in a worker, the trigger's in the triggerer, Airflow 3.3+) when a user marks
the task failed or success, or clears it; a trigger merely moved to another triggerer is reported as a kill
too, with the task instance still ``deferred``.
"""

from __future__ import annotations

import threading
from typing import Any

#: Task-instance states in which a kill leaves the batch running.
KEEP_BATCH_STATES = frozenset({"success", "deferred"})
#: How long a kill waits for Airflow to say what became of the task instance.
STATE_LOOKUP_SECONDS = 5.0


def read_task_state(ti: Any) -> str | None:
    """The task instance's state as Airflow's API server has it now; ``None`` when it cannot be read.

    Blocking: from a trigger, run it in a thread. It asks through the process's supervisor, the way the
    standard provider's external-task trigger does.
    """
    if ti is None:
        return None
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    map_index = getattr(ti, "map_index", -1)
    map_index = -1 if map_index is None else int(map_index)
    states = RuntimeTaskInstance.get_task_states(
        dag_id=ti.dag_id,
        task_ids=[ti.task_id],
        run_ids=[ti.run_id],
        map_index=map_index if map_index >= 0 else None,
    )
    # The API keys a mapped task instance as "<task_id>_<map_index>".
    key = ti.task_id if map_index < 0 else f"{ti.task_id}_{map_index}"
    state = (states.get(ti.run_id) or {}).get(key)
    return None if state is None else str(getattr(state, "value", state))


def state_on_kill(ti: Any, log: Any) -> str | None:
    """:func:`read_task_state` for a kill in a worker: bounded in time and never raising. A kill may interrupt
    the task in the middle of a call to its supervisor, so the look-up runs in a thread it does not wait on
    for longer than :data:`STATE_LOOKUP_SECONDS`."""
    found: list[str | None] = []

    def look() -> None:
        try:
            found.append(read_task_state(ti))
        except Exception as err:  # any failure only means "unknown": the batch is cancelled as asked
            log.warning("Could not read the task's state (%s)", type(err).__name__)

    thread = threading.Thread(target=look, name="openai-batch-kill-state", daemon=True)
    thread.start()
    thread.join(STATE_LOOKUP_SECONDS)
    return found[0] if found else None


def keeps_batch(state: str | None) -> bool:
    """Whether a kill that left the task instance in ``state`` leaves its batch running."""
    return state in KEEP_BATCH_STATES


def cancel_quietly(task: Any, batch_ids: list[str], ti: Any = None) -> None:
    """A worker-side kill with ``cancel_on_kill``: cancel ``batch_ids`` unless the task instance is now in a
    state that keeps them (:func:`keeps_batch`). Never raises: a batch that already ended (409) or an API
    hiccup must not turn the kill into a second failure; the outcome is logged either way. A hook of its own,
    closed at once: a kill may interrupt the task's hook in the middle of a request.

    :param task: The operator or sensor (its ``hook()``, ``log``).
    :param ti: The running task instance, to learn what the user did; without it the batches are cancelled.
    """
    from airflow_provider_openai_batch.exceptions import OpenAIBatchError

    if not batch_ids:
        return
    state = state_on_kill(ti, task.log) if ti is not None else None
    if keeps_batch(state):
        task.log.info("Not cancelling %s: the task is %s, so its results are still wanted", ", ".join(batch_ids), state)
        return
    try:
        with task.hook() as hook:
            for batch_id in batch_ids:
                try:
                    batch = hook.cancel_batch(batch_id)
                except (OpenAIBatchError, ValueError) as err:
                    task.log.warning("Could not cancel batch %s on kill: %s", batch_id, err)
                    continue
                task.log.info("Cancelled batch %s on kill (now %s)", batch_id, batch.status)
    except (OpenAIBatchError, ValueError) as err:  # the connection itself is unusable
        task.log.warning("Could not cancel %s on kill: %s", ", ".join(batch_ids), err)
