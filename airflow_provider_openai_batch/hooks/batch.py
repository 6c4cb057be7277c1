"""``OpenAIBatchHook``: the Batch and Files APIs over ``requests``.

All request building, validation, parsing, error mapping and retry policy lives in
:mod:`airflow_provider_openai_batch.api`; this module only moves bytes over HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cached_property
from typing import Any, TypeVar

import requests
import tenacity
from airflow.sdk import BaseHook

from airflow_provider_openai_batch import api
from airflow_provider_openai_batch.backends import BackendRules
from airflow_provider_openai_batch.connection import ClientSettings, settings_from_connection
from airflow_provider_openai_batch.exceptions import (
    APIConnectionError,
    APITimeoutError,
    OpenAIBatchError,
    ResultsParseError,
)
from airflow_provider_openai_batch.hooks.transfer import (
    MultipartBody,
    check_binary_handle,
    checked_chunks,
    iter_lines,
    reopenable,
    seekable,
    tagged_name,
    upload_source,
    write_destination,
)
from airflow_provider_openai_batch.models import (
    ApiModel,
    Batch,
    BatchPage,
    DownloadedFile,
    FileDeleted,
    FileObject,
    FilePage,
    HttpInfo,
    ResultRecord,
)
from airflow_provider_openai_batch.retries import policy_for, retry_policy
from airflow_provider_openai_batch.statuses import NOT_REATTACHABLE

T = TypeVar("T", bound=ApiModel)

#: The Files API refuses uploads over 512 MB, and batch input files over 200 MB.
MAX_UPLOAD_BYTES = 512 * 1024 * 1024
MAX_BATCH_INPUT_BYTES = 200 * 1024 * 1024
#: When an ambiguous create is retried, batches created this long before the first attempt are
#: still searched for the idempotency key (allows for clock skew between us and the API).
CREATE_LOOKUP_SLACK_SECONDS = 300
#: How often a late duplicate is looked for after an ambiguous create.
RECONCILE_POLL_SECONDS = 2.0


class OpenAIBatchHook(BaseHook):
    """Talk to the OpenAI Batch and Files APIs with the credentials of an Airflow connection.

    The connection (type ``openai_batch``) holds the API key in *password*, an optional OpenAI-compatible
    base URL in *host* (default ``https://api.openai.com/v1``), and in *extra* the optional
    ``organization``, ``project``, ``timeout`` (seconds) and ``max_retries``, and the back end: ``api_type``
    (``openai``, ``azure`` or ``openai_compatible``), for Azure ``api_version`` and ``auth_type`` (``api_key``
    or ``entra_id``, whose tokens are fetched and refreshed per request by
    :mod:`airflow_provider_openai_batch.azure_auth`).

    Every call is validated before anything is sent (a ``ValueError`` names the field and the rule),
    transient failures (429, 500, 502, 503, 504, connection errors, timeouts) are retried with exponential
    backoff and jitter honouring ``Retry-After``, and HTTP errors raise
    :class:`~airflow_provider_openai_batch.exceptions.APIError` subclasses. Every returned object carries
    ``.http`` (status code, headers and ``x-request-id`` of its response).

    :param conn_id: The Airflow connection id.
    :param timeout: Overrides the connection's request timeout (seconds).
    :param max_retries: Overrides the connection's number of retries of transient failures.
    :param reconcile_seconds: How long to watch for a late duplicate after an ambiguous create (see
        :meth:`create_batch`); default twice the request timeout, 10 s to 180 s.

    Use it as a context manager (``with OpenAIBatchHook() as hook:``), or call :meth:`close`, to release
    its pooled HTTP connections.
    """

    conn_name_attr = "conn_id"
    default_conn_name = "openai_default"
    conn_type = "openai_batch"
    hook_name = "OpenAI Batch"

    def __init__(
        self,
        conn_id: str = default_conn_name,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        reconcile_seconds: float | None = None,
    ) -> None:
        super().__init__()
        self.conn_id = conn_id
        self._timeout_override = timeout
        self._max_retries_override = max_retries
        self._reconcile_override = reconcile_seconds

    def __enter__(self) -> OpenAIBatchHook:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def reconcile_seconds(self) -> float:
        """How long to watch for a late duplicate after an ambiguous create: twice the request timeout (a
        buffering gateway forwards a timed-out request within about that), from 10 s to 180 s."""
        if self._reconcile_override is not None:
            return float(self._reconcile_override)
        return min(max(2 * self.settings.timeout, 10.0), 180.0)

    # ------------------------------------------------------------------------------------- connection

    @cached_property
    def settings(self) -> ClientSettings:
        """The connection's settings (key, base URL, headers, timeout, retries), read once."""
        conn = self.get_connection(self.conn_id)
        settings = settings_from_connection(conn)
        if settings.api_key and settings.api_key != conn.password:
            # Airflow masks the password as stored ("sk-...\n"); the key we send is the cleaned one.
            from airflow.sdk.log import mask_secret

            mask_secret(settings.api_key)
        overrides: dict[str, Any] = {}
        if self._timeout_override is not None:
            overrides["timeout"] = float(self._timeout_override)
        if self._max_retries_override is not None:
            overrides["max_retries"] = int(self._max_retries_override)
        if overrides:
            from dataclasses import replace

            settings = replace(settings, **overrides)
        return settings

    @cached_property
    def rules(self) -> BackendRules:
        """The back end's rules (limits, endpoints, completion windows, one model per file), from the
        connection's ``api_type`` and any ``backend_rules`` overrides in its extra."""
        return self.settings.rules()

    def _auth_headers(self) -> dict[str, str]:
        """A fresh Entra ID bearer token for each request (cached and refreshed before it expires by the
        provider), or nothing: an API key already travels in the session's headers."""
        if self.settings.entra is None:
            return {}
        from airflow_provider_openai_batch.azure_auth import provider_for

        return provider_for(self.settings.entra).headers()

    @cached_property
    def session(self) -> requests.Session:
        """One keep-alive session per hook; it carries the auth headers and never follows a redirect."""
        session = _NoRedirectSession()
        session.headers.update(self.settings.headers())
        session.headers["User-Agent"] = "airflow-provider-openai-batch"
        return session

    def get_conn(self) -> requests.Session:
        return self.session

    def close(self) -> None:
        """Close the HTTP session (its pooled connections)."""
        if "session" in self.__dict__:
            self.session.close()
            del self.__dict__["session"]

    def test_connection(self) -> tuple[bool, str]:
        """One cheap authenticated call (list one batch), for the UI's Test button.

        No retries and a timeout of at most 10 s, so a wrong URL answers the button in seconds, not minutes.
        """
        from dataclasses import replace

        probe = OpenAIBatchHook(self.conn_id)
        try:
            # The connection is read once: the probe takes this hook's settings with the quick limits.
            probe.settings = replace(self.settings, timeout=min(self.settings.timeout, 10.0), max_retries=0)
            page = probe.list_batches(limit=1)
        except (OpenAIBatchError, ValueError) as err:
            return False, f"Could not reach the OpenAI Batch API: {err}"
        finally:
            probe.close()
        request_id = page.http.request_id if page.http else None
        return True, f"Connection works: {self.settings.base_url} answered (request id {request_id})."

    # ------------------------------------------------------------------------------------------ batches

    def create_batch(
        self,
        input_file_id: str,
        endpoint: str,
        completion_window: str = "24h",
        metadata: Mapping[str, str] | None = None,
        output_expires_after: int | Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Batch:
        """Create a batch from an uploaded JSONL file. Each batch is billed, so this is careful on retry.

        Without ``idempotency_key`` a failed create is retried only when the API cannot have acted on it
        (429, refused connection); an ambiguous failure (timeout, reset, 5xx) is raised. With
        ``idempotency_key`` the key is stored in the batch metadata, and before each retry of an ambiguous
        failure the hook looks for a recent batch carrying the key and returns it instead of creating a
        second one. Because a timed-out create can still be carried out late (a gateway that forwards it after
        we hung up), a create that needed such a retry then watches for ``reconcile_seconds`` for a twin
        carrying the key and cancels it while it is still validating, when cancelling costs nothing.

        :param input_file_id: Id of a file uploaded with purpose ``batch``.
        :param endpoint: One of the back end's endpoints (:attr:`rules`); on Azure an OpenAI-style
            ``/v1/chat/completions`` is sent as ``/chat/completions``. Every line of the file must use that url.
        :param completion_window: One of the back end's windows: ``"24h"``, the only one offered today.
        :param metadata: Up to 16 string pairs (15 with an idempotency key).
        :param output_expires_after: Seconds (3600..2592000) after creation when output files expire.
        :param idempotency_key: A stable key for this logical create, e.g. derived from the task instance.
        """
        call = api.create_batch(
            input_file_id, endpoint, completion_window, metadata, output_expires_after, idempotency_key, self.rules
        )
        batch = self._request(call) if idempotency_key is None else self._create_idempotently(call, idempotency_key)
        sent = (call.json or {}).get("endpoint", endpoint)  # in the back end's shape (Azure: no /v1)
        self.log.info("Batch %s is %s (endpoint %s, input file %s)", batch.id, batch.status, sent, input_file_id)
        return batch

    def _create_idempotently(self, call: api.ApiCall[Batch], key: str) -> Batch:
        started = time.time()
        since = started - CREATE_LOOKUP_SLACK_SECONDS
        ambiguous = False

        def attempt() -> Batch:
            nonlocal ambiguous
            if ambiguous:
                # One pass over the batches created since the first attempt, without retries of its own: a
                # failed look-up fails this attempt and the policy below decides on another, so one create
                # makes at most (max_retries + 1) look-ups, not (max_retries + 1) squared.
                found = self._batches_with_key(key, created_after=since, retry=False)
                usable = [b for b in found if b.status not in NOT_REATTACHABLE]
                if usable:
                    self.log.info("Found batch %s from an earlier attempt; not creating another", usable[0].id)
                    return usable[0]
            try:
                return self._send(call)
            except OpenAIBatchError as err:
                ambiguous = ambiguous or bool(getattr(err, "maybe_processed", False))
                raise

        # Every retryable failure may be retried here: the look-up above makes a repeat safe.
        try:
            batch: Batch = tenacity.Retrying(**retry_policy(self.settings.max_retries, idempotent=True))(attempt)
        except OpenAIBatchError:
            if not ambiguous:
                raise
            # Every attempt failed, but the ambiguous ones may still be carried out late: the create succeeded
            # if one of them lands within the watch, and the others are cancelled.
            late = self._settle_key(key, None, since)
            if late is None:
                raise
            self.log.warning("Every create attempt failed, but the API carried one out late: batch %s", late.id)
            return late
        if ambiguous:
            self._settle_key(key, batch, since)
        return batch

    def _settle_key(self, key: str, keep: Batch | None, since: float) -> Batch | None:
        """After an ambiguous create, watch for batches carrying ``key`` and leave exactly one live.

        A gateway that buffers requests can forward a create whose client already timed out, so a batch with
        our key may appear after the look-up that preceded a successful POST, or after every attempt failed.
        For ``reconcile_seconds`` every live batch carrying the key other than ``keep`` (or, with no ``keep``,
        the oldest live one) is cancelled; cancelled while ``validating``, it is never billed. A twin carried
        out later than that is not caught (docs/reliability.md).

        :returns: The batch kept, or ``None`` when none appeared.
        """
        # Counted in polls, not read off a clock: a slow machine then only makes this slower, never shorter.
        polls = 1 + int(self.reconcile_seconds // RECONCILE_POLL_SECONDS)
        cancelled: set[str] = set()
        for poll in range(polls):
            if poll:
                time.sleep(RECONCILE_POLL_SECONDS)
            try:
                found = self._batches_with_key(key, created_after=since)
            except OpenAIBatchError as err:
                self.log.warning("Could not check for batches carrying this create's key: %s", err)
                return keep
            keep = self._keep_one([b for b in found if b.id not in cancelled], keep, cancelled)
        return keep

    def claim_batch_by_idempotency_key(self, idempotency_key: str, created_after: float) -> Batch | None:
        """The batch to go on with among those carrying ``idempotency_key`` since ``created_after``: the oldest
        live one, every other live one cancelled (creates carried out late); with none live, the newest.

        :param idempotency_key: The key stored under ``airflow_idempotency_key`` in the batch metadata.
        :param created_after: Only batches created at or after this Unix time are searched (every one of them).
        """
        found = self._batches_with_key(idempotency_key, created_after=created_after)
        return self._keep_one(found, None) or (found[0] if found else None)

    def _keep_one(self, found: list[Batch], keep: Batch | None, cancelled: set[str] | None = None) -> Batch | None:
        """Cancel every live batch in ``found`` but ``keep`` (by default the oldest live one); return the kept.

        :param cancelled: Ids cancelled so far, added to; a batch may still read as live right after its cancel.
        """
        live = [b for b in found if b.status not in NOT_REATTACHABLE]
        if keep is None and live:
            keep = live[-1]  # the list is newest first, ordered finer than created_at's whole seconds
        for twin in live:
            if keep is None or twin.id == keep.id:
                continue
            self.log.warning(
                "Batch %s carries the same idempotency key as batch %s: a create that timed out was carried out "
                "late. Cancelling it so it is not billed (status %s).",
                twin.id,
                keep.id,
                twin.status,
            )
            try:
                self.cancel_batch(twin.id)
            except OpenAIBatchError as err:
                self.log.warning("Could not cancel the duplicate batch %s: %s", twin.id, err)
            if cancelled is not None:
                cancelled.add(twin.id)
        return keep

    def find_batch_by_idempotency_key(
        self, idempotency_key: str, *, created_after: float | None = None, max_pages: int | None = None
    ) -> Batch | None:
        """Return the newest batch whose metadata carries ``idempotency_key``, or ``None``.

        Pages through the batch list (newest first, 100 a page) until it reaches a batch created before
        ``created_after`` (a Unix time), so the look-up is complete for that window and costs one list call per
        100 batches created since. Without ``created_after`` it stops after ``max_pages`` pages (default 20).

        :param idempotency_key: The key stored under ``airflow_idempotency_key`` in the batch metadata.
        :param created_after: Only batches created at or after this Unix time are searched.
        :param max_pages: At most this many pages; ``None`` means no limit when ``created_after`` is given.
        """
        if created_after is None and max_pages is None:
            max_pages = 20
        found = self._batches_with_key(idempotency_key, created_after=created_after, max_pages=max_pages)
        return found[0] if found else None

    def _batches_with_key(
        self, key: str, *, created_after: float | None, max_pages: int | None = None, retry: bool = True
    ) -> list[Batch]:
        """Batches carrying ``key``, newest first, among those created since ``created_after``."""
        found: list[Batch] = []
        cursor: str | None = None
        pages = 0
        while max_pages is None or pages < max_pages:
            call = api.list_batches(after=cursor, limit=100)
            page = self._request(call) if retry else self._send(call)
            pages += 1
            for batch in page.data:
                if created_after is not None and batch.created_at is not None and batch.created_at < created_after:
                    return found
                if (batch.metadata or {}).get(api.IDEMPOTENCY_METADATA_KEY) == key:
                    found.append(batch)
            if not page.has_more or not page.data:
                break
            cursor = page.last_id or page.data[-1].id
        return found

    def retrieve_batch(self, batch_id: str) -> Batch:
        """Get a batch by id.

        :param batch_id: The batch, e.g. ``batch_abc123``.
        :raises NotFoundError: when the API does not know it.
        """
        return self._request(api.retrieve_batch(batch_id))

    def list_batches(self, after: str | None = None, limit: int = 20) -> BatchPage:
        """One page of batches, newest first (``data``, ``first_id``, ``last_id``, ``has_more``).

        :param after: A batch id: the page starts after it (the previous page's ``last_id``).
        :param limit: 1..100 batches per page.
        """
        return self._request(api.list_batches(after, limit))

    def iter_batches(self, after: str | None = None, limit: int = 100) -> Iterator[Batch]:
        """Every batch, newest first, fetching pages of ``limit`` lazily as the iterator advances.

        :param after: Start after this batch id.
        :param limit: 1..100 batches per page request.
        """
        cursor = after
        while True:
            page = self.list_batches(after=cursor, limit=limit)
            yield from page.data
            if not page.has_more or not page.data:
                return
            cursor = page.last_id or page.data[-1].id

    def cancel_batch(self, batch_id: str) -> Batch:
        """Ask the API to cancel a batch; it stays ``cancelling`` (up to 10 minutes) before ``cancelled``.

        :param batch_id: The batch to cancel.
        :raises ConflictError: when it already ended.
        """
        batch = self._request(api.cancel_batch(batch_id))
        self.log.info("Cancel requested for batch %s; it is now %s", batch.id, batch.status)
        return batch

    def wait_for_batch(self, batch_id: str, poll_interval: float = 60.0, timeout: float | None = None) -> Batch:
        """Poll until the batch is terminal and return it, logging each status change.

        :param poll_interval: Seconds between checks.
        :param timeout: Seconds to wait at most; ``None`` waits indefinitely.
        :raises BatchTimeoutError: the batch was still running when ``timeout`` passed.
        """
        from airflow_provider_openai_batch.exceptions import BatchTimeoutError
        from airflow_provider_openai_batch.outcome import describe

        deadline = None if timeout is None else time.monotonic() + timeout
        last_status = None
        while True:
            batch = self.retrieve_batch(batch_id)
            if batch.status != last_status:
                self.log.info("OpenAI %s", describe(batch.model_dump(mode="json")))
                last_status = batch.status
            if batch.is_terminal:
                return batch
            if deadline is not None and time.monotonic() >= deadline:
                raise BatchTimeoutError(f"batch {batch_id} was still {batch.status} after {timeout:g}s")
            pause = poll_interval if deadline is None else min(poll_interval, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)

    # -------------------------------------------------------------------------------------------- files

    def upload_file(
        self,
        source: Any,
        purpose: str = "batch",
        filename: str | None = None,
        expires_after: int | Mapping[str, Any] | None = None,
    ) -> FileObject:
        """Upload a file, streaming it (memory does not grow with its size).

        :param source: A local path, an ``ObjectStoragePath``, ``bytes``, or a binary file object.
        :param purpose: ``"batch"`` for batch input files.
        :param filename: The name the API records. By default the source's name (or ``batch_input.jsonl``)
            with a short random tag, ``data-1a2b3c4d.jsonl``, and for ``purpose="batch"`` always ending in
            ``.jsonl`` (the API refuses a batch input file named otherwise): the Files API has no idempotency
            key, so after an ambiguous failure (timeout, reset, 5xx) the retry looks for a file of that exact
            name among the newest 100 and returns it rather than uploading a second copy. An explicit name is
            used as is (for ``batch`` it must end in ``.jsonl``), and then a retry may leave a duplicate behind.
        :param expires_after: Seconds (3600..2592000) after which the API deletes the file itself, so a busy
            account does not fill its file storage with inputs nobody needs after their batch.
        """
        call = api.upload_file(purpose, expires_after)
        if filename is not None:
            api.validate_upload_name(filename, purpose)
        opener, name, size = upload_source(source)
        limit = self.rules.max_bytes_per_file if purpose == "batch" else MAX_UPLOAD_BYTES
        if size is not None and size > limit:
            raise ValueError(
                f"source is {size} bytes; the API accepts at most {limit} bytes for purpose {purpose!r}: "
                "split the requests into several batches"
            )
        form = call.form or {}
        recognisable = filename is None
        filename = filename or tagged_name(name, api.BATCH_FILE_SUFFIX if purpose == "batch" else None)
        attempts = 0

        def attempt() -> FileObject:
            nonlocal attempts
            attempts += 1
            if attempts > 1 and recognisable:
                earlier = next((f for f in self.list_files(purpose, limit=100).data if f.filename == filename), None)
                if earlier is not None:
                    self.log.info("Found file %s from an earlier attempt; not uploading again", earlier.id)
                    return earlier
            with opener() as stream:
                body = MultipartBody(form, "file", filename, stream)
                return self._send(call, data=body, headers={"Content-Type": body.content_type})

        policy = retry_policy(self.settings.max_retries if reopenable(source) else 0)
        uploaded: FileObject = tenacity.Retrying(**policy)(attempt)
        self.log.info("Uploaded %s as file %s (%s bytes, purpose %s)", filename, uploaded.id, uploaded.bytes, purpose)
        return uploaded

    def retrieve_file(self, file_id: str) -> FileObject:
        """Get a file's metadata (name, size, purpose).

        :param file_id: The file, e.g. ``file-abc123``.
        """
        return self._request(api.retrieve_file(file_id))

    def list_files(self, purpose: str | None = None, after: str | None = None, limit: int = 100) -> FilePage:
        """One page of files, newest first.

        :param purpose: Only files of this purpose, e.g. ``batch`` or ``batch_output``.
        :param after: A file id: the page starts after it.
        :param limit: Files per page.
        """
        return self._request(api.list_files(purpose, after, limit))

    def delete_file(self, file_id: str) -> FileDeleted:
        """Delete a file, e.g. an input file once its batch ended.

        :param file_id: The file to delete.
        """
        return self._request(api.delete_file(file_id))

    def download_file(self, file_id: str, destination: Any) -> DownloadedFile:
        """Stream a file's content to ``destination`` in 1 MiB chunks; memory does not grow with its size.

        A local destination is written to a temporary file beside it and renamed into place only once the
        whole content arrived, so a failed or truncated download never leaves a partial file behind. A file
        object is written from its current position, so bytes already written to it stay; a transient failure
        is retried only when the handle can seek back to that position.

        :param file_id: The file to download (e.g. ``batch.output_file_id``).
        :param destination: A local path, an ``ObjectStoragePath``, or a writable binary file object.
        """
        call = api.file_content(file_id)
        if hasattr(destination, "write"):
            check_binary_handle(destination, "destination", "wb")
        # A file object is written from where its handle stands; a retry rewinds to there, never further.
        start = destination.tell() if hasattr(destination, "write") and seekable(destination) else None

        def attempt() -> DownloadedFile:
            if start is not None:
                destination.seek(start)
                destination.truncate()
            with self._stream(call) as response:
                http = api.http_info(response.status_code, response.headers)
                written = write_destination(destination, checked_chunks(response, file_id))
            result = DownloadedFile(file_id=file_id, destination=str(destination), bytes=written)
            result.with_http(http)
            return result

        retry_all = not hasattr(destination, "write") or seekable(destination)
        policy = retry_policy(self.settings.max_retries if retry_all else 0)
        downloaded: DownloadedFile = tenacity.Retrying(**policy)(attempt)
        self.log.info("Downloaded file %s (%d bytes) to %s", file_id, downloaded.bytes, destination)
        return downloaded

    def iter_file_records(self, file_id: str, source: str | None = None) -> Iterator[ResultRecord]:
        """Yield the lines of an output or error file as :class:`ResultRecord`, streaming.

        A transient failure mid-stream re-opens the file and skips the records already yielded.

        :raises ResultsParseError: a line is not a JSON record, or the download was truncated.
        """
        call = api.file_content(file_id)
        done = 0
        retrying = tenacity.Retrying(**retry_policy(self.settings.max_retries))
        for attempt in retrying:
            with attempt, self._stream(call) as response:
                for number, line in enumerate(iter_lines(checked_chunks(response, file_id)), start=1):
                    if number <= done:
                        continue
                    done = number
                    yield _parse_record(line, file_id, number, source)

    def iter_results(self, batch: Batch | str) -> Iterator[ResultRecord]:
        """Yield every result of a batch: the output file's records, then the error file's.

        Each record has ``custom_id`` (to match it to its input), ``ok``, ``body``, ``error_message`` and
        ``source`` (``"output"`` or ``"error"``). Lines arrive in no particular order.

        :param batch: A :class:`Batch` or a batch id.
        """
        if isinstance(batch, str):
            batch = self.retrieve_batch(batch)
        if batch.output_file_id:
            yield from self.iter_file_records(batch.output_file_id, "output")
        if batch.error_file_id:
            yield from self.iter_file_records(batch.error_file_id, "error")

    def get_results(self, batch: Batch | str) -> dict[str, ResultRecord]:
        """All results of a batch keyed by ``custom_id`` (holds them all in memory; prefer
        :meth:`iter_results` for very large batches)."""
        return {record.custom_id: record for record in self.iter_results(batch)}

    # ---------------------------------------------------------------------------------------- transport

    def _request(self, call: api.ApiCall[T]) -> T:
        """Send a call with the shared retry policy."""
        retrying = tenacity.Retrying(**policy_for(call, self.settings.max_retries))
        return retrying(self._send, call)

    def _send(self, call: api.ApiCall[T], **kwargs: Any) -> T:
        """One attempt: send, then parse or raise the mapped error."""
        response = self._http(call, stream=False, **kwargs)
        return call.parse(response.status_code, response.headers, response.content)

    @contextmanager
    def _stream(self, call: api.ApiCall[Any]) -> Iterator[requests.Response]:
        response = self._http(call, stream=True)
        try:
            if response.status_code >= 300:  # a redirect too: never followed (see api.redirect_error)
                raise api.error_from_response(
                    response.status_code, response.headers, response.content, f"{call.method} {call.path}"
                )
            yield response
        finally:
            response.close()

    def _http(self, call: api.ApiCall[Any], *, stream: bool, **kwargs: Any) -> requests.Response:
        settings = self.settings
        url = call.url(settings.base_url)
        auth = self._auth_headers()
        if auth:
            kwargs["headers"] = {**kwargs.get("headers", {}), **auth}
        try:
            return self.session.request(
                call.method,
                url,
                params=call.query(settings.api_version),
                json=call.json,
                timeout=settings.timeout,
                stream=stream,
                # The API never redirects, and requests would send Azure's api-key along to another host.
                allow_redirects=False,
                **kwargs,
            )
        except requests.exceptions.ConnectTimeout:
            raise APITimeoutError(
                f"{call.method} {call.path}: could not connect to {settings.base_url} within {settings.timeout:g}s",
                maybe_processed=False,
            ) from None
        except requests.exceptions.Timeout:
            raise APITimeoutError(
                f"{call.method} {call.path}: no answer from {settings.base_url} within {settings.timeout:g}s"
            ) from None
        except requests.exceptions.ConnectionError as err:
            raise _connection_error(call, settings.base_url, err) from None
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as err:
            # The answer started and broke off: the request was delivered, so it may have been acted on.
            raise APIConnectionError(
                f"{call.method} {call.path}: the answer from {settings.base_url} broke off ({type(err).__name__})"
            ) from None
        except (requests.exceptions.RequestException, ValueError, UnicodeError) as err:
            # Anything else the HTTP stack raises (a URL or header value it cannot send, too many redirects) may
            # quote a header or URL in its message: only its type is kept, never its text.
            before_sending = isinstance(
                err,
                (
                    requests.exceptions.InvalidURL,
                    requests.exceptions.InvalidHeader,
                    requests.exceptions.MissingSchema,
                    requests.exceptions.InvalidSchema,
                    ValueError,
                    UnicodeError,
                ),
            )
            raise APIConnectionError(
                f"{call.method} {call.path}: the request to {settings.base_url} could not be sent "
                f"({type(err).__name__}); check the connection's base URL and header fields",
                maybe_processed=not before_sending,
                transient=not before_sending,
            ) from None

    # ------------------------------------------------------------------------------------------ export

    def export_results(
        self,
        batch_ids: Any,
        destination: Any,
        *,
        format: str | None = None,
        price_table: Mapping[str, Mapping[str, float]] | None = None,
        delete_files: Any = "none",
        work_dir: str | None = None,
    ) -> dict[str, Any]:
        """Write one row per input request of finished batches to ``destination``, in input order, and return
        the manifest. Memory stays flat: files are spilled to SQLite in a temporary directory and streamed out.

        Rows: ``custom_id``, ``index``, ``status`` (succeeded, failed, expired, cancelled, missing),
        ``status_code``, ``response``, ``output_text``, ``error_code``, ``error_message``, ``input_tokens``,
        ``output_tokens``, ``total_tokens``, ``batch_id`` (see :mod:`airflow_provider_openai_batch.results`).

        :param batch_ids: One batch id or a list (the rounds of a resubmitted job, or the shards of a large one):
            positions come from the input files in order of first appearance; each row comes from the last
            batch whose input held the request (its result line, or how that batch ended). Shards that reuse a
            ``custom_id`` for a different request are refused.
        :param destination: An absolute local path, a ``file://`` URI, an object storage URI or an
            ``ObjectStoragePath``; written to a temporary sibling and renamed into place.
        :param format: ``"jsonl"`` (default) or ``"parquet"`` (default for a ``.parquet`` destination; needs
            the ``parquet`` extra).
        :param price_table: ``{model: {"input": usd, "output": usd}}`` per 1M tokens, over the dated default.
        :param delete_files: ``"none"``, ``"all"`` or a subset of ``{"input", "output", "error"}``: Files API
            files to delete once the export is in place (a failed delete is a warning).
        :param work_dir: Where the temporary files go (default: the system's temporary directory).
        :return: The manifest: destination, format, rows, counts, batch_ids, tokens, models, the estimated cost.
        """
        from airflow_provider_openai_batch.results.export import export

        return export(
            self,
            batch_ids,
            destination,
            format=format,
            price_table=price_table,
            delete_files=delete_files,
            work_dir=work_dir,
        )


# ------------------------------------------------------------------------------------------ helpers


class _NoRedirectSession(requests.Session):
    """A session that sees no redirect target in any answer, so a 3xx comes back as it is (and becomes an
    :class:`APIError`). ``allow_redirects=False`` alone is not enough: requests still prepares the next
    request of a redirect for ``Response.next``, which rewinds a streamed upload body and fails on it."""

    def get_redirect_target(self, resp: requests.Response) -> None:
        return None


def _connection_error(
    call: api.ApiCall[Any], base_url: str, err: requests.exceptions.ConnectionError
) -> APIConnectionError:
    reason = err.args[0] if err.args else err
    underlying = getattr(reason, "reason", reason)
    # A connection that was never established cannot have delivered the request.
    refused = type(underlying).__name__ in {
        "NewConnectionError",
        "NameResolutionError",
        "ConnectTimeoutError",
    }
    if type(underlying).__name__ == "SSLError" or isinstance(err, requests.exceptions.SSLError):
        return APIConnectionError(
            f"{call.method} {call.path}: the TLS handshake with {base_url} failed (SSLError); if the server "
            "speaks plain HTTP, make the connection's Base URL start with http://",
            maybe_processed=False,
        )
    kind = "could not connect to" if refused else "connection to"
    tail = "" if refused else " broke before an answer arrived"
    return APIConnectionError(
        f"{call.method} {call.path}: {kind} {base_url}{tail} ({type(underlying).__name__})",
        maybe_processed=not refused,
    )


def _parse_record(line: bytes, file_id: str, number: int, source: str | None) -> ResultRecord:
    try:
        record = ResultRecord.model_validate_json(line)
    except ValueError as err:
        preview = line[:80].decode("utf-8", "replace")
        first_error = str(err).splitlines()[0]
        raise ResultsParseError(
            f"file {file_id} line {number} is not a batch result record ({first_error}): {preview!r}"
        ) from None
    record.source = source
    return record


__all__ = ["HttpInfo", "OpenAIBatchHook"]
