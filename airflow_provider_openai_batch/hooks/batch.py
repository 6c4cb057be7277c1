"""``OpenAIBatchHook``: the Batch API (here) and the Files API (:mod:`.files`) over ``requests``.

All request building, validation, parsing, error mapping and retry policy lives in
:mod:`airflow_provider_openai_batch.api`, the HTTP exchange in :mod:`.sync_transport`; the hook only moves
bytes.
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
from airflow_provider_openai_batch.connection import (
    ClientSettings,
    settings_for_connection_test,
    settings_from_connection,
)
from airflow_provider_openai_batch.exceptions import (
    OpenAIBatchError,
)
from airflow_provider_openai_batch.hooks.files import FilesApi
from airflow_provider_openai_batch.hooks.sync_transport import new_session, send
from airflow_provider_openai_batch.models import (
    ApiModel,
    Batch,
    BatchPage,
    HttpInfo,
)
from airflow_provider_openai_batch.retries import policy_for

T = TypeVar("T", bound=ApiModel)


class OpenAIBatchHook(FilesApi, BaseHook):
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
        return self._with_overrides(conn, settings_from_connection(conn))

    def _with_overrides(self, conn: Any, settings: ClientSettings) -> ClientSettings:
        """``settings`` with this hook's timeout and retry overrides, the cleaned key registered with the masker."""
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
        return new_session(self.settings)

    def get_conn(self) -> requests.Session:
        return self.session

    def close(self) -> None:
        """Close the HTTP session (its pooled connections)."""
        if "session" in self.__dict__:
            self.session.close()
            del self.__dict__["session"]

    def test_connection(self) -> tuple[bool, str]:
        """One cheap authenticated call (list one batch), for the UI's Test button.

        No retries and a timeout of at most 10 s, so a wrong URL answers the button in seconds, not minutes. A
        secret is only sent where the fields Airflow's test guard compares (host and port) decide: a connection
        whose secret would go where the tester may point it (a base URL in the extra, an Entra ID authority of
        its own) is refused (see :func:`~airflow_provider_openai_batch.connection.settings_for_connection_test`).
        """
        from dataclasses import replace

        conn = self.get_connection(self.conn_id)
        try:
            settings = self._with_overrides(conn, settings_for_connection_test(conn))
        except ValueError as err:
            return False, f"Not tested: {err}"
        probe = OpenAIBatchHook(self.conn_id)
        try:
            # The connection is read once: the probe takes these settings with the quick limits.
            probe.settings = replace(settings, timeout=min(settings.timeout, 10.0), max_retries=0)
            page = probe.list_batches(limit=1)
        except (OpenAIBatchError, ValueError) as err:
            return False, f"Could not reach the OpenAI Batch API: {err}"
        finally:
            probe.close()
        request_id = page.http.request_id if page.http else None
        return True, f"Connection works: {settings.base_url} answered (request id {request_id})."

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
        ``idempotency_key`` the key is stored in the batch metadata and the create is made exactly once
        (:mod:`~airflow_provider_openai_batch.exactly_once`): an ambiguous failure is repeated only after looking
        for a batch carrying the key, and late twins are cancelled for ``reconcile_seconds``.

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
        if idempotency_key is None:
            batch = self._request(call)
        else:
            from airflow_provider_openai_batch.exactly_once import create_once

            batch = create_once(self, call, idempotency_key)
        sent = (call.json or {}).get("endpoint", endpoint)  # in the back end's shape (Azure: no /v1)
        self.log.info("Batch %s is %s (endpoint %s, input file %s)", batch.id, batch.status, sent, input_file_id)
        return batch

    def claim_batch_by_idempotency_key(self, idempotency_key: str, created_after: float) -> Batch | None:
        """The batch to go on with among those carrying ``idempotency_key`` since ``created_after``: the oldest
        live one, every other live one cancelled (creates carried out late); with none live, the newest. See
        :func:`~airflow_provider_openai_batch.exactly_once.claim`.

        :param idempotency_key: The key stored under ``airflow_idempotency_key`` in the batch metadata.
        :param created_after: Only batches created at or after this Unix time are searched (every one of them).
        """
        from airflow_provider_openai_batch.exactly_once import claim

        return claim(self, idempotency_key, created_after)

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
        from airflow_provider_openai_batch.exactly_once import batches_with_key

        if created_after is None and max_pages is None:
            max_pages = 20
        found = batches_with_key(self, idempotency_key, created_after, max_pages=max_pages)
        return found[0] if found else None

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
        return send(self.session, call, self.settings, self._auth_headers(), stream=stream, **kwargs)

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
        one_file_per_batch: bool = False,
        output_type: Any = None,
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
        :param destination: An absolute local path, a ``file:///abs/path`` URI, an object storage URI or an
            ``ObjectStoragePath`` (read as :mod:`airflow_provider_openai_batch.locations` says); written to a
            temporary sibling and renamed into place.
        :param format: ``"jsonl"`` (default) or ``"parquet"`` (default for a ``.parquet`` destination; needs
            the ``parquet`` extra).
        :param price_table: ``{model: {"input": usd, "output": usd}}`` per 1M tokens, over the dated default.
        :param delete_files: ``"none"``, ``"all"`` or a subset of ``{"input", "output", "error"}``: Files API
            files to delete once every output file is in place (a failed delete is a warning).
        :param work_dir: Where the temporary files go (default: the system's temporary directory).
        :param one_file_per_batch: Write batch N of the list (from 1) to the destination with ``-NNNNN`` before
            its extension instead of one merged file; rows keep their position in the whole input as ``index``.
        :param output_type: Parse and validate each answer (:mod:`airflow_provider_openai_batch.structured`):
            rows get ``output``, or status ``invalid_output``.
        :return: The manifest: destination, format, rows, counts, batch_ids, tokens, models, the estimated cost
            (and ``files``, one entry per file, with one file per batch).
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
            one_file_per_batch=one_file_per_batch,
            output_type=output_type,
        )


__all__ = ["HttpInfo", "OpenAIBatchHook"]
