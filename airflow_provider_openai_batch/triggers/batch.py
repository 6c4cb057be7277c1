"""``BatchTrigger``: waits for batches in the triggerer, without a worker slot and without blocking the loop.

What it does on restart, retry, timeout and kill is in its class docstring. Each trigger holds a lease on its
event loop's shared HTTP session from the start of ``run()`` until it ends (or :meth:`BatchTrigger.cleanup`);
the last lease released closes the session.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

# Imported here, not inside run(): an import inside the event loop would stall every other trigger.
from airflow_provider_openai_batch.events import ERROR, TERMINAL, TIMEOUT, WAKE, event_payload
from airflow_provider_openai_batch.exceptions import APITimeoutError, OpenAIBatchError
from airflow_provider_openai_batch.hooks.async_client import AsyncBatchClient, RequestNotSentError, SessionLease
from airflow_provider_openai_batch.jobs.decide import admission_interval
from airflow_provider_openai_batch.kill_policy import STATE_LOOKUP_SECONDS, keeps_batch, read_task_state
from airflow_provider_openai_batch.models import Batch
from airflow_provider_openai_batch.outcome import describe
from airflow_provider_openai_batch.progress import ProgressLog, snapshot
from airflow_provider_openai_batch.retries import is_retryable
from airflow_provider_openai_batch.statuses import COMPLETED, VALIDATING
from airflow_provider_openai_batch.triggers.poller import shared_poller

#: Upper bound of the random delay before the first poll.
FIRST_DELAY_MAX = 2.0
#: A poll at or near the deadline still gets this long (retries included), so a batch that ended just
#: before it is reported as ended; the ``timeout`` event therefore comes at most this long after it.
LAST_LOOK_SECONDS = 10.0
#: What ends a wait besides its deadline (see :class:`BatchTrigger`).
WAKE_ON = ("all", "any", "admitted")
#: A cancel (on timeout or kill) gives up after this long: Airflow gives ``on_kill`` 30 s in all
#: (``[triggerer] on_kill_timeout``), and a timeout event must not wait on an API that is down.
CANCEL_SECONDS = 20.0


class BatchTrigger(BaseTrigger):
    """Poll batches until the wait's condition is met, its deadline passes, or the API keeps failing; then emit
    one event. One shape for every wait: a sensor's batch, a sensor's list, a job of one batch or of many.

    The event payload (:func:`~airflow_provider_openai_batch.events.event_payload`) is ``{"status": "terminal"
    | "wake" | "timeout" | "error", "batch_id": ..., "batch": {...} | None, "message": str, "batches": [...]}``:
    ``batches`` holds every batch of the wait as last seen, ``batch`` the one the event is about.

    - **Triggerer restart**: a restarted triggerer (or another one taking over) rebuilds the trigger from
      :meth:`serialize` and runs it again. ``end_time`` is an absolute Unix time, so the original deadline
      holds instead of a new timeout starting. Nothing is cancelled: the batches run on at the API and the
      new run picks them up. The first poll waits a random delay (at most ``poll_interval`` and 2 s) so that
      the triggers a restart starts together neither read connections nor poll in one burst.
    - **Retry**: transient errors (429, 5xx, connection errors, timeouts) are retried inside each poll with
      the shared retry policy (the connection's ``max_retries``); after ``max_consecutive_errors`` failed
      polls in a row an ``error`` event is emitted. Permanent errors (401, 404, an unusable connection) end
      the wait at once: repeating them cannot succeed.
    - **Timeout**: the deadline is checked after every poll, successful or failed, and no pause or retry
      runs past it: a poll gets the time left, and at least 10 s for a last look, so an ``error`` never
      replaces the ``timeout`` of a deadline that passes during an outage. With ``cancel_on_timeout`` the
      batches still running are cancelled first (each given up after 20 s; a failed cancel is logged and the
      event is still ``timeout``). Without it they run on at the API and may still complete.
    - **Kill** (Airflow 3.3 and later): when a user acts on the deferred task, Airflow cancels the trigger and
      calls :meth:`on_kill`, which applies the kill rule of docs/retries-and-kills.md
      (:mod:`~airflow_provider_openai_batch.kill_policy`). A triggerer shutdown, a trigger timeout and the event
      itself never call ``on_kill``.

    :param batch_id: The batch to wait for (a shorthand for ``batch_ids=[batch_id]``).
    :param conn_id: Airflow connection id (type ``openai_batch``).
    :param poll_interval: Seconds between status checks, counted from the start of each check.
    :param end_time: Unix time after which a ``timeout`` event is emitted; ``None`` waits indefinitely.
    :param cancel_on_timeout: Cancel the batches still running when the deadline passes.
    :param cancel_on_kill: Cancel the batches when a user marks the task failed or clears it (Airflow 3.3+).
    :param max_consecutive_errors: Failed polls in a row tolerated before giving up.
    :param batch_ids: The batches to wait for; each unfinished one is checked every interval. Empty: a wait
        for ``wake_at`` alone (a job whose next batch waits out a back-off).
    :param wake_on: ``"all"`` (default): end when every batch ended, or as soon as one ended other than
        ``completed``. ``"any"``: end when any batch ends (a job creates its next batches then). ``"admitted"``:
        end once every batch passed ``validating`` (no ``token_limit_exceeded`` refusal can come any more).
    :param wake_at: A Unix time at which to end the wait with a ``wake`` event; ``None``: no such time. A wait
        with no batch left to watch and no ``wake_at`` ends at once with a ``wake`` event rather than never.
    :param progress: The job's progress outside this wait, for the progress lines: ``batches_total``,
        ``batches_done``, ``done``, ``total``, ``failed``, ``tokens``, and ``expected`` (requests per batch id).

    The triggerer never creates a batch: the task does, when it resumes. While waiting, a progress line
    (:mod:`~airflow_provider_openai_batch.progress`) goes to the log when the progress changed and at most
    every 5 minutes, and after 30 polls without a line.
    """

    def __init__(
        self,
        batch_id: str | None = None,
        conn_id: str = "openai_default",
        poll_interval: float = 60.0,
        end_time: float | None = None,
        cancel_on_timeout: bool = False,
        cancel_on_kill: bool = False,
        max_consecutive_errors: int = 5,
        batch_ids: list[str] | None = None,
        wake_on: str | None = None,
        wake_at: float | None = None,
        progress: dict[str, Any] | None = None,
        **earlier: Any,
    ) -> None:
        super().__init__()
        if batch_ids is None:
            batch_ids = [] if batch_id is None else [batch_id]
        self.batch_ids = [str(b) for b in batch_ids]
        # A trigger serialized by the previous release may carry its own names for the same choices.
        if wake_on is None:
            wake_on = (
                "admitted" if earlier.get("wake_when_admitted") else "any" if earlier.get("wake_on_any") else "all"
            )
        if wake_on not in WAKE_ON:
            raise ValueError(f"wake_on must be one of {', '.join(WAKE_ON)}; got {wake_on!r}")
        self.wake_on = wake_on
        self.wake_at = None if wake_at is None else float(wake_at)
        self.progress = dict(progress or earlier.get("job") or {})
        self.conn_id = conn_id
        self.poll_interval = float(poll_interval)
        self.end_time = None if end_time is None else float(end_time)
        self.cancel_on_timeout = bool(cancel_on_timeout)
        self.cancel_on_kill = bool(cancel_on_kill)
        self.max_consecutive_errors = max(1, int(max_consecutive_errors))
        self._lease: SessionLease | None = None

    @property
    def batch_id(self) -> str:
        """The first batch of the wait (what a one-batch wait is about)."""
        return self.batch_ids[0] if self.batch_ids else ""

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "batch_ids": list(self.batch_ids),
                "conn_id": self.conn_id,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
                "cancel_on_timeout": self.cancel_on_timeout,
                "cancel_on_kill": self.cancel_on_kill,
                "max_consecutive_errors": self.max_consecutive_errors,
                "wake_on": self.wake_on,
                "wake_at": self.wake_at,
                "progress": self.progress,
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
        """Poll until the wait's condition is met (``wake_on``, ``wake_at``), the deadline or
        the wake-up time passes, or the API keeps failing; return the one event."""
        loop = asyncio.get_running_loop()
        failures = polls = 0
        pending = list(self.batch_ids)  # not seen ended yet
        seen: dict[str, Batch] = {}
        ended: list[Batch] = []
        progress = ProgressLog(self.log)
        job = self.progress
        while True:
            polled_at = loop.time()
            polls += 1
            failure: Exception | None = None
            for batch_id in list(pending):
                try:
                    batch = await self._poll(client, batch_id)
                except (OpenAIBatchError, ValueError) as err:
                    failure = err
                    if isinstance(err, RequestNotSentError) or not is_retryable(err):
                        return self._event(ERROR, seen.get(batch_id), f"checking batch {batch_id} failed: {err}", seen)
                    break  # the others wait for the next round: the API is struggling
                previous = seen.get(batch_id)
                if previous is None or batch.status != previous.status:  # the operators' log line, once per status
                    self.log.info("OpenAI %s", describe(batch.model_dump(mode="json")))
                seen[batch_id] = batch
                if batch.is_terminal:
                    pending.remove(batch_id)
                    ended.append(batch)
            if failure is None:
                failures = 0
                progress.observe(
                    snapshot(
                        (b.model_dump(mode="json") for b in seen.values()),
                        batches_total=job.get("batches_total") if (job.get("batches_total") or 1) > 1 else None,
                        base=job,
                        expected=job.get("expected"),
                    )
                )
            if ended and (self.wake_on == "any" or not pending or any(b.status != COMPLETED for b in ended)):
                first = ended[0]
                return self._event(TERMINAL, first, f"batch {first.id} is {first.status}", seen)
            if self.wake_on == "admitted" and all(b in seen and seen[b].status != VALIDATING for b in self.batch_ids):
                return self._event(WAKE, None, "every batch of the job passed validation", seen)
            if not pending and self.wake_at is None:  # e.g. an empty job wait: nothing could ever end it
                return self._event(WAKE, None, "nothing left to wait for: the task decides what comes next", seen)
            if self.wake_at is not None and time.time() >= self.wake_at:
                return self._event(WAKE, None, "a queued shard's back-off is over: time to submit it", seen)
            if self._deadline_passed():  # after every poll, failed ones too: an outage ends in a timeout
                return await self._timeout(client, seen, pending, failure)
            if failure is not None:
                failures += 1
                failing = pending[0] if pending else self.batch_id
                if failures >= self.max_consecutive_errors:
                    return self._event(ERROR, seen.get(failing), f"checking batch {failing} failed: {failure}", seen)
                self.log.warning("Checking batch %s failed (%d in a row): %s", failing, failures, failure)
                pause = min(self.poll_interval, 2.0**failures)
            else:
                # A fixed cadence: the interval counts from the start of this check, so the time an answer
                # takes never adds up across polls, and the end of a batch is seen at most one interval late.
                interval = admission_interval(self.poll_interval, polls) if self.wake_on == "admitted" else None
                pause = max(0.0, (interval or self.poll_interval) - (loop.time() - polled_at))
            if self.wake_at is not None:
                pause = max(0.0, min(pause, self.wake_at - time.time()))
            await self._sleep(pause)

    async def _poll(self, client: AsyncBatchClient, batch_id: str) -> Batch:
        """One status check, its retries cut off at the deadline (or after a last look, once it passed)."""
        left = self._time_left()
        if left is None:
            return await self._retrieve(client, batch_id)
        limit = max(left, LAST_LOOK_SECONDS)
        try:
            return await asyncio.wait_for(self._retrieve(client, batch_id), limit)
        except asyncio.TimeoutError:
            raise APITimeoutError(f"checking batch {batch_id} got no answer before the deadline") from None

    async def _retrieve(self, client: AsyncBatchClient, batch_id: str) -> Batch:
        """The one place the trigger reads a batch (a multi-batch wait reads each unfinished one here). The read
        is shared with the other waits of this connection in this event loop (coalesced polling,
        :mod:`~airflow_provider_openai_batch.triggers.poller`): one list call answers for many batches."""
        poller = shared_poller(self.conn_id)
        return await poller.retrieve(client, batch_id, self.poll_interval, self, self.end_time)

    async def _timeout(
        self, client: AsyncBatchClient, seen: dict[str, Batch], pending: list[str], failure: Exception | None
    ) -> TriggerEvent:
        waiting = pending[0] if pending else self.batch_id
        last = seen.get(waiting)
        if last is not None:
            message = f"batch {waiting} was still {last.status} at the deadline"
        else:
            message = f"the deadline passed before batch {waiting} could be checked"
        if failure is not None:
            message += f" (the last check failed: {failure})"
        if self.cancel_on_timeout:
            for batch_id in pending:
                cancelled = await self._cancel(client, batch_id)
                if cancelled is not None:
                    seen[batch_id] = cancelled
            last = seen.get(waiting, last)
        return self._event(TIMEOUT, last, message, seen, waiting)

    async def on_kill(self) -> None:
        """Cancel the batch after a user's action on the task, unless the task is now ``success`` or still
        ``deferred`` (see the class docstring). Never raises: a kill must not fail for want of an API."""
        if not self.cancel_on_kill:
            return
        state = await self._task_instance_state()
        if keeps_batch(state):
            self.log.info(
                "Not cancelling batch %s: the task is %s, so its results are still wanted",
                ", ".join(self.batch_ids),
                state,
            )
            return
        lease = SessionLease()  # run() has already released its own lease when Airflow calls on_kill
        try:
            try:
                client = await AsyncBatchClient.from_connection(self.conn_id)
            except Exception as err:  # say why nothing was cancelled
                self.log.warning("Could not cancel batch %s on kill: %s", ", ".join(self.batch_ids), err)
                return
            for batch_id in self.batch_ids:  # those that ended answer 409, which is logged and harmless
                await self._cancel(client, batch_id)
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

    async def _cancel(self, client: AsyncBatchClient, batch_id: str | None = None) -> Batch | None:
        batch_id = batch_id or self.batch_id
        try:
            batch = await asyncio.wait_for(client.cancel_batch(batch_id), CANCEL_SECONDS)
        except (OpenAIBatchError, ValueError) as err:  # e.g. it finished meanwhile (409): nothing to stop
            self.log.warning("Could not cancel batch %s: %s", batch_id, err)
            return None
        except asyncio.TimeoutError:
            self.log.warning("Could not cancel batch %s: no answer within %gs", batch_id, CANCEL_SECONDS)
            return None
        self.log.info("Cancelled batch %s (now %s)", batch_id, batch.status)
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

    def _event(
        self,
        status: str,
        batch: Batch | None,
        message: str,
        seen: dict[str, Batch] | None = None,
        batch_id: str | None = None,
    ) -> TriggerEvent:
        as_json = batch.model_dump(mode="json") if batch is not None else None
        named = batch.id if batch is not None else (batch_id or self.batch_id)
        everything = [seen[b].model_dump(mode="json") for b in self.batch_ids if seen and b in seen]
        return TriggerEvent(event_payload(status, named, as_json, message, everything))
