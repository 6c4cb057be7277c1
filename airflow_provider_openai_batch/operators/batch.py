"""Operators that create and cancel OpenAI batches.

Importing this module is cheap (no HTTP client, pydantic models or hook at module level), so DAG files
that use it parse fast.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, conf

from airflow_provider_openai_batch.arguments import check_count, check_fraction, check_seconds
from airflow_provider_openai_batch.jobs.inputs import check_input_file, write_requests_jsonl
from airflow_provider_openai_batch.links import OpenAIBatchLink, remember_batch_link

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_openai_batch.backends import BackendRules
    from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
    from airflow_provider_openai_batch.jobs.runner import JobRunner

__all__ = ["CancelBatchOperator", "CreateBatchOperator", "check_input_file", "write_requests_jsonl"]

DEFAULT_CONN_ID = "openai_default"


def _default_deferrable() -> bool:
    return conf.getboolean("operators", "default_deferrable", fallback=False)


class CreateBatchOperator(BaseOperator):
    """Run requests through the OpenAI Batch API as one job: check them, split them into as many batches as the
    back end needs, create the batches within your limits, and optionally wait until every request ended.

    Give exactly one input: ``requests`` (request dicts), ``input_file`` (JSONL files) or ``input_file_id``
    (a file already uploaded with purpose ``batch``). Before anything is uploaded or billed, the input is
    checked against the Batch API's rules; a
    :class:`~airflow_provider_openai_batch.exceptions.BatchValidationError` names every offending line.

    Returns the batch id when the job is one batch, else the list of its batches' ids in input order (always
    each one's latest batch); pushes every batch id to XCom ``batch_ids``, a summary to ``job`` and, for one
    batch, the batch itself to ``batch``. Give the return value to
    :class:`~airflow_provider_openai_batch.sensors.batch.BatchSensor` or
    :class:`~airflow_provider_openai_batch.operators.results.BatchResultsOperator`: the export finds every
    request of the job with its final outcome, whatever rounds it took.

    What happens on retry, clear, kill, mark-success, deadline and restart (a retry never bills a request twice;
    the deadline counts from the job's first start; the verdict is over every request of the job as it finally
    ended) is written once, in docs/retries-and-kills.md.

    :param endpoint: The batch endpoint, e.g. ``/v1/chat/completions``.
    :param requests: Request dicts (templated: strings in a literal list are rendered by Jinja, so a prompt
        containing ``{{`` needs ``{% raw %}``; a list from XCom is not). Each is a full input line
        ``{"custom_id", "method", "url", "body"}``; a missing ``method``/``url`` is filled from ``endpoint``, a
        missing ``custom_id`` becomes ``request-<n>`` (1-based), and a dict without ``body`` is the body itself.
    :param input_file: A JSONL file, or a list of them read in order as one input (templated): a local path, a URI
        (``file:///abs/path``, ``s3://bucket/in.jsonl``) or an ``ObjectStoragePath``, read as
        :mod:`airflow_provider_openai_batch.locations` says.
    :param input_file_id: An uploaded input file id (templated).
    :param completion_window: ``"24h"``.
    :param metadata: String pairs stored on every batch: at most 11 (10 with ``resubmit_unfinished``), since the
        provider adds its own (:mod:`~airflow_provider_openai_batch.task_metadata`), whose keys are reserved.
    :param output_expires_after: Seconds (3600..2592000) after which output files expire.
    :param input_expires_after: Seconds (3600..2592000) after which the uploaded input files expire at the API
        (``None``: the API's default). A value shorter than the job may need its files is refused before any
        upload.
    :param conn_id: Airflow connection id (type ``openai_batch``).
    :param wait_for_completion: Wait until every batch ended and judge the job. Without it the task still waits
        until every batch passed ``validating`` (where ``token_limit_exceeded`` refusals come, and are re-queued).
    :param deferrable: Wait in the triggerer; defaults to ``[operators] default_deferrable``.
    :param poll_interval: Seconds between status checks while waiting (and the first back-off after a refusal).
    :param timeout: Seconds from the job's first start after which it stops (``None``: no deadline; each batch is
        still bounded by its completion window plus an hour).
    :param max_failed_fraction: Largest share (0.0..1.0) of the job's requests that may end failed.
    :param cancel_on_kill: Cancel the running batches when the task is killed (see the rules page).
    :param reattach: ``"auto"`` (default): a retry or a cleared task goes on with the job an earlier try started
        for the same input. ``"never"``: every try is a job of its own (and is billed for it).
    :param rebill_completed_requests: Allow a new try to send again the whole input of a batch that ended
        ``expired`` or ``cancelled`` while no try watched it, although its completed requests were billed.
    :param resubmit_unfinished: Rounds (default 0) per batch in which only the requests that did not finish
        (expired, or failed with 429/5xx) are sent again; never after a ``cancelled`` batch. Needs
        ``wait_for_completion``.
    :param max_requests_per_batch: Most requests per batch (default 50,000; capped by the back end).
    :param max_active_batches: Most batches of the job running at once (``None``: no bound).
    :param max_enqueued_tokens: Most estimated input tokens of the job's running batches (``None``: no bound);
        batches are also cut so that none exceeds it. The estimate is the request lines' bytes / 4
        (:func:`~airflow_provider_openai_batch.split.estimate_tokens`).
    """

    template_fields: Sequence[str] = (
        "requests",
        "input_file",
        "input_file_id",
        "endpoint",
        "metadata",
        "completion_window",
        "output_expires_after",
    )
    template_fields_renderers = {"requests": "json", "metadata": "json"}
    operator_extra_links = (OpenAIBatchLink(),)
    ui_color = "#d5f5e3"

    def __init__(
        self,
        *,
        endpoint: str = "/v1/chat/completions",
        requests: list[dict[str, Any]] | None = None,
        input_file: Any = None,
        input_file_id: str | None = None,
        completion_window: str = "24h",
        metadata: dict[str, str] | None = None,
        output_expires_after: int | None = None,
        input_expires_after: int | None = None,
        conn_id: str = DEFAULT_CONN_ID,
        wait_for_completion: bool = False,
        deferrable: bool | None = None,
        poll_interval: float = 60.0,
        timeout: float | None = None,
        max_failed_fraction: float = 1.0,
        cancel_on_kill: bool = False,
        reattach: str = "auto",
        rebill_completed_requests: bool = False,
        resubmit_unfinished: int = 0,
        max_requests_per_batch: int = 50_000,
        max_active_batches: int | None = None,
        max_enqueued_tokens: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        given = [
            name
            for name, value in (("requests", requests), ("input_file", input_file), ("input_file_id", input_file_id))
            if value is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"{self.task_id}: give exactly one of requests, input_file or input_file_id; got {given or 'none'}"
            )
        from airflow_provider_openai_batch.jobs.keys import REATTACH_CHOICES

        if reattach not in REATTACH_CHOICES:
            raise ValueError(f"{self.task_id}: reattach must be 'auto' or 'never'; got {reattach!r}")
        check_fraction(max_failed_fraction, self.task_id)
        if timeout is not None:
            check_seconds(timeout, "timeout", self.task_id)
        check_seconds(poll_interval, "poll_interval", self.task_id)
        check_count(resubmit_unfinished, "resubmit_unfinished", self.task_id, minimum=0, optional=False)
        if resubmit_unfinished and not wait_for_completion:
            raise ValueError(
                f"{self.task_id}: resubmit_unfinished needs wait_for_completion=True: the rounds follow the wait"
            )
        check_count(max_requests_per_batch, "max_requests_per_batch", self.task_id, optional=False)
        check_count(max_active_batches, "max_active_batches", self.task_id)
        check_count(max_enqueued_tokens, "max_enqueued_tokens", self.task_id)
        self.endpoint = endpoint
        self.requests = requests
        self.input_file = input_file
        self.input_file_id = input_file_id
        self.completion_window = completion_window
        self.metadata = metadata
        self.output_expires_after = output_expires_after
        self.input_expires_after = input_expires_after
        self.conn_id = conn_id
        self.wait_for_completion = wait_for_completion
        self.deferrable = _default_deferrable() if deferrable is None else deferrable
        self.poll_interval = poll_interval
        self.wait_timeout = timeout
        self.max_failed_fraction = max_failed_fraction
        self.cancel_on_kill = cancel_on_kill
        self.reattach = reattach
        self.rebill_completed_requests = rebill_completed_requests
        self.resubmit_unfinished = resubmit_unfinished
        self.max_requests_per_batch = max_requests_per_batch
        self.max_active_batches = max_active_batches
        self.max_enqueued_tokens = max_enqueued_tokens
        self._rules: BackendRules | None = None
        self._runner: JobRunner | None = None
        self._running_ti: Any = None

    def hook(self) -> OpenAIBatchHook:
        """A new hook for this task's connection; use it as a context manager so its sessions close."""
        from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook

        return OpenAIBatchHook(conn_id=self.conn_id)

    def backend_rules(self) -> BackendRules:
        """The back end's rules every limit comes from: the connection's once the task started, else OpenAI's."""
        if self._rules is not None:
            return self._rules
        from airflow_provider_openai_batch.backends import rules_for

        return rules_for()

    def input_sources(self) -> list[Any]:
        """The files of ``input_file``, in order."""
        sources = list(self.input_file) if isinstance(self.input_file, (list, tuple)) else [self.input_file]
        if not sources:
            raise ValueError("input_file is an empty list: give at least one JSONL file")
        from airflow_provider_openai_batch.locations import input_location

        return [input_location(source, "input_file") for source in sources]

    def execute(self, context: Context) -> str | list[str]:
        return self._run(context)

    def execute_complete(self, context: Context, event: dict[str, Any], **_: Any) -> str | list[str]:
        """Resume after a wait in the triggerer: the job record says where the job stands, the event says what
        the trigger last saw. (A deferral made before this release passed more keyword arguments; the record
        holds what they held.)"""
        from airflow_provider_openai_batch.events import ERROR, batches_from_event
        from airflow_provider_openai_batch.exceptions import OpenAIBatchError

        if event.get("status") == ERROR:
            # The wait met an error it could not ride out: the retry re-attaches to every batch and waits again.
            raise OpenAIBatchError(str(event.get("message")))
        return self._run(context, batches_from_event(event))

    def _run(self, context: Context, seen: list[dict[str, Any]] | None = None) -> str | list[str]:
        from airflow_provider_openai_batch import api
        from airflow_provider_openai_batch.jobs.prepare import prepare
        from airflow_provider_openai_batch.jobs.runner import JobRunner
        from airflow_provider_openai_batch.jobs.store import RecordStore
        from airflow_provider_openai_batch.task_metadata import validate_user_metadata

        self._running_ti = context["ti"]
        hook = self.hook()
        # Checks that cost nothing come first, so a bad argument never uploads a file. The back end's rules come
        # from the connection (no request); the endpoint is put in its shape (Azure: no /v1).
        self._rules = hook.rules
        self.endpoint = api.validate_endpoint(self.endpoint, self._rules)
        api.validate_completion_window(self.completion_window, self._rules)
        validate_user_metadata(self.metadata, resubmit=bool(self.resubmit_unfinished))
        api.validate_expires_after(self.output_expires_after)
        api.validate_expires_after(self.input_expires_after, "input_expires_after")
        store = RecordStore(context, self.log)
        with hook, tempfile.TemporaryDirectory(prefix="openai-batch-") as tmp:
            # A resumed task goes on from the record; without one (no store, or a task deferred by an earlier
            # release) it finds its job the way a retry does.
            record = store.read() if seen is not None else None
            if record is None:
                record = prepare(self, context, hook, store, tmp, resuming=seen is not None)
            self._runner = JobRunner(self, context, hook, record, store)
            last = record.final_batch_ids()
            if last:
                remember_batch_link(self, context, hook.settings, last[-1])
            return self._runner.run(seen)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the input file (or the uploaded files) in, the batches out, and the job's figures
        (:mod:`airflow_provider_openai_batch.lineage`, imported only when a lineage listener asks)."""
        from airflow_provider_openai_batch.lineage import job_lineage

        return job_lineage(self)

    def on_kill(self) -> None:
        """With ``cancel_on_kill``, cancel every running batch of the job (not when the task was marked
        success: see :func:`~airflow_provider_openai_batch.kill_policy.cancel_quietly`)."""
        if self.cancel_on_kill and self._runner is not None:
            from airflow_provider_openai_batch.kill_policy import cancel_quietly

            running = [str(a.batch_id) for a in self._runner.record.running()]
            cancel_quietly(self, running, self._running_ti)


class CancelBatchOperator(BaseOperator):
    """Cancel a batch, and optionally wait until it is ``cancelled``.

    A batch that already ended (completed, failed, expired, cancelled) is logged, not an error. The API keeps
    a batch ``cancelling`` for up to 10 minutes; partial results then land in its output file.

    :param batch_id: The batch to cancel (templated).
    :param conn_id: Airflow connection id.
    :param wait_for_completion: Wait until the batch reaches a final status.
    :param deferrable: Wait in the triggerer; defaults to ``[operators] default_deferrable``.
    :param poll_interval: Seconds between checks while waiting.
    :param timeout: Seconds to wait at most.
    """

    template_fields: Sequence[str] = ("batch_id",)
    operator_extra_links = (OpenAIBatchLink(),)

    def __init__(
        self,
        *,
        batch_id: str,
        conn_id: str = DEFAULT_CONN_ID,
        wait_for_completion: bool = False,
        deferrable: bool | None = None,
        poll_interval: float = 30.0,
        timeout: float = 3600.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_seconds(poll_interval, "poll_interval", self.task_id)
        check_seconds(timeout, "timeout", self.task_id)
        self.batch_id = batch_id
        self.conn_id = conn_id
        self.wait_for_completion = wait_for_completion
        self.deferrable = _default_deferrable() if deferrable is None else deferrable
        self.poll_interval = poll_interval
        self.wait_timeout = timeout

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_openai_batch import api
        from airflow_provider_openai_batch.exceptions import ConflictError
        from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
        from airflow_provider_openai_batch.outcome import describe

        api.validate_id(self.batch_id, "batch_id")
        with OpenAIBatchHook(conn_id=self.conn_id) as hook:
            remember_batch_link(self, context, hook.settings, self.batch_id)
            batch = hook.retrieve_batch(self.batch_id)
            if batch.is_terminal:
                self.log.info("Nothing to cancel: OpenAI %s", describe(batch.model_dump(mode="json")))
                return batch.model_dump(mode="json")
            try:
                batch = hook.cancel_batch(self.batch_id)
            except ConflictError:  # it finished between our check and the cancel
                batch = hook.retrieve_batch(self.batch_id)
                self.log.info("Batch finished before it could be cancelled: %s", batch.status)
                return batch.model_dump(mode="json")
            if self.wait_for_completion and not batch.is_terminal:
                if self.deferrable:
                    from airflow_provider_openai_batch.triggers.batch import BatchTrigger

                    self.defer(
                        trigger=BatchTrigger(
                            self.batch_id, self.conn_id, self.poll_interval, end_time=time.time() + self.wait_timeout
                        ),
                        method_name="execute_complete",
                    )
                batch = hook.wait_for_batch(self.batch_id, self.poll_interval, self.wait_timeout)
        self.log.info("OpenAI %s", describe(batch.model_dump(mode="json")))
        return batch.model_dump(mode="json")

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        from airflow_provider_openai_batch.events import batch_from_event
        from airflow_provider_openai_batch.outcome import describe

        batch = batch_from_event(event)
        self.log.info("OpenAI %s", describe(batch))
        return batch
