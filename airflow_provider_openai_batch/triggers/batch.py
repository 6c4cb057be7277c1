"""``BatchTrigger``: waits for a batch in the triggerer, without a worker slot and without blocking the loop.

What happens, and why:

- **Triggerer restart** (or a move to another triggerer): Airflow rebuilds the trigger from
  :meth:`BatchTrigger.serialize` (JSON primitives only) and calls ``run()`` again. The deadline is an absolute
  Unix time, so it is kept, not restarted; the batch keeps running at the API meanwhile, and nothing is
  cancelled. A restarted triggerer starts all its triggers at once, so each waits a random first delay (at
  most one poll interval, and 2 s) before it reads its connection and polls, and triggers of one connection
  share one connection look-up: a thousand of them do not stall the event loop together.
- **Retry**: transient failures (429, 5xx, connection errors, timeouts) are retried inside each poll with the
  retry policy the sync hook uses; a poll that still fails counts against ``max_consecutive_errors`` and the
  next one comes after a back-off. Permanent errors (401, 404, a request that cannot be built) end the wait
  at once with an ``error`` event: waiting longer cannot fix them.
- **Timeout**: the deadline is checked after every poll, failed ones included, and no pause or retry runs
  past it (a poll gets the time left, and at least 10 s for a last look), so an outage at the deadline ends
  in a ``timeout`` event, not an ``error``; with ``cancel_on_timeout`` the batch is cancelled first (a cancel
  that fails, e.g. in that outage, is logged and the event is still ``timeout``).
- **Kill**: Airflow 3.3 and later call :meth:`BatchTrigger.on_kill` when a user acts on the deferred task.
  It cancels the batch (with ``cancel_on_kill``) unless the task instance is now ``success`` (the user
  declared the work done; a downstream task may still read the results) or still ``deferred`` (the trigger
  was only moved to another triggerer, which Airflow 3.3 also reports as a user action).

Each trigger holds a lease on its event loop's shared HTTP session from the start of ``run()`` until it
ends (or :meth:`BatchTrigger.cleanup`); the last lease released closes the session.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

# Imported here, not inside run(): an import inside the event loop would stall every other trigger.
from airflow_provider_openai_batch.events import ERROR, TERMINAL, TIMEOUT, event_payload
from airflow_provider_openai_batch.exceptions import APITimeoutError, OpenAIBatchError
from airflow_provider_openai_batch.hooks.async_client import AsyncBatchClient, RequestNotSentError, SessionLease
from airflow_provider_openai_batch.models import Batch
from airflow_provider_openai_batch.outcome import describe
from airflow_provider_openai_batch.retries import is_retryable
from airflow_provider_openai_batch.task_state import STATE_LOOKUP_SECONDS, keeps_batch, read_task_state
from airflow_provider_openai_batch.triggers.poller import shared_poller

#: Upper bound of the random delay before the first poll.
FIRST_DELAY_MAX = 2.0
#: A poll at or near the deadline still gets this long (retries included), so a batch that ended just
#: before it is reported as ended; the ``timeout`` event therefore comes at most this long after it.
LAST_LOOK_SECONDS = 10.0
#: A cancel (on timeout or kill) gives up after this long: Airflow gives ``on_kill`` 30 s in all
#: (``[triggerer] on_kill_timeout``), and a timeout event must not wait on an API that is down.
CANCEL_SECONDS = 20.0


class BatchTrigger(BaseTrigger):
    """Poll a batch until it ends, its deadline passes, or the API keeps failing; then emit one event.

    The event payload (:func:`~airflow_provider_openai_batch.events.event_payload`) is ``{"status":
    "terminal" | "timeout" | "error", "batch_id": ..., "batch": {...} | None, "message": str}``; ``batch`` is
    the last batch seen, as JSON.

    - **Triggerer restart**: a restarted triggerer (or another one taking over) rebuilds the trigger from
      :meth:`serialize` and runs it again. ``end_time`` is an absolute Unix time, so the original deadline
      holds instead of a new timeout starting. Nothing is cancelled: the batch runs on at the API and the
      new run picks it up. The first poll waits a random delay (at most ``poll_interval`` and 2 s) so that
      the triggers a restart starts together neither read connections nor poll in one burst.
    - **Retry**: transient errors (429, 5xx, connection errors, timeouts) are retried inside each poll with
      the shared retry policy (the connection's ``max_retries``); after ``max_consecutive_errors`` failed
      polls in a row an ``error`` event is emitted. Permanent errors (401, 404, an unusable connection) end
      the wait at once: repeating them cannot succeed.
    - **Timeout**: the deadline is checked after every poll, successful or failed, and no pause or retry
      runs past it: a poll gets the time left, and at least 10 s for a last look, so an ``error`` never
      replaces the ``timeout`` of a deadline that passes during an outage. With ``cancel_on_timeout`` the
      batch is cancelled first (given up after 20 s; a failed cancel is logged and the event is still
      ``timeout``). Without it the batch runs on at the API and may still complete.
    - **Kill** (Airflow 3.3 and later; earlier versions never call a trigger's ``on_kill``, so a user's
      action leaves the batch running): when a user marks the deferred task failed or success, or clears
      it, Airflow cancels the trigger and calls :meth:`on_kill`. With ``cancel_on_kill`` it looks up the task
      instance's new state and cancels the batch unless that state is ``success`` (the user declared the
      work done and a downstream task may still read the results; cancelling would throw them away) or
      ``deferred`` (the task still waits: the trigger was moved to another triggerer, which Airflow 3.3
      also reports as a user action, or a cleared task already deferred again). Marked failed and cleared
      (the state is then ``failed``, or ``None``/``scheduled``/``queued``/``running`` as the new try starts)
      cancel, so the batch stops being billed; a cleared task then creates a new batch, as it never
      re-attaches to a cancelled one. When the state cannot be read, the batch is cancelled as asked. A
      triggerer shutdown, a trigger timeout and the event itself never call ``on_kill``.

    :param batch_id: The batch to wait for.
    :param conn_id: Airflow connection id (type ``openai_batch``).
    :param poll_interval: Seconds between status checks, counted from the start of each check.
    :param end_time: Unix time after which a ``timeout`` event is emitted; ``None`` waits indefinitely.
    :param cancel_on_timeout: Cancel the batch when the deadline passes.
    :param cancel_on_kill: Cancel the batch when a user marks the task failed or clears it (Airflow 3.3+).
    :param max_consecutive_errors: Failed polls in a row tolerated before giving up.
    """

    def __init__(
        self,
        batch_id: str,
        conn_id: str = "openai_default",
        poll_interval: float = 60.0,
        end_time: float | None = None,
        cancel_on_timeout: bool = False,
        cancel_on_kill: bool = False,
        max_consecutive_errors: int = 5,
    ) -> None:
        super().__init__()
        self.batch_id = batch_id
        self.conn_id = conn_id
        self.poll_interval = float(poll_interval)
        self.end_time = None if end_time is None else float(end_time)
        self.cancel_on_timeout = bool(cancel_on_timeout)
        self.cancel_on_kill = bool(cancel_on_kill)
        self.max_consecutive_errors = max(1, int(max_consecutive_errors))
        self._lease: SessionLease | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "batch_id": self.batch_id,
                "conn_id": self.conn_id,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
                "cancel_on_timeout": self.cancel_on_timeout,
                "cancel_on_kill": self.cancel_on_kill,
                "max_consecutive_errors": self.max_consecutive_errors,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # Released when run() ends however it ends, and by cleanup() as a backstop.
        self._lease = lease = SessionLease()
        try:
            # The random first delay comes before the connection look-up too: a restarted triggerer starts
            # all its triggers at once, and each look-up costs loop time. The sensor checked the batch just
            # before deferring, so nothing is seen later than one interval.
            await self._sleep(random.uniform(0.0, min(self.poll_interval, FIRST_DELAY_MAX)))
            try:
                client = await AsyncBatchClient.from_connection(self.conn_id)
            except Exception as err:  # a missing connection or key must end the wait, not hang it
                yield self._event(ERROR, None, f"cannot use connection {self.conn_id!r}: {err}")
                return
            yield await self._wait(client)
        finally:
            await lease.release()

    async def _wait(self, client: AsyncBatchClient) -> TriggerEvent:
        """Poll until the batch ends, the deadline passes or the API keeps failing; return the one event."""
        loop = asyncio.get_running_loop()
        failures = 0
        last: Batch | None = None
        while True:
            polled_at = loop.time()
            batch: Batch | None = None
            failure: Exception | None = None
            try:
                batch = await self._poll(client)
            except (OpenAIBatchError, ValueError) as err:
                failure = err
            if batch is not None:
                failures = 0
                if last is None or batch.status != last.status:  # the operators' log line, once per status
                    self.log.info("OpenAI %s", describe(batch.model_dump(mode="json")))
                last = batch
                if batch.is_terminal:
                    return self._event(TERMINAL, batch, f"batch {batch.id} is {batch.status}")
            elif failure is not None and (isinstance(failure, RequestNotSentError) or not is_retryable(failure)):
                return self._event(ERROR, last, f"checking batch {self.batch_id} failed: {failure}")
            if self._deadline_passed():  # after every poll, failed ones too: an outage ends in a timeout
                return await self._timeout(client, last, failure)
            if failure is not None:
                failures += 1
                if failures >= self.max_consecutive_errors:
                    return self._event(ERROR, last, f"checking batch {self.batch_id} failed: {failure}")
                self.log.warning("Checking batch %s failed (%d in a row): %s", self.batch_id, failures, failure)
                pause = min(self.poll_interval, 2.0**failures)
            else:
                # A fixed cadence: the interval counts from the start of this check, so the time an answer
                # takes never adds up across polls, and the end of a batch is seen at most one interval late.
                pause = max(0.0, self.poll_interval - (loop.time() - polled_at))
            await self._sleep(pause)

    async def _poll(self, client: AsyncBatchClient) -> Batch:
        """One status check, its retries cut off at the deadline (or after a last look, once it passed)."""
        left = self._time_left()
        # Shared with the other waits of this connection in this loop (coalesced polling, triggers/poller.py).
        check = shared_poller(self.conn_id).retrieve(client, self.batch_id, self.poll_interval, self, self.end_time)
        if left is None:
            return await check
        limit = max(left, LAST_LOOK_SECONDS)
        try:
            return await asyncio.wait_for(check, limit)
        except asyncio.TimeoutError:
            raise APITimeoutError(f"checking batch {self.batch_id} got no answer before the deadline") from None

    async def _timeout(self, client: AsyncBatchClient, last: Batch | None, failure: Exception | None) -> TriggerEvent:
        if last is not None:
            message = f"batch {self.batch_id} was still {last.status} at the deadline"
        else:
            message = f"the deadline passed before batch {self.batch_id} could be checked"
        if failure is not None:
            message += f" (the last check failed: {failure})"
        if self.cancel_on_timeout:
            last = await self._cancel(client) or last
        return self._event(TIMEOUT, last, message)

    async def on_kill(self) -> None:
        """Cancel the batch after a user's action on the task, unless the task is now ``success`` or still
        ``deferred`` (see the class docstring). Never raises: a kill must not fail for want of an API."""
        if not self.cancel_on_kill:
            return
        state = await self._task_instance_state()
        if keeps_batch(state):
            self.log.info(
                "Not cancelling batch %s: the task is %s, so its results are still wanted", self.batch_id, state
            )
            return
        lease = SessionLease()  # run() has already released its own lease when Airflow calls on_kill
        try:
            try:
                client = await AsyncBatchClient.from_connection(self.conn_id)
            except Exception as err:  # say why nothing was cancelled
                self.log.warning("Could not cancel batch %s on kill: %s", self.batch_id, err)
                return
            await self._cancel(client)
        finally:
            await lease.release()

    async def cleanup(self) -> None:
        """Release this trigger's hold on the shared HTTP session (Airflow calls this after run() ends or is
        cancelled, after on_kill); the last trigger of the event loop to leave closes it."""
        if self._lease is not None:
            await self._lease.release()

    async def _task_instance_state(self) -> str | None:
        """The task instance's state as Airflow has it now; ``None`` when unknown (outside a triggerer)."""
        ti = self.task_instance
        if ti is None:
            return None
        try:
            # It reaches the API server through the triggerer's supervisor, so it runs in a thread.
            return await asyncio.wait_for(asyncio.to_thread(read_task_state, ti), STATE_LOOKUP_SECONDS)
        except Exception as err:
            self.log.warning(
                "Could not read the state of task %s (%s); cancelling batch %s as asked",
                ti.task_id,
                type(err).__name__,
                self.batch_id,
            )
            return None

    async def _cancel(self, client: AsyncBatchClient) -> Batch | None:
        try:
            batch = await asyncio.wait_for(client.cancel_batch(self.batch_id), CANCEL_SECONDS)
        except (OpenAIBatchError, ValueError) as err:  # e.g. it finished meanwhile (409): nothing to stop
            self.log.warning("Could not cancel batch %s: %s", self.batch_id, err)
            return None
        except asyncio.TimeoutError:
            self.log.warning("Could not cancel batch %s: no answer within %gs", self.batch_id, CANCEL_SECONDS)
            return None
        self.log.info("Cancelled batch %s (now %s)", self.batch_id, batch.status)
        return batch

    def _time_left(self) -> float | None:
        return None if self.end_time is None else self.end_time - time.time()

    def _deadline_passed(self) -> bool:
        left = self._time_left()
        return left is not None and left <= 0

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but never past the deadline."""
        left = self._time_left()
        await asyncio.sleep(seconds if left is None else max(0.0, min(seconds, left)))

    def _event(self, status: str, batch: Batch | None, message: str) -> TriggerEvent:
        as_json = batch.model_dump(mode="json") if batch is not None else None
        return TriggerEvent(event_payload(status, self.batch_id, as_json, message))
