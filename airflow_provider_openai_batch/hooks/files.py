"""The Files API calls of :class:`~airflow_provider_openai_batch.hooks.batch.OpenAIBatchHook`: upload a batch's
input, download its output and error files, read their records. Streamed both ways: memory does not grow with
a file's size.

:class:`FilesApi` is a part of the hook, not a hook of its own: it sends through the hook's transport and
retry policy (``_request``, ``_send``, ``_stream``) and reads its ``settings`` and ``rules``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

import tenacity

from airflow_provider_openai_batch import api
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
from airflow_provider_openai_batch.locations import destination_location
from airflow_provider_openai_batch.models import (
    ApiModel,
    Batch,
    DownloadedFile,
    FileDeleted,
    FileObject,
    FilePage,
    ResultRecord,
)
from airflow_provider_openai_batch.retries import retry_policy

if TYPE_CHECKING:
    import requests

    from airflow_provider_openai_batch.backends import BackendRules
    from airflow_provider_openai_batch.connection import ClientSettings

T = TypeVar("T", bound=ApiModel)

#: The Files API refuses uploads over 512 MB, and batch input files over 200 MB.
MAX_UPLOAD_BYTES = 512 * 1024 * 1024
MAX_BATCH_INPUT_BYTES = 200 * 1024 * 1024


class FilesApi:
    """Upload, read, list, delete and download files (see the module docstring)."""

    if TYPE_CHECKING:  # provided by OpenAIBatchHook
        log: Any

        @property
        def settings(self) -> ClientSettings: ...
        @property
        def rules(self) -> BackendRules: ...

        def _request(self, call: api.ApiCall[T]) -> T: ...
        def _send(self, call: api.ApiCall[T], **kwargs: Any) -> T: ...
        def _stream(self, call: api.ApiCall[Any]) -> AbstractContextManager[requests.Response]: ...
        def retrieve_batch(self, batch_id: str) -> Batch: ...

    def upload_file(
        self,
        source: Any,
        purpose: str = "batch",
        filename: str | None = None,
        expires_after: int | Mapping[str, Any] | None = None,
    ) -> FileObject:
        """Upload a file, streaming it (memory does not grow with its size).

        :param source: A local path, a URI string (``file:///abs/path``, ``s3://bucket/key``), an
            ``ObjectStoragePath``, ``bytes``, or a binary file object.
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
        :param destination: A local path (relative to the working directory, or absolute), a URI string
            (``file:///abs/path``, ``s3://bucket/key``), an ``ObjectStoragePath``, or a writable binary file object.
        """
        call = api.file_content(file_id)
        if hasattr(destination, "write"):
            check_binary_handle(destination, "destination", "wb")
        else:  # refused before the download starts, not once the bytes arrive
            destination = destination_location(destination, "destination", relative_ok=True)
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
                    yield ResultRecord.from_line(line, file_id, number, source)

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
