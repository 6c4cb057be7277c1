"""``BatchSensor``: wait for an OpenAI batch to finish, deferred to the triggerer by default."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from airflow_provider_openai_batch.links import OpenAIBatchLink, remember_batch_link

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook


class BatchSensor(BaseSensorOperator):
    """Wait until a batch ends (or every batch of a list): succeed with the final batch (or the list of them), or
    fail with the batch's own errors.

    The batches are checked once before deferring, so batches that already ended never defer. Then, when
    ``deferrable`` (the default), the wait moves to the triggerer and frees the worker slot; otherwise the usual
    ``poke`` or ``reschedule`` modes apply. ``completed`` succeeds and returns the final batch as JSON
    (``output_file_id``, ``error_file_id``, ``request_counts``, ``usage``, ...); ``failed``, ``expired`` and
    ``cancelled`` fail the task with the batch's error messages (line numbers for a bad input file), as soon as
    one is seen. ``timeout`` counts from the first check. What a retry, a kill, the timeout and a verdict do is in
    docs/retries-and-kills.md.

    :param batch_id: The batch to wait for (templated), e.g. ``{{ ti.xcom_pull('create_batch') }}``, or a list of
        them (or a JSON string of one, as a template renders a job's return value): one deferral for all.
    :param conn_id: Airflow connection id (type ``openai_batch``).
    :param deferrable: Wait in the triggerer (default ``True``).
    :param poll_interval: Seconds between checks (also ``poke_interval`` in poke/reschedule modes).
    :param max_failed_fraction: Largest share of failed requests a completed batch may have (0.0..1.0; default
        1.0: request failures are data, read them from the results); each batch is judged on its own.
    :param cancel_on_timeout: Cancel the batch when the deadline passes.
    :param cancel_on_kill: Cancel the batch when the task is killed.
    :param max_consecutive_errors: Failed polls in a row the trigger tolerates before failing the task.
    """

    template_fields: Sequence[str] = ("batch_id",)
    operator_extra_links = (OpenAIBatchLink(),)
    ui_color = "#e8f6f3"

    def __init__(
        self,
        *,
        batch_id: str,
        conn_id: str = "openai_default",
        deferrable: bool = True,
        poll_interval: float = 60.0,
        max_failed_fraction: float = 1.0,
        cancel_on_timeout: bool = False,
        cancel_on_kill: bool = False,
        max_consecutive_errors: int = 5,
        **kwargs: Any,
    ) -> None:
        from airflow_provider_openai_batch.arguments import check_fraction, check_seconds

        # Before BaseSensorOperator reads poll_interval as its poke_interval and words its own complaint.
        task_id = str(kwargs.get("task_id", "BatchSensor"))
        check_fraction(max_failed_fraction, task_id)
        check_seconds(poll_interval, "poll_interval", task_id)
        kwargs.setdefault("poke_interval", poll_interval)
        super().__init__(**kwargs)
        self.batch_id = batch_id
        self.conn_id = conn_id
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.max_failed_fraction = max_failed_fraction
        self.cancel_on_timeout = cancel_on_timeout
        self.cancel_on_kill = cancel_on_kill
        self.max_consecutive_errors = max_consecutive_errors
        self._last_statuses: dict[str, str] = {}
        self._progress: Any = None
        self._hook: OpenAIBatchHook | None = None
        self._running_ti: Any = None

    def hook(self) -> OpenAIBatchHook:
        """A new hook for this task's connection; use it as a context manager so its sessions close."""
        from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook

        return OpenAIBatchHook(conn_id=self.conn_id)

    def _ids(self) -> list[str]:
        """The batch ids: ``batch_id`` itself, or the list it holds (a list, or a JSON string of one)."""
        from airflow_provider_openai_batch.api import validate_id
        from airflow_provider_openai_batch.results.options import parse_batch_ids

        ids = [self.batch_id] if self._one() else parse_batch_ids(self.batch_id, "batch_id")
        for batch_id in ids:
            validate_id(batch_id, "batch_id")
        return ids

    def _one(self) -> bool:
        """Whether ``batch_id`` names one batch (the sensor then returns one batch, not a list)."""
        value = self.batch_id
        return not (isinstance(value, (list, tuple)) or (isinstance(value, str) and value.strip().startswith("[")))

    def _result(self, batches: list[dict[str, Any]]) -> dict[str, Any] | list[dict[str, Any]]:
        return batches[0] if self._one() and len(batches) == 1 else batches

    def execute(self, context: Context) -> Any:
        # One hook (one connection look-up, one HTTP session) for every poke of this try, closed when it ends.
        self._running_ti = context["ti"]
        with self.hook() as hook:
            self._hook = hook
            try:
                return self._execute(context, hook)
            finally:
                self._hook = None

    def _execute(self, context: Context, hook: OpenAIBatchHook) -> Any:
        from airflow.sdk.exceptions import AirflowSensorTimeout

        ids = self._ids()
        remember_batch_link(self, context, hook.settings, ids[-1])
        if not self.deferrable:
            try:
                return super().execute(context)
            except AirflowSensorTimeout:
                if self.cancel_on_timeout:
                    for batch_id in ids:
                        if not hook.retrieve_batch(batch_id).is_terminal:
                            hook.cancel_batch(batch_id)
                raise
        # Checked once before deferring: a batch that already ended never defers.
        first = self.poke(context)
        if first:
            return first.xcom_value if isinstance(first, PokeReturnValue) else first
        from airflow_provider_openai_batch.triggers.batch import BatchTrigger

        self.defer(
            trigger=BatchTrigger(
                batch_ids=ids,
                conn_id=self.conn_id,
                poll_interval=self.poll_interval,
                end_time=time.time() + float(self.timeout),
                cancel_on_timeout=self.cancel_on_timeout,
                cancel_on_kill=self.cancel_on_kill,
                max_consecutive_errors=self.max_consecutive_errors,
                wake_on="all",
                progress={"batches_total": len(ids)},
            ),
            method_name="execute_complete",
        )

    def poke(self, context: Context) -> PokeReturnValue | bool:
        from airflow_provider_openai_batch.statuses import TERMINAL

        batches = []
        for batch_id in self._ids():
            if self._hook is not None:
                batch = self._hook.retrieve_batch(batch_id).model_dump(mode="json")
            else:  # poke() called on its own, outside execute()
                with self.hook() as hook:
                    batch = hook.retrieve_batch(batch_id).model_dump(mode="json")
            self._log_status(batch)
            if batch["status"] in TERMINAL:
                self._judge_final(batch)  # one that ended badly fails the task now
            batches.append(batch)
        if any(b["status"] not in TERMINAL for b in batches):
            self._observe(batches)
            return False
        return PokeReturnValue(is_done=True, xcom_value=self._result(batches))

    def _log_status(self, batch: dict[str, Any]) -> None:
        from airflow_provider_openai_batch.outcome import describe

        if batch["status"] != self._last_statuses.get(batch["id"]):
            self.log.info("OpenAI %s", describe(batch))
            self._last_statuses[batch["id"]] = batch["status"]

    def _observe(self, batches: list[dict[str, Any]]) -> None:
        """A progress line when one is due (:mod:`~airflow_provider_openai_batch.progress`), in ``poke`` mode:
        there one object sees every poke. In ``reschedule`` mode each poke is a new object with no memory of
        the last line, so it writes none (the status lines remain)."""
        if self.mode != "poke":
            return
        from airflow_provider_openai_batch.progress import ProgressLog, snapshot

        if self._progress is None:
            self._progress = ProgressLog(self.log)
        self._progress.observe(snapshot(batches, batches_total=len(batches) if len(batches) > 1 else None))

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any] | list[dict[str, Any]]:
        """Resume after the trigger: judge every batch exactly as :meth:`poke` does."""
        from airflow_provider_openai_batch.events import ERROR, TIMEOUT, batches_from_event
        from airflow_provider_openai_batch.exceptions import OpenAIBatchError
        from airflow_provider_openai_batch.outcome import describe
        from airflow_provider_openai_batch.statuses import TERMINAL

        if event.get("status") == TIMEOUT:
            from airflow.sdk.exceptions import AirflowSensorTimeout

            raise AirflowSensorTimeout(str(event.get("message")))
        if event.get("status") == ERROR:
            raise OpenAIBatchError(str(event.get("message")))
        batches = batches_from_event(event)
        for batch in batches:
            self.log.info("OpenAI %s", describe(batch))
            if batch.get("status") in TERMINAL:
                self._judge_final(batch)
        return self._result(batches)

    def _judge_final(self, batch: dict[str, Any]) -> None:
        """Judge a finished batch. It never changes again, so a failing verdict fails the task without
        retries: a retry would only wait for the same batch."""
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_provider_openai_batch.exceptions import BatchNotSuccessfulError
        from airflow_provider_openai_batch.outcome import judge

        try:
            judge(batch, self.max_failed_fraction)
        except BatchNotSuccessfulError as err:
            raise AirflowFailException(str(err)) from err

    def on_kill(self) -> None:
        if self.cancel_on_kill:
            from airflow_provider_openai_batch.kill_policy import cancel_quietly

            cancel_quietly(self, self._ids(), self._running_ti)
