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
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, conf

from airflow_provider_openai_batch.links import OpenAIBatchLink, remember_batch_link

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook

DEFAULT_CONN_ID = "openai_default"


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
    Batch API's rules (unique ``custom_id``, method ``POST``, ``url`` equal to ``endpoint``, an object
    ``body``, at most 50,000 lines and 200 MB); a
    :class:`~airflow_provider_openai_batch.exceptions.BatchValidationError` names every offending line.

    **Retries never bill twice.** The batch's metadata carries an idempotency key derived from the dag id,
    task id, run id and map index. When the create POST fails ambiguously the hook finds the batch by that
    key instead of creating another; and a retried try (including one after a worker died right after the
    POST) re-attaches to the batch the earlier try created, unless that batch ended ``failed``, ``expired``
    or ``cancelled`` (then a new batch is created, which is the point of retrying).

    **Waiting.** With ``wait_for_completion`` the task waits for the batch to end: deferred to the
    triggerer (no worker slot) when ``deferrable``, else polling. The finished batch is judged like
    :class:`~airflow_provider_openai_batch.sensors.batch.BatchSensor` does (``max_failed_fraction``).
    ``timeout`` is a wall-clock deadline; the batch keeps running at the API when it passes.

    **Kill.** With ``cancel_on_kill`` the batch is cancelled when the task is killed (marked failed or
    cleared by a user, or its worker stopped gracefully); otherwise it keeps running and billing.

    Returns the batch id (XCom ``return_value``) and pushes the batch as JSON to XCom key ``batch``.

    :param endpoint: The batch endpoint, e.g. ``/v1/chat/completions``.
    :param requests: Requests to send (templated: strings in a literal list are rendered by Jinja, so a
        prompt containing ``{{`` needs ``{% raw %}``; a list from XCom, e.g. ``build_requests()``, is not).
    :param input_file: A JSONL file (templated).
    :param input_file_id: An uploaded input file id (templated).
    :param completion_window: ``"24h"``.
    :param metadata: Up to 15 string pairs stored on the batch (one pair is the idempotency key).
    :param output_expires_after: Seconds (3600..2592000) after which output files expire.
    :param conn_id: Airflow connection id (type ``openai_batch``).
    :param wait_for_completion: Wait until the batch ends.
    :param deferrable: Wait in the triggerer; defaults to ``[operators] default_deferrable``.
    :param poll_interval: Seconds between status checks while waiting.
    :param timeout: Seconds to wait at most (``None``: the 24h window plus an hour).
    :param max_failed_fraction: Largest share of failed requests a completed batch may have (see the sensor).
    :param cancel_on_kill: Cancel the batch when the task is killed.
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
        conn_id: str = DEFAULT_CONN_ID,
        wait_for_completion: bool = False,
        deferrable: bool | None = None,
        poll_interval: float = 60.0,
        timeout: float | None = None,
        max_failed_fraction: float = 1.0,
        cancel_on_kill: bool = False,
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
        self.endpoint = endpoint
        self.requests = requests
        self.input_file = input_file
        self.input_file_id = input_file_id
        self.completion_window = completion_window
        self.metadata = metadata
        self.output_expires_after = output_expires_after
        self.conn_id = conn_id
        self.wait_for_completion = wait_for_completion
        self.deferrable = _default_deferrable() if deferrable is None else deferrable
        self.poll_interval = poll_interval
        self.wait_timeout = timeout
        self.max_failed_fraction = max_failed_fraction
        self.cancel_on_kill = cancel_on_kill
        self.batch_id: str | None = None

    def hook(self) -> OpenAIBatchHook:
        from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook

        return OpenAIBatchHook(conn_id=self.conn_id)

    def execute(self, context: Context) -> str:
        from airflow_provider_openai_batch import api
        from airflow_provider_openai_batch.outcome import describe
        from airflow_provider_openai_batch.statuses import NOT_REATTACHABLE

        # Checks that cost nothing come first, so a bad argument never uploads a file.
        api.validate_endpoint(self.endpoint)
        api.validate_completion_window(self.completion_window)
        api.validate_metadata(self.metadata, reserved_keys=(api.IDEMPOTENCY_METADATA_KEY,))
        api.validate_output_expires_after(self.output_expires_after)
        hook = self.hook()
        ti = context["ti"]
        with tempfile.TemporaryDirectory(prefix="openai-batch-") as tmp:
            source, digest = self._prepare_input(tmp)
            key = idempotency_key(context, digest)
            batch = None
            if (ti.try_number or 1) > 1:
                found = hook.find_batch_by_idempotency_key(key)
                if found is not None and found.status not in NOT_REATTACHABLE:
                    self.log.info("Re-attaching to batch %s created by an earlier try (%s)", found.id, found.status)
                    batch = found
            if batch is None:
                batch = self._create(hook, key, source)
        self.batch_id = batch.id
        remember_batch_link(self, context, hook.settings.base_url, batch.id)
        self.log.info("OpenAI %s", describe(batch.model_dump(mode="json")))
        ti.xcom_push(key="batch", value=batch.model_dump(mode="json"))
        if self.wait_for_completion:
            self._wait(context, hook, batch.id)
        return batch.id

    def _prepare_input(self, tmp: str) -> tuple[Any, str]:
        """The file to upload (``None`` for ``input_file_id``), checked, and a digest of its content."""
        if self.input_file_id is not None:
            return None, hashlib.sha256(self.input_file_id.encode()).hexdigest()
        source: Any = self.input_file
        if self.requests is not None:
            source = os.path.join(tmp, "batch_input.jsonl")
            write_requests_jsonl(self.requests, self.endpoint, source)
        name = "input_file" if self.requests is None else "requests; line N is requests[N-1]"
        return source, check_input_file(source, self.endpoint, name)

    def _create(self, hook: OpenAIBatchHook, key: str, source: Any) -> Any:
        from airflow_provider_openai_batch.exceptions import APIError, OpenAIBatchError

        uploaded = None if source is None else hook.upload_file(source, purpose="batch")
        try:
            return hook.create_batch(
                uploaded.id if uploaded is not None else str(self.input_file_id),
                self.endpoint,
                self.completion_window,
                self.metadata,
                self.output_expires_after,
                idempotency_key=key,
            )
        except APIError as err:
            # A definite refusal (any 4xx) means no batch will ever use our upload: don't leave it behind.
            # After a 5xx the batch may exist after all, so the file stays. A user's input_file_id is theirs.
            if uploaded is not None and err.status_code is not None and 400 <= err.status_code < 500:
                try:
                    hook.delete_file(uploaded.id)
                except OpenAIBatchError as cleanup:
                    self.log.warning("Could not delete the unused input file %s: %s", uploaded.id, cleanup)
            raise

    def _wait(self, context: Context, hook: OpenAIBatchHook, batch_id: str) -> None:
        from airflow_provider_openai_batch.outcome import judge

        timeout = self.wait_timeout if self.wait_timeout is not None else 25 * 3600.0
        if self.deferrable:
            from airflow_provider_openai_batch.triggers.batch import BatchTrigger

            self.defer(
                trigger=BatchTrigger(
                    batch_id,
                    self.conn_id,
                    self.poll_interval,
                    end_time=time.time() + timeout,
                    cancel_on_kill=self.cancel_on_kill,
                ),
                method_name="execute_complete",
            )
        batch = hook.wait_for_batch(batch_id, self.poll_interval, timeout).model_dump(mode="json")
        context["ti"].xcom_push(key="batch", value=batch)
        judge(batch, self.max_failed_fraction)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> str:
        """Resume after the trigger: record and judge the final batch."""
        from airflow_provider_openai_batch.events import batch_from_event
        from airflow_provider_openai_batch.outcome import describe, judge

        batch = batch_from_event(event)
        self.batch_id = batch["id"]
        self.log.info("OpenAI %s", describe(batch))
        context["ti"].xcom_push(key="batch", value=batch)
        judge(batch, self.max_failed_fraction)
        return str(batch["id"])

    def on_kill(self) -> None:
        if self.cancel_on_kill and self.batch_id:
            cancel_quietly(self, self.batch_id)


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
        self.batch_id = batch_id
        self.conn_id = conn_id
        self.wait_for_completion = wait_for_completion
        self.deferrable = _default_deferrable() if deferrable is None else deferrable
        self.poll_interval = poll_interval
        self.wait_timeout = timeout

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_openai_batch.exceptions import ConflictError
        from airflow_provider_openai_batch.hooks.batch import OpenAIBatchHook
        from airflow_provider_openai_batch.outcome import describe

        hook = OpenAIBatchHook(conn_id=self.conn_id)
        remember_batch_link(self, context, hook.settings.base_url, self.batch_id)
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


def cancel_quietly(task: Any, batch_id: str) -> None:
    """Cancel on kill without raising: a batch that already ended (409) or an API hiccup must not turn the
    kill into a second failure; the outcome is logged either way."""
    from airflow_provider_openai_batch.exceptions import OpenAIBatchError

    try:
        batch = task.hook().cancel_batch(batch_id)
    except (OpenAIBatchError, ValueError) as err:
        task.log.warning("Could not cancel batch %s on kill: %s", batch_id, err)
        return
    task.log.info("Cancelled batch %s on kill (now %s)", batch_id, batch.status)


def idempotency_key(context: Context, input_digest: str = "") -> str:
    """A key stable across the tries of one task instance with the same input: dag id, task id, run id,
    map index and a digest of the input, hashed. A cleared task whose input changed gets a new batch."""
    ti = context["ti"]
    identity = json.dumps([ti.dag_id, ti.task_id, ti.run_id, getattr(ti, "map_index", -1), input_digest])
    return hashlib.sha256(identity.encode()).hexdigest()


def write_requests_jsonl(requests: Any, endpoint: str, path: str) -> int:
    """Write request dicts as a batch input file, filling ``method``, ``url`` and ``custom_id`` shorthands."""
    if not isinstance(requests, (list, tuple)) or not requests:
        raise ValueError(f"requests must be a non-empty list of request dicts; got {type(requests).__name__}")
    with open(path, "w", encoding="utf-8") as out:
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
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
    return len(requests)


def check_input_file(source: Any, endpoint: str, name: str = "input_file") -> str:
    """Refuse an input file the API would fail at validation, naming every bad line; else return the
    SHA-256 of its content (read once, for both).

    :param name: What the file came from, for the message (``input_file`` or ``requests``).
    :raises BatchValidationError: with the problems (at most 100 listed).
    """
    from airflow_provider_openai_batch.exceptions import BatchValidationError
    from airflow_provider_openai_batch.jsonl import too_large, validate_batch_input_lines

    is_object_storage = hasattr(source, "fs")
    if not is_object_storage and not os.path.isfile(source):
        raise ValueError(f"input_file {str(source)!r} does not exist or is not a file")
    # Refuse an oversized file from its size alone, before reading a byte of it. A remote store that cannot
    # tell its size cheaply is measured while it is read, as before.
    try:
        size = source.stat().st_size if is_object_storage else os.path.getsize(source)
    except Exception:  # any store's failure to stat is only a missed shortcut
        size = 0
    problems = too_large(size)
    digest = hashlib.sha256()
    if not problems:
        with source.open("rb") if is_object_storage else open(source, "rb") as stream:
            problems = validate_batch_input_lines(_hashing(stream, digest), endpoint)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise BatchValidationError(
            f"The batch input ({name}) has {len(problems)} problem(s); nothing was uploaded or billed:\n{listed}{more}",
            [str(p) for p in problems],
        )
    return digest.hexdigest()


def _hashing(lines: Iterable[bytes], digest: Any) -> Iterator[bytes]:
    for line in lines:
        digest.update(line)
        yield line
