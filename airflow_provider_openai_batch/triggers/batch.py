"""``BatchTrigger``: waits for a batch in the triggerer, without a worker slot and without blocking the loop."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

# Imported here, not inside run(): an import inside the event loop would stall every other trigger.
from airflow_provider_openai_batch.events import event_payload
from airflow_provider_openai_batch.exceptions import OpenAIBatchError
from airflow_provider_openai_batch.hooks.async_client import AsyncBatchClient
from airflow_provider_openai_batch.outcome import describe
from airflow_provider_openai_batch.retries import is_retryable


class BatchTrigger(BaseTrigger):
    """Poll a batch until it ends, its deadline passes, or the API keeps failing; then emit one event.

    The event payload is ``{"status": "terminal" | "timeout" | "error", "batch_id": ..., "batch": {...} | None,
    "message": str}``; ``batch`` is the last batch seen, as JSON.

    - **Deadline**: ``end_time`` is an absolute Unix time, so a restarted triggerer (which rebuilds the trigger
      from :meth:`serialize`) keeps the original deadline instead of starting a new timeout.
    - **Transient errors** (429, 5xx, connection errors, timeouts) are retried inside each poll with the shared
      retry policy; after ``max_consecutive_errors`` failed polls in a row an ``error`` event is emitted.
      Permanent errors (401, 404, ...) end the wait at once.
    - **Kill**: when a user marks the task failed or clears it, Airflow 3.3 calls :meth:`on_kill`; with
      ``cancel_on_kill`` the batch is cancelled so it stops being billed. A triggerer shutdown or a
      rescheduling to another triggerer does not call it, so the batch keeps running.

    :param batch_id: The batch to wait for.
    :param conn_id: Airflow connection id (type ``openai_batch``).
    :param poll_interval: Seconds between status checks.
    :param end_time: Unix time after which a ``timeout`` event is emitted; ``None`` waits indefinitely.
    :param cancel_on_timeout: Cancel the batch when the deadline passes.
    :param cancel_on_kill: Cancel the batch when the task is killed by a user.
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
        self.cancel_on_timeout = cancel_on_timeout
        self.cancel_on_kill = cancel_on_kill
        self.max_consecutive_errors = max(1, int(max_consecutive_errors))

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
        try:
            client = await AsyncBatchClient.from_connection(self.conn_id)
        except Exception as err:  # a missing connection or key must end the wait, not hang it
            yield self._event("error", None, f"cannot use connection {self.conn_id!r}: {err}")
            return
        failures = 0
        last_status: str | None = None
        last: Any = None
        loop = asyncio.get_running_loop()
        # A restarted triggerer starts all its triggers at once; a random first delay (at most one interval,
        # and 2 s) spreads their polls so thousands of answers do not arrive, and stall the loop, together.
        # The sensor checked the batch just before deferring, so nothing is seen later than one interval.
        await asyncio.sleep(random.uniform(0.0, min(self.poll_interval, 2.0)))
        while True:
            polled_at = loop.time()
            try:
                batch = await client.retrieve_batch(self.batch_id)
                failures = 0
            except (OpenAIBatchError, ValueError) as err:
                failures += 1
                if not is_retryable(err) or failures >= self.max_consecutive_errors:
                    yield self._event("error", last, f"checking batch {self.batch_id} failed: {err}")
                    return
                self.log.warning("Checking batch %s failed (%d in a row): %s", self.batch_id, failures, err)
                await asyncio.sleep(min(self.poll_interval, 2.0**failures))
                continue
            last = batch
            if batch.status != last_status:  # the same line as the operators log, once per status
                self.log.info("OpenAI %s", describe(batch.model_dump(mode="json")))
                last_status = batch.status
            if batch.is_terminal:
                yield self._event("terminal", batch, f"batch {batch.id} is {batch.status}")
                return
            remaining = None if self.end_time is None else self.end_time - time.time()
            if remaining is not None and remaining <= 0:
                if self.cancel_on_timeout:
                    last = await self._cancel(client) or last
                yield self._event("timeout", last, f"batch {self.batch_id} was still {batch.status} at the deadline")
                return
            # A fixed cadence: the interval counts from the start of this check, so the time an answer takes
            # never adds up across polls, and the end of a batch is seen at most one interval late.
            pause = max(0.0, self.poll_interval - (loop.time() - polled_at))
            await asyncio.sleep(pause if remaining is None else min(pause, remaining))

    async def on_kill(self) -> None:
        if not self.cancel_on_kill:
            return
        try:
            client = await AsyncBatchClient.from_connection(self.conn_id)
        except Exception as err:  # a kill must not fail for want of a connection; say why nothing was cancelled
            self.log.warning("Could not cancel batch %s on kill: %s", self.batch_id, err)
            return
        await self._cancel(client)

    async def _cancel(self, client: Any) -> Any:
        try:
            batch = await client.cancel_batch(self.batch_id)
        except OpenAIBatchError as err:  # e.g. it finished meanwhile (409): nothing left to stop
            self.log.warning("Could not cancel batch %s: %s", self.batch_id, err)
            return None
        self.log.info("Cancelled batch %s (now %s)", self.batch_id, batch.status)
        return batch

    def _event(self, status: str, batch: Any, message: str) -> TriggerEvent:
        as_json = batch.model_dump(mode="json") if batch is not None else None
        return TriggerEvent(event_payload(status, self.batch_id, as_json, message))
