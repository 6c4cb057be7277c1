"""``OpenAIBatchHook``: the Batch and Files APIs over ``requests``.

All request building, validation, parsing, error mapping and retry policy lives in
:mod:`airflow_provider_openai_batch.api`; this module only moves bytes over HTTP.
"""

from __future__ import annotations

import io
import os
import secrets
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from functools import cached_property
from pathlib import Path
from typing import IO, Any, TypeVar

import requests
import tenacity
from airflow.sdk import BaseHook

from airflow_provider_openai_batch import api
from airflow_provider_openai_batch.connection import ClientSettings, settings_from_connection
from airflow_provider_openai_batch.exceptions import (
    APIConnectionError,
    APITimeoutError,
    OpenAIBatchError,
    ResultsParseError,
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

T = TypeVar("T", bound=ApiModel)

CHUNK_SIZE = 1024 * 1024
#: The Files API refuses uploads over 512 MB, and batch input files over 200 MB.
MAX_UPLOAD_BYTES = 512 * 1024 * 1024
MAX_BATCH_INPUT_BYTES = 200 * 1024 * 1024
#: When an ambiguous create is retried, batches created this long before the first attempt are
#: still searched for the idempotency key (allows for clock skew between us and the API).
CREATE_LOOKUP_SLACK_SECONDS = 300


class OpenAIBatchHook(BaseHook):
    """Talk to the OpenAI Batch and Files APIs with the credentials of an Airflow connection.

    The connection (type ``openai_batch``) holds the API key in *password*, an optional OpenAI-compatible
    base URL in *host* (default ``https://api.openai.com/v1``), and in *extra* the optional
    ``organization``, ``project``, ``timeout`` (seconds) and ``max_retries``.

    Every call is validated before anything is sent (a ``ValueError`` names the field and the rule),
    transient failures (429, 500, 502, 503, 504, connection errors, timeouts) are retried with exponential
    backoff and jitter honouring ``Retry-After``, and HTTP errors raise
    :class:`~airflow_provider_openai_batch.exceptions.APIError` subclasses. Every returned object carries
    ``.http`` (status code, headers and ``x-request-id`` of its response).

    :param conn_id: The Airflow connection id.
    :param timeout: Overrides the connection's request timeout (seconds).
    :param max_retries: Overrides the connection's number of retries of transient failures.
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
    ) -> None:
        super().__init__()
        self.conn_id = conn_id
        self._timeout_override = timeout
        self._max_retries_override = max_retries

    # ------------------------------------------------------------------------------------- connection

    @cached_property
    def settings(self) -> ClientSettings:
        """The connection's settings (key, base URL, headers, timeout, retries), read once."""
        settings = settings_from_connection(self.get_connection(self.conn_id))
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
    def session(self) -> requests.Session:
        """One keep-alive session per hook; it carries the auth headers."""
        session = requests.Session()
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
        second one.

        :param input_file_id: Id of a file uploaded with purpose ``batch``.
        :param endpoint: One of :data:`api.ENDPOINTS`; every line of the file must use the same url.
        :param completion_window: ``"24h"``, the only window offered.
        :param metadata: Up to 16 string pairs (15 with an idempotency key).
        :param output_expires_after: Seconds (3600..2592000) after creation when output files expire.
        :param idempotency_key: A stable key for this logical create, e.g. derived from the task instance.
        """
        call = api.create_batch(
            input_file_id, endpoint, completion_window, metadata, output_expires_after, idempotency_key
        )
        batch = self._request(call) if idempotency_key is None else self._create_idempotently(call, idempotency_key)
        self.log.info("Batch %s is %s (endpoint %s, input file %s)", batch.id, batch.status, endpoint, input_file_id)
        return batch

    def _create_idempotently(self, call: api.ApiCall[Batch], key: str) -> Batch:
        started = time.time()
        attempts = 0

        def attempt() -> Batch:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                existing = self.find_batch_by_idempotency_key(key, created_after=started - CREATE_LOOKUP_SLACK_SECONDS)
                if existing is not None:
                    self.log.info("Found batch %s from an earlier attempt; not creating another", existing.id)
                    return existing
            return self._send(call)

        # Every retryable failure may be retried here: the look-up above makes a repeat safe.
        retrying = tenacity.Retrying(**retry_policy(self.settings.max_retries, idempotent=True))
        return retrying(attempt)

    def find_batch_by_idempotency_key(
        self, idempotency_key: str, *, created_after: float | None = None, max_pages: int = 20
    ) -> Batch | None:
        """Return the newest batch whose metadata carries ``idempotency_key``, or ``None``.

        Pages through the batch list (newest first) until a batch older than ``created_after`` (a Unix
        time) or ``max_pages`` pages of 100.
        """
        for index, batch in enumerate(self.iter_batches(limit=100)):
            if (batch.metadata or {}).get(api.IDEMPOTENCY_METADATA_KEY) == idempotency_key:
                return batch
            if created_after is not None and batch.created_at is not None and batch.created_at < created_after:
                return None
            if index + 1 >= max_pages * 100:
                return None
        return None

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

    def upload_file(self, source: Any, purpose: str = "batch", filename: str | None = None) -> FileObject:
        """Upload a file, streaming it (memory does not grow with its size).

        :param source: A local path, an ``ObjectStoragePath``, ``bytes``, or a binary file object.
        :param purpose: ``"batch"`` for batch input files.
        :param filename: The name the API records. By default the source's name (or ``batch_input.jsonl``)
            with a short random tag, ``data-1a2b3c4d.jsonl``: the Files API has no idempotency key, so after
            an ambiguous failure (timeout, reset, 5xx) the retry looks for a file of that exact name among the
            newest 100 and returns it rather than uploading a second copy. An explicit name is used as is,
            and then a retry may leave a duplicate behind.
        """
        call = api.upload_file(purpose)
        opener, name, size = _upload_source(source)
        limit = MAX_BATCH_INPUT_BYTES if purpose == "batch" else MAX_UPLOAD_BYTES
        if size is not None and size > limit:
            raise ValueError(
                f"source is {size} bytes; the API accepts at most {limit} bytes for purpose {purpose!r}: "
                "split the requests into several batches"
            )
        form = {"purpose": purpose}
        recognisable = filename is None
        filename = filename or _tagged(name)
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
                body = _MultipartBody(form, "file", filename, stream)
                return self._send(call, data=body, headers={"Content-Type": body.content_type})

        policy = retry_policy(self.settings.max_retries if _reopenable(source) else 0)
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
        whole content arrived, so a failed or truncated download never leaves a partial file behind.

        :param file_id: The file to download (e.g. ``batch.output_file_id``).
        :param destination: A local path, an ``ObjectStoragePath``, or a writable binary file object.
        """
        call = api.file_content(file_id)

        def attempt() -> DownloadedFile:
            with self._stream(call) as response:
                http = api.http_info(response.status_code, response.headers)
                written = _write_destination(destination, _checked_chunks(response, file_id))
            result = DownloadedFile(file_id=file_id, destination=str(destination), bytes=written)
            result.with_http(http)
            return result

        retry_all = not hasattr(destination, "write") or _seekable(destination)
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
                for number, line in enumerate(_iter_lines(_checked_chunks(response, file_id)), start=1):
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
            if response.status_code >= 400:
                raise api.error_from_response(response.status_code, response.headers, response.content)
            yield response
        finally:
            response.close()

    def _http(self, call: api.ApiCall[Any], *, stream: bool, **kwargs: Any) -> requests.Response:
        settings = self.settings
        url = call.url(settings.base_url)
        try:
            return self.session.request(
                call.method,
                url,
                params=call.params,
                json=call.json,
                timeout=settings.timeout,
                stream=stream,
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


# ------------------------------------------------------------------------------------------ helpers


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
    kind = "could not connect to" if refused else "connection to"
    tail = "" if refused else " broke before an answer arrived"
    return APIConnectionError(
        f"{call.method} {call.path}: {kind} {base_url}{tail} ({type(underlying).__name__})",
        maybe_processed=not refused,
    )


def _checked_chunks(response: requests.Response, file_id: str) -> Iterator[bytes]:
    """Yield the body in chunks, raising when fewer bytes arrive than ``Content-Length`` promised."""
    expected = response.headers.get("Content-Length")
    received = 0
    try:
        for chunk in response.iter_content(CHUNK_SIZE):
            received += len(chunk)
            yield chunk
    except (
        requests.exceptions.ChunkedEncodingError,
        requests.exceptions.ConnectionError,
        requests.exceptions.ContentDecodingError,
    ) as err:
        raise APIConnectionError(
            f"download of file {file_id} broke after {received} bytes ({type(err).__name__})"
        ) from None
    # Content-Length counts bytes on the wire, which differ from the decoded ones when a server or proxy
    # compresses the answer: compare like with like.
    wire = _wire_bytes(response)
    arrived = wire if wire is not None else received
    if expected is not None and expected.isdigit() and arrived != int(expected):
        raise APIConnectionError(f"download of file {file_id} was truncated: {arrived} of {expected} bytes")


def _wire_bytes(response: requests.Response) -> int | None:
    """Bytes read from the connection (before any decompression), when the transport tells."""
    tell = getattr(response.raw, "tell", None)
    try:
        value = tell() if callable(tell) else None
    except (OSError, ValueError):
        return None
    return value if isinstance(value, int) else None


def _iter_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line for line in lines if line.strip())
    if pending.strip():
        yield pending


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


def _upload_source(source: Any) -> tuple[Any, str, int | None]:
    """Return (opener, filename, size) for an upload source; the opener yields a binary stream."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return (lambda: io.BytesIO(data)), "batch_input.jsonl", len(data)
    if hasattr(source, "fs"):  # ObjectStoragePath
        size = None
        try:
            size = int(source.stat().st_size)
        except Exception:  # a remote store may not report a size cheaply; the API still enforces it
            size = None
        return (lambda: source.open("rb")), str(source.name), size
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"source {str(path)!r} is not a readable file: pass an existing path")
        return (lambda: open(path, "rb")), path.name, path.stat().st_size
    if hasattr(source, "read"):
        start = source.tell() if _seekable(source) else None

        @contextmanager
        def reuse() -> Iterator[IO[bytes]]:
            if start is not None:
                source.seek(start)
            yield source

        name = os.path.basename(str(getattr(source, "name", "") or "")) or "batch_input.jsonl"
        return reuse, name, None
    raise ValueError(
        f"source must be a path, an ObjectStoragePath, bytes or a binary file object; got {type(source).__name__}"
    )


def _tagged(name: str) -> str:
    stem, suffix = os.path.splitext(name)
    return f"{stem}-{secrets.token_hex(4)}{suffix}"


def _seekable(obj: Any) -> bool:
    try:
        return bool(obj.seekable())
    except Exception:
        return False


def _reopenable(source: Any) -> bool:
    return not hasattr(source, "read") or _seekable(source)


def _write_destination(destination: Any, chunks: Iterator[bytes]) -> int:
    written = 0
    if hasattr(destination, "write"):
        if _seekable(destination):
            destination.seek(0)
            destination.truncate()
        for chunk in chunks:
            destination.write(chunk)
            written += len(chunk)
        return written
    if isinstance(destination, (str, os.PathLike)) and not hasattr(destination, "fs"):
        target = Path(destination)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as tmp:
                for chunk in chunks:
                    tmp.write(chunk)
                    written += len(chunk)
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return written
    # ObjectStoragePath: write to a sibling, then move, so readers never see a half-written object.
    partial = destination.with_name(f".{destination.name}.{uuid.uuid4().hex}.part")
    try:
        with partial.open("wb") as out:
            for chunk in chunks:
                out.write(chunk)
                written += len(chunk)
        partial.rename(destination)
    except BaseException:
        with suppress(Exception):
            partial.unlink()
        raise
    return written


class _MultipartBody:
    """A ``multipart/form-data`` body read lazily from the file stream, with a known length.

    ``requests`` alone would build the whole body in memory; this lets the HTTP client stream it in
    blocks while still sending ``Content-Length`` (``requests`` reads ``__len__`` and ``tell``).
    """

    def __init__(self, fields: Mapping[str, str], file_field: str, filename: str, stream: IO[bytes]) -> None:
        boundary = uuid.uuid4().hex
        self.content_type = f"multipart/form-data; boundary={boundary}"
        safe_name = filename.replace('"', "%22").replace("\r", " ").replace("\n", " ")
        head = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
            for k, v in fields.items()
        )
        head += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{safe_name}"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        self._length = len(head) + _remaining(stream) + len(tail)
        self._parts: list[IO[bytes]] = [io.BytesIO(head), stream, io.BytesIO(tail)]
        self._position = 0

    def __len__(self) -> int:
        return self._length

    def tell(self) -> int:
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        want = self._length if size is None or size < 0 else size
        out = bytearray()
        while self._parts and len(out) < want:
            chunk = self._parts[0].read(min(want - len(out), CHUNK_SIZE))
            if chunk:
                out += chunk
            else:
                self._parts.pop(0)
        self._position += len(out)
        return bytes(out)

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(CHUNK_SIZE):
            yield chunk


def _remaining(stream: IO[bytes]) -> int:
    if _seekable(stream):
        here = stream.tell()
        end = stream.seek(0, io.SEEK_END)
        stream.seek(here)
        return end - here
    try:
        return os.fstat(stream.fileno()).st_size - stream.tell()
    except (OSError, AttributeError, io.UnsupportedOperation):
        raise ValueError(
            "source file object is neither seekable nor a real file, so its size is unknown: "
            "pass a path or bytes instead"
        ) from None


__all__ = ["HttpInfo", "OpenAIBatchHook"]
