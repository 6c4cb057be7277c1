"""Operators that create and cancel OpenAI batches.

Importing this module is cheap (no HTTP client, pydantic models or hook at module level), so DAG files
that use it parse fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.sdk import BaseOperator, conf

from airflow_provider_openai_batch.links import OpenAIBatchLink, remember_batch_link
from airflow_provider_openai_batch.task_metadata import validate_user_metadata, with_task_metadata

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook

DEFAULT_CONN_ID = "openai_default"
#: How long a retry waits for an earlier batch that is being cancelled (the API takes up to 10 minutes).
CANCELLING_WAIT_SECONDS = 660.0


def _default_deferrable() -> bool:
    return conf.getboolean("operators", "default_deferrable", fallback=False)


class CreateBatchOperator(BaseOperator):
    """Create an OpenAI batch from requests, a JSONL file or an uploaded file, and optionally wait for it.

    Give exactly one input:

    - ``requests``: a list of request dicts (e.g. from XCom). Each is a full input line
      ``{"custom_id", "method", "url", "body"}``; missing ``method``/``url`` are filled from ``endpoint``,
      a missing ``custom_id`` becomes ``request-<n>`` (1-based), and a dict without ``body`` is taken as the
      body itself. They are written to a temporary JSONL file and uploaded.
    - ``input_file``: a local path or ``ObjectStoragePath`` of a JSONL file, uploaded as is.
    - ``input_file_id``: a file already uploaded with purpose ``batch``.

    Before anything is uploaded or billed, the input (``requests`` or ``input_file``) is checked against the
    Batch API's rules (UTF-8, unique ``custom_id``, method ``POST``, ``url`` equal to ``endpoint``, an object
    ``body``, at most 50,000 lines and 200 MB); a
    :class:`~airflow_provider_openai_batch.exceptions.BatchValidationError` names every offending line.

    **Retries never bill twice.** The batch's metadata carries an idempotency key derived from the dag id,
    task id, run id, map index and a digest of the input, and the task state store records the create (see
    :mod:`~airflow_provider_openai_batch.operators.reattach`). When the create POST fails ambiguously the
    hook finds the batch by its key instead of creating another, and cancels a late twin. A retried try (one
    after a worker died right after the POST too) or a cleared task with the same input re-attaches to the
    batch created before (``reattach="auto"``), in whatever status it is, completed included: those results
    are paid for. ``reattach="never"`` makes every try create its own batch.

    **A retry after a batch that ended without its results.** If the earlier batch ``failed`` (refused at
    validation) or ended with no request completed, nothing was billed and a new batch is created. If it
    ended ``expired`` or ``cancelled`` after completing some requests, those were billed, and re-submitting
    the whole input would bill them again: the task fails without retrying and says so, unless
    ``rebill_completed_requests=True`` (then the whole input is sent again, and the log says how many
    requests are billed twice).

    **Waiting.** With ``wait_for_completion`` the task waits for the batch to end: deferred to the
    triggerer (no worker slot) when ``deferrable``, else polling. The finished batch is judged like
    :class:`~airflow_provider_openai_batch.sensors.batch.BatchSensor` does (``max_failed_fraction``); a
    failing verdict is final and fails the task without retries (the batch will not change). ``timeout``
    counts from the batch's creation, so it holds across retries and triggerer restarts; when it passes the
    task fails without retries and the batch keeps running at the API. A wait that ended in an outage (the
    API kept failing) is an ordinary failure: the retry re-attaches and waits again, within the same deadline.

    **Kill.** With ``cancel_on_kill`` the batch is cancelled when the task is killed (marked failed or
    cleared by a user, or its worker stopped gracefully), in a worker or, while deferred, in the triggerer
    (Airflow 3.3+). A task marked *success* keeps its batch: the user declared the work done, and a downstream
    task may still read the results. Without ``cancel_on_kill`` the batch keeps running and billing.

    Returns the batch id (XCom ``return_value``), pushes the batch as JSON to XCom key ``batch`` and the ids of
    every round's batch to ``batch_ids`` (one id unless ``resubmit_unfinished`` made more rounds).

    **Inputs of any size.** An input that does not fit one batch (more than ``max_requests_per_batch`` requests,
    more than the back end's bytes per file or embedding inputs, or several files in ``input_file``) runs as a *job*:
    it is split while streaming into shards, each checked by the same pre-flight rules, all uploaded, and their
    batches created in input order within ``max_active_batches`` and ``max_enqueued_tokens``; a shard refused
    with ``token_limit_exceeded`` is re-queued with back-off; a retry re-attaches shard by shard (see
    :mod:`~airflow_provider_openai_batch.operators.job`). With ``wait_for_completion`` the task waits for the
    whole job (one deferral, woken when a batch ends so the next shards can be created). Without it the task
    still waits (deferred, or polling) until every shard's batch is created and has passed ``validating``, the
    phase at whose end the API refuses a batch with ``token_limit_exceeded``: a refused shard is re-queued
    meanwhile, so the task never succeeds with a shard that will not run for that reason. A job returns the list
    of its shards' batch ids in input order, pushes every batch id (re-queued attempts included) to
    ``batch_ids`` and a summary to ``job``; give the return value to ``BatchSensor`` or
    ``BatchResultsOperator`` to wait for or merge the results in input order. One input that fits one batch
    takes the one-batch way above, unchanged.

    :param endpoint: The batch endpoint, e.g. ``/v1/chat/completions``.
    :param requests: Requests to send (templated: strings in a literal list are rendered by Jinja, so a
        prompt containing ``{{`` needs ``{% raw %}``; a list from XCom, e.g. ``build_requests()``, is not).
    :param input_file: A JSONL file, or a list of them read in order as one input (templated).
    :param input_file_id: An uploaded input file id (templated).
    :param completion_window: ``"24h"``.
    :param metadata: Up to 11 string pairs stored on the batch; the provider adds five of its own
        (``airflow_idempotency_key`` and the creating task instance, see
        :mod:`~airflow_provider_openai_batch.task_metadata`), whose keys are reserved.
    :param output_expires_after: Seconds (3600..2592000) after which output files expire.
    :param input_expires_after: Seconds (3600..2592000) after which the uploaded input file expires at the API
        (the Files API's ``expires_after``), so inputs do not fill the account's file storage. ``None``: the
        API's default for batch files. A job uploads every shard up front, so when ``max_active_batches`` or
        ``max_enqueued_tokens`` hold shards back for rounds of batches, a value shorter than (rounds - 1)
        completion windows plus an hour is refused before anything is uploaded (a back-off after
        ``token_limit_exceeded`` can still add to the wait).
    :param conn_id: Airflow connection id (type ``openai_batch``).
    :param wait_for_completion: Wait until the batch ends.
    :param deferrable: Wait in the triggerer; defaults to ``[operators] default_deferrable``.
    :param poll_interval: Seconds between status checks while waiting.
    :param timeout: Seconds from the batch's creation to wait at most (``None``: the 24h window plus an hour).
    :param max_failed_fraction: Largest share of failed requests (0.0..1.0) a completed batch may have.
    :param cancel_on_kill: Cancel the batch when the task is killed.
    :param reattach: ``"auto"`` (default): re-attach to the batch an earlier try or run created for the same
        input. ``"never"``: every try creates a new batch (and is billed for it).
    :param rebill_completed_requests: Allow a retry to re-submit the whole input after an ``expired`` or
        ``cancelled`` batch whose completed requests were already billed (default ``False``: fail instead).
    :param resubmit_unfinished: Extra rounds (default 0) in which only the requests that did not finish are
        sent again: when a batch ends ``expired`` or ``cancelled``, or ``completed`` with requests failed for
        transient reasons (``batch_expired``, rate limits, 5xx; never a 400-class refusal), a new batch of
        exactly those input lines is created (an idempotency key of its own per round) and waited for, up to
        this many times. A request that succeeded is never sent twice. Needs ``wait_for_completion``. XCom
        ``batch_ids`` lists every round's batch; the return value and ``batch`` are the last round's. A retry
        re-attaches to the latest round and goes on from there instead of failing. One batch only: a job of
        several batches refuses it.
    :param max_requests_per_batch: Most requests per batch when an input is split (default 50,000; capped by the
        back end's ``max_requests_per_file``).
    :param max_active_batches: Most batches of one job running at once (``None``: no bound).
    :param max_enqueued_tokens: Most estimated input tokens of one job's running batches (``None``: no bound);
        shards are also cut so that none exceeds it. The estimate is the bytes of the request lines / 4
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
        check_fraction(max_failed_fraction, self.task_id)
        from airflow_provider_openai_batch.operators.reattach import REATTACH_CHOICES

        if reattach not in REATTACH_CHOICES:
            raise ValueError(f"{self.task_id}: reattach must be 'auto' or 'never'; got {reattach!r}")
        if timeout is not None:
            check_seconds(timeout, "timeout", self.task_id)
        check_seconds(poll_interval, "poll_interval", self.task_id)
        if isinstance(resubmit_unfinished, bool) or not isinstance(resubmit_unfinished, int) or resubmit_unfinished < 0:
            raise ValueError(
                f"{self.task_id}: resubmit_unfinished must be a whole number of extra rounds (0 = off); "
                f"got {resubmit_unfinished!r}"
            )
        if resubmit_unfinished and not wait_for_completion:
            raise ValueError(
                f"{self.task_id}: resubmit_unfinished needs wait_for_completion=True: the rounds follow the wait"
            )
        for name, value in (
            ("max_requests_per_batch", max_requests_per_batch),
            ("max_active_batches", max_active_batches),
            ("max_enqueued_tokens", max_enqueued_tokens),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{self.task_id}: {name} must be a whole number >= 1 (or None); got {value!r}")
        self.max_requests_per_batch = max_requests_per_batch
        self.max_active_batches = max_active_batches
        self.max_enqueued_tokens = max_enqueued_tokens
        self._job_state: dict[str, Any] | None = None
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
        self.batch_id: str | None = None
        self._running_ti: Any = None

    def hook(self) -> OpenAIBatchHook:
        """A new hook for this task's connection; use it as a context manager so its sessions close."""
        from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook

        return OpenAIBatchHook(conn_id=self.conn_id)

    def execute(self, context: Context) -> str | list[str]:
        from airflow_provider_openai_batch import api
        from airflow_provider_openai_batch.operators.reattach import CreateLedger, idempotency_key
        from airflow_provider_openai_batch.outcome import describe

        # Checks that cost nothing come first, so a bad argument never uploads a file. The back end's rules come
        # from the connection (no request); the endpoint is put in its shape (Azure: no /v1).
        hook = self.hook()
        self._backend_rules = hook.rules
        self.endpoint = api.validate_endpoint(self.endpoint, self._backend_rules)
        api.validate_completion_window(self.completion_window, self._backend_rules)
        validate_user_metadata(self.metadata)  # the provider's five pairs counted, its keys refused
        api.validate_expires_after(self.output_expires_after)
        api.validate_expires_after(self.input_expires_after, "input_expires_after")
        ti = self._running_ti = context["ti"]
        with hook, tempfile.TemporaryDirectory(prefix="openai-batch-") as tmp:
            sources = self._sources(tmp)
            if sources and self._needs_job(sources):
                return self._run_job(context, hook, tmp, sources)
            source, digest = self._prepare_input(tmp, sources)
            ledger = CreateLedger(context, idempotency_key(context, digest, self.reattach), self.log)
            batch, rounds = (
                self._earlier_batch(hook, ledger, ti.try_number or 1) if self.reattach == "auto" else (None, [])
            )
            if batch is None:
                started = time.time()
                ledger.creating()
                batch = self._create(hook, ledger.key, source)
                ledger.created(batch.id, started)
                rounds = [batch.id]
            self.batch_id = batch.id
            remember_batch_link(self, context, hook.settings, batch.id)
            self.log.info("OpenAI %s", describe(batch.model_dump(mode="json")))
            ti.xcom_push(key="batch", value=batch.model_dump(mode="json"))
            ti.xcom_push(key="batch_ids", value=rounds)
            if self.wait_for_completion:
                return self._wait(context, hook, batch, ledger, rounds)
        return batch.id

    def _earlier_batch(self, hook: OpenAIBatchHook, ledger: Any, try_number: int) -> tuple[Any, list[str]]:
        """The batch to re-attach to and the rounds so far, or ``(None, [])`` to create one from the whole input;
        fails the task rather than bill a request twice."""
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_provider_openai_batch.exceptions import BatchTimeoutError
        from airflow_provider_openai_batch.operators.reattach import find_earlier_batch
        from airflow_provider_openai_batch.operators.resubmit import RESUBMITTABLE
        from airflow_provider_openai_batch.statuses import CANCELLING, COMPLETED, NOT_REATTACHABLE, BatchStatus

        batch, rounds = find_earlier_batch(hook, ledger, try_number)
        if batch is None:
            return None, []
        if batch.status == CANCELLING:
            # Its counts still move until it is cancelled (up to 10 minutes): decide on the final ones.
            self.log.info("The earlier batch %s is being cancelled; waiting for it to end before deciding", batch.id)
            try:
                batch = hook.wait_for_batch(batch.id, min(self.poll_interval, 15.0), CANCELLING_WAIT_SECONDS)
            except BatchTimeoutError as err:
                raise BatchTimeoutError(f"{err}: retry once it is cancelled") from None
        if batch.status not in NOT_REATTACHABLE:
            self.log.info("Re-attaching to batch %s created earlier for the same input (%s)", batch.id, batch.status)
            return batch, rounds
        done, total = batch.request_counts.completed, batch.request_counts.total
        if len(rounds) > 1 and (batch.status == BatchStatus.FAILED or done == 0):
            # A later round that billed nothing: build it again from the round before, never from the whole
            # input, whose finished requests were billed in the earlier rounds.
            previous = hook.retrieve_batch(rounds[-2])
            self.log.info(
                "Round %d (batch %s) ended %s with nothing done: going on from round %d (batch %s)",
                len(rounds),
                batch.id,
                batch.status,
                len(rounds) - 1,
                previous.id,
            )
            return previous, rounds[:-1]
        if batch.status in RESUBMITTABLE - {COMPLETED} and self.resubmit_unfinished:
            self.log.info(
                "The earlier batch %s ended %s with %d of %d requests completed: re-attaching to re-run only the "
                "requests that did not finish (resubmit_unfinished=%d)",
                batch.id,
                batch.status,
                done,
                total,
                self.resubmit_unfinished,
            )
            return batch, rounds
        if batch.status == BatchStatus.FAILED or done == 0:
            self.log.info(
                "The earlier batch %s ended %s with no request completed, so nothing was billed: creating a new one",
                batch.id,
                batch.status,
            )
            return None, []
        if not self.rebill_completed_requests:
            raise AirflowFailException(
                f"The earlier batch {batch.id} for this input ended {batch.status} with {done} of {total} requests "
                f"completed and billed (results in output file {batch.output_file_id}). Sending the whole input "
                f"again would bill those {done} requests a second time, so this try stops without creating a batch. "
                "Set rebill_completed_requests=True to re-submit everything anyway, or send only the unfinished "
                "requests as a new input."
            )
        self.log.warning(
            "The earlier batch %s ended %s with %d of %d requests completed; re-submitting the whole input as "
            "rebill_completed_requests=True asks: those %d requests are billed a second time",
            batch.id,
            batch.status,
            done,
            total,
            done,
        )
        return None, []

    def _rules(self) -> Any:
        """The back end's rules every limit comes from: the connection's (read by :meth:`execute` before anything
        else), OpenAI's when called outside it."""
        rules = getattr(self, "_backend_rules", None)
        if rules is not None:
            return rules
        from airflow_provider_openai_batch.backends import rules_for

        return rules_for()

    def _sources(self, tmp: str) -> list[Any]:
        """The input's files in order (``requests`` written to one); empty for ``input_file_id``."""
        if self.input_file_id is not None:
            return []
        if self.requests is not None:
            path = os.path.join(tmp, "batch_input.jsonl")
            write_requests_jsonl(self.requests, self.endpoint, path)
            return [path]
        sources = list(self.input_file) if isinstance(self.input_file, (list, tuple)) else [self.input_file]
        if not sources:
            raise ValueError("input_file is an empty list: give at least one JSONL file")
        for source in sources:
            if not (isinstance(source, (str, os.PathLike)) or hasattr(source, "fs")):
                raise ValueError(
                    "input_file must be a local path or an ObjectStoragePath of a JSONL file; got "
                    f"{type(source).__name__}: give one, or a list of them"
                )
            if not hasattr(source, "fs") and not os.path.isfile(source):
                raise ValueError(f"input_file {str(source)!r} does not exist or is not a file")
        return sources

    def _needs_job(self, sources: list[Any]) -> bool:
        """Whether the input needs several batches: several files, or one that does not fit one batch."""
        from airflow_provider_openai_batch.split import fits_one_batch

        if len(sources) > 1:
            return True
        return not fits_one_batch(
            sources[0],
            self.endpoint,
            rules=self._rules(),
            max_requests_per_batch=self.max_requests_per_batch,
            max_tokens_per_batch=self.max_enqueued_tokens,
        )

    def _prepare_input(self, tmp: str, sources: list[Any]) -> tuple[Any, str]:
        """The file to upload (``None`` for ``input_file_id``), checked, and a digest of its content."""
        from airflow_provider_openai_batch import api

        if self.input_file_id is not None:
            api.validate_id(self.input_file_id, "input_file_id")
            return None, hashlib.sha256(self.input_file_id.encode()).hexdigest()
        name = "input_file" if self.requests is None else "requests; line N is requests[N-1]"
        return sources[0], check_input_file(sources[0], self.endpoint, name, self._rules())

    def _create_batch(self, hook: OpenAIBatchHook, input_file_id: str, key: str) -> Any:
        """The one create call of this operator (a single batch, a round, or a job's shard)."""
        return hook.create_batch(
            input_file_id,
            self.endpoint,
            self.completion_window,
            with_task_metadata(self.metadata, self._running_ti),  # which DAG/task/run/map index made it
            self.output_expires_after,
            idempotency_key=key,
        )

    def _create(self, hook: OpenAIBatchHook, key: str, source: Any) -> Any:
        from airflow_provider_openai_batch.exceptions import APIError, OpenAIBatchError

        uploaded = (
            None
            if source is None
            else hook.upload_file(source, purpose="batch", expires_after=self.input_expires_after)
        )
        try:
            return self._create_batch(hook, uploaded.id if uploaded is not None else str(self.input_file_id), key)
        except APIError as err:
            # A definite refusal (any 4xx) means no batch will ever use our upload: don't leave it behind.
            # After a 5xx the batch may exist after all, so the file stays. A user's input_file_id is theirs.
            if uploaded is not None and err.status_code is not None and 400 <= err.status_code < 500:
                try:
                    hook.delete_file(uploaded.id)
                except OpenAIBatchError as cleanup:
                    self.log.warning("Could not delete the unused input file %s: %s", uploaded.id, cleanup)
            raise

    def _wait(self, context: Context, hook: OpenAIBatchHook, batch: Any, ledger: Any, rounds: list[str]) -> str:
        """Wait for ``batch`` (the last of ``rounds``), then for each further round it leads to; judge the end."""
        from airflow_provider_openai_batch.exceptions import BatchTimeoutError

        while True:
            # From the batch's creation, not from this try: a retry or a re-attach never extends the deadline.
            timeout = self.wait_timeout if self.wait_timeout is not None else 25 * 3600.0
            end_time = float(batch.created_at or time.time()) + timeout
            if self.deferrable and not batch.is_terminal:
                from airflow_provider_openai_batch.triggers.batch import BatchTrigger

                self.defer(
                    trigger=BatchTrigger(
                        batch.id,
                        self.conn_id,
                        self.poll_interval,
                        end_time=end_time,
                        cancel_on_kill=self.cancel_on_kill,
                    ),
                    method_name="execute_complete",
                    kwargs={"key": ledger.key, "rounds": rounds},
                )
            try:
                final = hook.wait_for_batch(batch.id, self.poll_interval, max(0.0, end_time - time.time()))
            except BatchTimeoutError as err:
                fail_for_good(err, f"the deadline (timeout={timeout:g}s from the batch's creation) passed")
            following = self._next_round(context, hook, ledger, final.model_dump(mode="json"), rounds)
            if following is None:
                return self._finish(context, final.model_dump(mode="json"), rounds)
            batch, rounds = following, [*rounds, following.id]

    # ------------------------------------------------------------------------------------------- jobs

    def _run_job(self, context: Context, hook: OpenAIBatchHook, tmp: str, sources: list[Any]) -> list[str]:
        """Split, upload and submit an input too large for one batch (see :mod:`.job`)."""
        from airflow_provider_openai_batch.operators.job import (
            JobLedger,
            new_state,
            recover_from_batch_list,
            same_layout,
        )
        from airflow_provider_openai_batch.operators.reattach import FALLBACK_WINDOW_SECONDS, idempotency_key
        from airflow_provider_openai_batch.split import request_cap, split_input

        if self.resubmit_unfinished:
            raise ValueError(
                f"{self.task_id}: resubmit_unfinished works on one batch; this input needs several (a job). Set "
                "resubmit_unfinished=0, or give a smaller input"
            )
        rules = self._rules()
        started = time.time()
        names = None if self.requests is None else ["requests (line N is requests[N-1])"]
        split = split_input(
            sources,
            self.endpoint,
            tmp,
            rules=rules,
            max_requests_per_batch=self.max_requests_per_batch,
            max_tokens_per_batch=self.max_enqueued_tokens,
            names=names,
        )
        cap = request_cap(self.max_requests_per_batch, rules)
        layout = f"{split.digest}:{cap}:{self.max_enqueued_tokens}:{self.endpoint}"
        key = idempotency_key(context, hashlib.sha256(layout.encode()).hexdigest(), self.reattach)
        ledger = JobLedger(context, key, self.log)
        state = ledger.read() if self.reattach == "auto" else None
        if not same_layout(state, split):
            state = new_state(key, split)
            try_number = context["ti"].try_number or 1
            if self.reattach == "auto" and try_number > 1:
                found = recover_from_batch_list(hook, state, time.time() - FALLBACK_WINDOW_SECONDS)
                if found:
                    self.log.info("Found the batches of %d shards of this job by their keys", found)
        else:
            self.log.info("Re-attaching to the job recorded by an earlier try")
        assert state is not None
        self.log.info(
            "Job: %d requests in %d shards of at most %d requests and %d bytes (split in %.1fs); "
            "max_active_batches=%s, max_enqueued_tokens=%s",
            split.requests,
            len(split.shards),
            cap,
            rules.max_bytes_per_file,
            time.time() - started,
            self.max_active_batches,
            self.max_enqueued_tokens,
        )
        self._check_input_expiry([s.tokens for s in split.shards])
        job = self._job(context, state, ledger)
        job.upload(hook, [s.path for s in split.shards], self.input_expires_after)
        ledger.write(state)
        return self._drive_job(context, hook, job)

    def _check_input_expiry(self, tokens: list[int]) -> None:
        """Refuse, before anything is uploaded, an ``input_expires_after`` that a queued shard's file may not
        outlive: every shard is uploaded up front, and ``max_active_batches``/``max_enqueued_tokens`` may hold
        the last ones back for rounds of batches, each of which may run its whole completion window."""
        from airflow_provider_openai_batch.operators.job import queue_rounds

        if self.input_expires_after is None:
            return
        rounds = queue_rounds(tokens, self.max_active_batches, self.max_enqueued_tokens)
        window = str(self.completion_window)
        hours = int(window[:-1]) if window.endswith("h") and window[:-1].isdigit() else 24
        needed = (rounds - 1) * hours * 3600 + 3600  # an hour's margin for the creates and the polls
        if rounds > 1 and self.input_expires_after < needed:
            raise ValueError(
                f"{self.task_id}: input_expires_after={self.input_expires_after}s is shorter than a queued shard may "
                f"wait for its create: {len(tokens)} shards need {rounds} rounds under max_active_batches="
                f"{self.max_active_batches} and max_enqueued_tokens={self.max_enqueued_tokens}, and each round may "
                f"run its {window} completion window, so the last shards' files must live at least {needed}s. Set "
                f"input_expires_after >= {needed} (at most 2592000), raise max_active_batches/max_enqueued_tokens, "
                "or leave input_expires_after unset. Nothing was uploaded or billed"
            )

    def _job(self, context: Context, state: dict[str, Any], ledger: Any = None) -> Any:
        from airflow_provider_openai_batch.operators.job import Job, JobLedger

        self._job_state = state
        return Job(
            state,
            ledger or JobLedger(context, state["job_key"], self.log),
            self.log,
            max_active_batches=self.max_active_batches,
            max_enqueued_tokens=self.max_enqueued_tokens,
            backoff_base=self.poll_interval,
        )

    def _drive_job(
        self, context: Context, hook: OpenAIBatchHook, job: Any, seen: list[dict[str, Any]] | None = None
    ) -> list[str]:
        """Record ends, re-queue refusals, create what the limits allow; then wait, or finish."""
        from airflow_provider_openai_batch.exceptions import BatchTimeoutError
        from airflow_provider_openai_batch.progress import ProgressLog, snapshot

        progress = ProgressLog(self.log)
        end_time = None if self.wait_timeout is None else float(job.state["started_at"]) + self.wait_timeout
        while True:
            job.claim_cut_off_creates(hook)
            job.refresh(hook, seen)
            seen = None
            # One `now` for the back-offs: submit() and wake_at() must agree on whether the head of the queue
            # still waits, or a back-off ending between them leaves a wait with nothing to end it.
            now = time.time()
            job.requeue_refused(now)
            if job.finished():
                return self._finish_job(context, hook, job)
            self._stop_if_a_shard_ended_for_good(job)
            if not self.wait_for_completion and job.admitted():
                return self._finish_job(context, hook, job, judge_it=False)
            # Before any create: a batch created past the deadline would be billed and then abandoned by the
            # task failing for its deadline (e.g. a task resumed late from the queue of a busy worker pool).
            if end_time is not None and now >= end_time:
                fail_for_good(
                    BatchTimeoutError(f"the job was still running at its deadline: {job.summary([])}"),
                    f"the deadline (timeout={self.wait_timeout:g}s from the job's start) passed; no further "
                    "shard was submitted",
                )
            job.submit(lambda file_id, key: self._create_batch(hook, file_id, key), now)
            context["ti"].xcom_push(key="batch_ids", value=job.batch_ids())
            if not job.queued():
                remember_batch_link(self, context, hook.settings, job.final_batch_ids()[-1])
            # Without wait_for_completion the task returns only once no shard can be refused for the
            # enqueued-token limit any more (refusals come at the end of `validating`): a refused shard must be
            # re-queued, and only this task can do that.
            if not self.wait_for_completion and job.admitted():
                return self._finish_job(context, hook, job, judge_it=False)
            if job.finished():
                return self._finish_job(context, hook, job)
            active = [str(s["batch_id"]) for s in job.active()]
            if self.deferrable:
                from airflow_provider_openai_batch.triggers.batch import BatchTrigger

                self.defer(
                    trigger=BatchTrigger(
                        active[0] if active else job.batch_ids()[-1],
                        self.conn_id,
                        self.poll_interval,
                        end_time=end_time,
                        cancel_on_kill=self.cancel_on_kill,
                        batch_ids=active,
                        wake_on_any=bool(job.queued()),
                        wake_at=job.wake_at(now),
                        # All created, not waiting for the ends: wake once every batch passed validation.
                        wake_when_admitted=not self.wait_for_completion and not job.queued(),
                        job=job.progress(),
                        resume={"job": job.state},
                    ),
                    method_name="execute_complete",
                    kwargs={"job": job.state},
                )
            pause = self.poll_interval
            wake = job.wake_at(now)
            if wake is not None:
                pause = max(0.0, min(pause, wake - time.time()))
            progress.observe(snapshot([], batches_total=len(job.shards), base=job.totals()))
            time.sleep(pause)

    def _stop_if_a_shard_ended_for_good(self, job: Any) -> None:
        """Fail without retries, creating nothing more, once a shard ended in a way no retry can redo: the job
        could only fail at its end, and every further shard would be billed for results nobody exports. The
        running batches are left running (cancelling is ``cancel_on_kill``'s, on a kill only)."""
        from airflow_provider_openai_batch.exceptions import BatchNotSuccessfulError

        shard = job.ended_for_good()
        if shard is None:
            return
        codes = [c for c in shard.get("error_codes") or [] if c]
        running = [str(s["batch_id"]) for s in job.active()]
        never = [s["index"] + 1 for s in job.queued()]
        fail_for_good(
            BatchNotSuccessfulError(
                f"shard {shard['index'] + 1} of {len(job.shards)}: batch {shard['batch_id']} ended "
                f"{shard['status']}"
                + (f" ({', '.join(codes)})" if codes else "")
                + "; "
                + (f"shards {never} were not submitted" if never else "every shard had been submitted")
                + (f"; still running, not cancelled: {running}" if running else ""),
                {"id": shard["batch_id"], "status": shard["status"]},
            ),
            "a shard ended and will not change, so the job cannot succeed",
        )

    def _finish_job(self, context: Context, hook: OpenAIBatchHook, job: Any, judge_it: bool = True) -> list[str]:
        """Push every batch id and the summary; judge the finished job."""
        from airflow_provider_openai_batch.exceptions import BatchNotSuccessfulError
        from airflow_provider_openai_batch.operators.job import judge_job

        finals = [hook.retrieve_batch(b).model_dump(mode="json") for b in job.final_batch_ids()]
        summary = job.summary(finals)
        context["ti"].xcom_push(key="batch_ids", value=job.batch_ids())
        context["ti"].xcom_push(key="job", value=summary)
        self.log.info(
            "Job of %d shards: %s; %d of %d requests completed, %d failed; tokens %d",
            summary["shards"],
            summary["statuses"],
            summary["completed"],
            summary["requests"],
            summary["failed"],
            summary["total_tokens"],
        )
        if judge_it:
            try:
                judge_job(finals, self.max_failed_fraction)
            except BatchNotSuccessfulError as err:
                fail_for_good(err, "the job's batches ended and will not change")
        return job.final_batch_ids()

    def execute_complete(
        self,
        context: Context,
        event: dict[str, Any],
        key: str | None = None,
        rounds: list[str] | None = None,
        job: dict[str, Any] | None = None,
    ) -> Any:
        """Resume after the trigger: start the next round of unfinished requests, or record and judge the end."""
        from airflow_provider_openai_batch.events import batch_from_event

        if job is None and isinstance(event.get("resume"), dict):  # the record came back with the event
            job = event["resume"].get("job")
        if job is not None:
            return self._resume_job(context, event, job)
        from airflow_provider_openai_batch.exceptions import BatchTimeoutError
        from airflow_provider_openai_batch.operators.reattach import CreateLedger
        from airflow_provider_openai_batch.outcome import describe

        try:
            batch = batch_from_event(event)
        except BatchTimeoutError as err:
            fail_for_good(err, "the deadline passed")
        self.batch_id = batch["id"]
        self._running_ti = context["ti"]
        self.log.info("OpenAI %s", describe(batch))
        rounds = list(rounds or [batch["id"]])
        if key and self.resubmit_unfinished:
            ledger = CreateLedger(context, key, self.log)
            with self.hook() as hook:
                following = self._next_round(context, hook, ledger, batch, rounds)
                if following is not None:
                    return self._wait(context, hook, following, ledger, [*rounds, following.id])
        return self._finish(context, batch, rounds)

    def _next_round(
        self, context: Context, hook: OpenAIBatchHook, ledger: Any, batch: dict[str, Any], rounds: list[str]
    ) -> Any:
        """Create the next round's batch from the requests of ``batch`` that did not finish, or return ``None``
        when there is nothing to re-run or no round left."""
        from airflow_provider_openai_batch.operators.reattach import round_key
        from airflow_provider_openai_batch.operators.resubmit import RESUBMITTABLE, write_unfinished_input

        if len(rounds) > self.resubmit_unfinished or batch.get("status") not in RESUBMITTABLE:
            return None
        number = len(rounds) + 1
        with tempfile.TemporaryDirectory(prefix="openai-batch-round-") as tmp:
            path = os.path.join(tmp, f"round-{number}.jsonl")
            count, total = write_unfinished_input(hook, batch, path)
            if count == 0:
                return None
            self.log.info(
                "Round %d of at most %d: re-submitting the %d of %d requests of batch %s (%s) that did not finish; "
                "the %d that finished are not sent again",
                number,
                self.resubmit_unfinished + 1,
                count,
                total,
                batch["id"],
                batch.get("status"),
                total - count,
            )
            key = round_key(ledger.key, number)
            started = time.time()
            ledger.creating(key, rounds)
            following = self._create(hook, key, path)
        ledger.created(following.id, started, [*rounds, following.id])
        self.batch_id = following.id
        remember_batch_link(self, context, hook.settings, following.id)
        context["ti"].xcom_push(key="batch_ids", value=[*rounds, following.id])
        return following

    def _finish(self, context: Context, batch: dict[str, Any], rounds: list[str]) -> str:
        """Record the last round's batch and every round's id, and judge the last round."""
        from airflow_provider_openai_batch.exceptions import BatchNotSuccessfulError
        from airflow_provider_openai_batch.outcome import judge

        context["ti"].xcom_push(key="batch", value=batch)
        context["ti"].xcom_push(key="batch_ids", value=rounds)
        try:
            judge(batch, self.max_failed_fraction)
        except BatchNotSuccessfulError as err:
            fail_for_good(err, "the batch ended and will not change")
        return str(batch["id"])

    def _resume_job(self, context: Context, event: dict[str, Any], state: dict[str, Any]) -> list[str]:
        """A job's wait woke: a batch ended, a back-off is over, or the wait failed."""
        from airflow_provider_openai_batch.events import ERROR, TIMEOUT, batches_from_event
        from airflow_provider_openai_batch.exceptions import BatchTimeoutError, OpenAIBatchError

        self._running_ti = context["ti"]
        job = self._job(context, state)
        if event.get("status") == TIMEOUT:
            fail_for_good(BatchTimeoutError(str(event.get("message"))), "the job's deadline passed")
        if event.get("status") == ERROR:
            # A retry re-attaches to every shard from the record and waits again.
            raise OpenAIBatchError(str(event.get("message")))
        with self.hook() as hook:
            return self._drive_job(context, hook, job, batches_from_event(event))

    def on_kill(self) -> None:
        if self.cancel_on_kill and self._job_state is not None:
            from airflow_provider_openai_batch.statuses import TERMINAL

            for shard in self._job_state.get("shards") or []:
                if shard.get("batch_id") and shard.get("status") not in TERMINAL:
                    cancel_quietly(self, str(shard["batch_id"]), self._running_ti)
            return
        if self.cancel_on_kill and self.batch_id:
            cancel_quietly(self, self.batch_id, self._running_ti)


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


def check_fraction(value: Any, task_id: str) -> None:
    """Refuse a ``max_failed_fraction`` outside 0.0..1.0 when the DAG is parsed, not when a batch ends."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(
            f"{task_id}: max_failed_fraction must be a number from 0.0 (fail on any failed request) to 1.0 "
            f"(never fail on request errors); got {value!r}"
        )


def check_seconds(value: Any, name: str, task_id: str) -> None:
    """Refuse a duration that is not a positive number when the DAG is parsed (a zero poll interval would
    hammer the API)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"{task_id}: {name} must be a positive number of seconds; got {value!r}")


def fail_for_good(err: Exception, why: str) -> NoReturn:
    """Fail the task without its retries: a retry would meet the same final verdict (and a retried wait
    would only re-attach to the same batch)."""
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException(f"{err} (not retried: {why})") from err


def cancel_quietly(task: Any, batch_id: str, ti: Any = None) -> None:
    """Cancel on kill without raising: a batch that already ended (409) or an API hiccup must not turn the
    kill into a second failure; the outcome is logged either way. A task a user marked *success* keeps its
    batch (:mod:`~airflow_provider_openai_batch.task_state`). A hook of its own, closed at once: a kill may
    interrupt the task's hook in the middle of a request.

    :param ti: The running task instance, to learn what the user did; without it the batch is cancelled.
    """
    from airflow_provider_openai_batch.exceptions import OpenAIBatchError
    from airflow_provider_openai_batch.task_state import keeps_batch, state_on_kill

    state = state_on_kill(ti, task.log) if ti is not None else None
    if keeps_batch(state):
        task.log.info("Not cancelling batch %s: the task is %s, so its results are still wanted", batch_id, state)
        return
    try:
        with task.hook() as hook:
            batch = hook.cancel_batch(batch_id)
    except (OpenAIBatchError, ValueError) as err:
        task.log.warning("Could not cancel batch %s on kill: %s", batch_id, err)
        return
    task.log.info("Cancelled batch %s on kill (now %s)", batch_id, batch.status)


def write_requests_jsonl(requests: Any, endpoint: str, path: str) -> int:
    """Write request dicts as a batch input file, filling ``method``, ``url`` and ``custom_id`` shorthands."""
    if not isinstance(requests, (list, tuple)) or not requests:
        raise ValueError(f"requests must be a non-empty list of request dicts; got {type(requests).__name__}")
    with open(path, "wb") as out:
        for number, item in enumerate(requests, start=1):
            if not isinstance(item, dict):
                raise ValueError(f"requests[{number - 1}] must be a dict, got {type(item).__name__}")
            if "body" in item:
                line = dict(item)
            else:  # the shorthand: the dict is the body, apart from the line-level keys it may carry
                body = dict(item)
                line = {key: body.pop(key) for key in ("custom_id", "method", "url") if key in body}
                line["body"] = body
            line.setdefault("custom_id", f"request-{number}")
            line.setdefault("method", "POST")
            line.setdefault("url", endpoint)
            try:
                # allow_nan=False: NaN and Infinity are not JSON, and the API refuses a line that has them.
                encoded = (json.dumps(line, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
            except TypeError as err:
                raise ValueError(
                    f"requests[{number - 1}] cannot be written as JSON ({err}): pass plain dicts, "
                    "lists, strings, numbers, booleans and None"
                ) from None
            except UnicodeEncodeError as err:  # a lone surrogate: no valid UTF-8 (nor JSON for the API) exists
                bad = err.object[err.start : err.end]
                raise ValueError(
                    f"requests[{number - 1}] contains text that is not valid Unicode ({bad!r}, a lone surrogate, "
                    "often from decoding bytes with errors='surrogateescape'): fix that string"
                ) from None
            except ValueError:
                raise ValueError(
                    f"requests[{number - 1}] contains NaN or Infinity, which JSON cannot carry: "
                    "replace them (e.g. with None)"
                ) from None
            out.write(encoded)
    return len(requests)


def check_input_file(source: Any, endpoint: str, name: str = "input_file", rules: Any = None) -> str:
    """Refuse an input file the API would fail at validation, naming every bad line; else return the
    SHA-256 of its content (read once, for both).

    :param name: What the file came from, for the message (``input_file`` or ``requests``).
    :param rules: The back end's :class:`~airflow_provider_openai_batch.backends.BackendRules` (default OpenAI's).
    :raises BatchValidationError: with the problems (at most 100 listed).
    """
    from airflow_provider_openai_batch.exceptions import BatchValidationError
    from airflow_provider_openai_batch.jsonl import check_stream, too_large

    is_object_storage = hasattr(source, "fs")
    if not is_object_storage and not os.path.isfile(source):
        raise ValueError(f"input_file {str(source)!r} does not exist or is not a file")
    # Refuse an oversized file from its size alone, before reading a byte of it. A remote store that cannot
    # tell its size cheaply is measured while it is read, as before.
    try:
        size = source.stat().st_size if is_object_storage else os.path.getsize(source)
    except Exception:  # any store's failure to stat is only a missed shortcut
        size = 0
    problems = too_large(size, rules)
    digest = hashlib.sha256()
    if not problems:
        with source.open("rb") if is_object_storage else open(source, "rb") as stream:
            problems = check_stream(stream, endpoint, rules=rules, digest=digest)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise BatchValidationError(
            f"The batch input ({name}) has {len(problems)} problem(s); nothing was uploaded or billed:\n{listed}{more}",
            [str(p) for p in problems],
        )
    return digest.hexdigest()
