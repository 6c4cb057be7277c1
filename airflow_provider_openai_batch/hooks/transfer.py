"""Moving file bytes over ``requests`` without holding them in memory: the streamed multipart upload body,
upload sources (path, object storage, bytes, file object), and download writers that never leave a partial
file behind. The hook decides what to send and when to retry; this module only moves bytes.
"""

from __future__ import annotations

import io
import os
import secrets
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import requests

from airflow_provider_openai_batch.exceptions import APIConnectionError
from airflow_provider_openai_batch.locations import input_location

CHUNK_SIZE = 1024 * 1024


def checked_chunks(response: requests.Response, file_id: str) -> Iterator[bytes]:
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


def iter_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line for line in lines if line.strip())
    if pending.strip():
        yield pending


def upload_source(source: Any) -> tuple[Any, str, int | None]:
    """Return (opener, filename, size) for an upload source; the opener yields a binary stream."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return (lambda: io.BytesIO(data)), "batch_input.jsonl", len(data)
    if hasattr(source, "fs") or isinstance(source, (str, os.PathLike)):
        location = input_location(source, "source")
        if isinstance(location, Path):
            return (lambda: open(location, "rb")), location.name, location.stat().st_size
        size = None
        try:
            size = int(location.stat().st_size)
        except Exception:  # a remote store may not report a size cheaply; the API still enforces it
            size = None
        return (lambda: location.open("rb")), str(location.name), size
    if hasattr(source, "read"):
        check_binary_handle(source, "source", "rb")
        start = source.tell() if seekable(source) else None

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


def tagged_name(name: str, suffix: str | None = None) -> str:
    """``name`` with a short random tag before its extension (or before ``suffix``, which replaces it)."""
    stem, extension = os.path.splitext(name)
    return f"{stem}-{secrets.token_hex(4)}{extension if suffix is None else suffix}"


def seekable(obj: Any) -> bool:
    try:
        return bool(obj.seekable())
    except Exception:
        return False


def reopenable(source: Any) -> bool:
    return not hasattr(source, "read") or seekable(source)


def check_binary_handle(handle: Any, name: str, mode: str) -> None:
    """Refuse a closed or text-mode file object before a byte moves, naming the fix."""
    if getattr(handle, "closed", False):
        raise ValueError(f"{name} is a closed file object: pass it while it is open, or pass a path")
    if isinstance(handle, io.TextIOBase) or "b" not in str(getattr(handle, "mode", "b")):
        raise ValueError(f"{name} is a text file object: open it in binary mode ({mode!r}), or pass a path")


def write_destination(destination: Any, chunks: Iterator[bytes]) -> int:
    """Write ``chunks`` to a binary file object, a local path or an ``ObjectStoragePath`` (a location as
    :func:`~airflow_provider_openai_batch.locations.destination_location` returns it); returns the bytes written."""
    written = 0
    if hasattr(destination, "write"):
        # Written from the handle's current position, as uploads read from it: whatever the caller already
        # wrote (a header, an earlier download into the same handle) stays.
        for chunk in chunks:
            destination.write(chunk)
            written += len(chunk)
        return written
    if isinstance(destination, os.PathLike):
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


class MultipartBody:
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
    if seekable(stream):
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
