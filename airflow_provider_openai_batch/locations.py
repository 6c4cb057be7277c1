"""Where a file is, read from what a user writes: one reading for every input file and every destination.

A location is given as a local path (a string or an ``os.PathLike``), a URI string (``file:///data/in.jsonl``,
``s3://bucket/in.jsonl``, ``memory://bucket/in.jsonl``, ...) or an ``ObjectStoragePath``. :func:`input_location`
and :func:`destination_location` turn each into a local :class:`~pathlib.Path` or an ``ObjectStoragePath``, or
refuse it with an error that names the fix, so a file never lands anywhere but where the user meant;
:func:`location_uri` names a destination as the URI an asset or a manifest reports.

Rules:

- ``file:`` URIs follow RFC 8089: ``file:///abs/path`` and ``file://localhost/abs/path`` are local paths. A host
  is refused (``file://data/answers.jsonl`` names the host ``data``, not the folder), and so are a query or a
  fragment (``?`` and ``#`` in a file name are written ``%3F`` and ``%23``).
- Any other ``scheme://`` is object storage, read and written through ``ObjectStoragePath``; a scheme no
  installed Airflow provider (or :func:`airflow.sdk.io.attach`) serves is refused naming what to install.
- ``s3:/bucket/key`` (a scheme without ``//``) is refused: it would be read as a relative local path.
- A relative local path is a destination error (the DAG processor, which names the asset, and the worker,
  which writes the file, resolve it against different directories), unless the caller allows it; an input
  may be relative, read from the worker's working directory.

Import-light: the operators name their asset's URI when a DAG file is parsed, so ``ObjectStoragePath`` (fsspec,
universal-pathlib) is imported only for an object storage URI, at run time.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

#: ``scheme:`` at the start of a string. Two characters at least, so a Windows drive (``C:``) is no scheme.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")

#: The package that serves a scheme in Airflow, for the error when none is installed.
_SCHEME_PACKAGES = {
    "s3": "apache-airflow-providers-amazon[s3fs]",
    "s3a": "apache-airflow-providers-amazon[s3fs]",
    "gs": "apache-airflow-providers-google",
    "gcs": "apache-airflow-providers-google",
    "abfs": "apache-airflow-providers-microsoft-azure",
    "abfss": "apache-airflow-providers-microsoft-azure",
    "adl": "apache-airflow-providers-microsoft-azure",
}

#: The protocols of an ``ObjectStoragePath`` on the local disk.
_LOCAL_PROTOCOLS = ("", "file", "local")


class StorageNotInstalledError(ImportError):
    """A URI names object storage that no installed Airflow provider serves."""


def input_location(value: Any, name: str = "input_file") -> Any:
    """An input file as a local :class:`~pathlib.Path` or an ``ObjectStoragePath`` that exists.

    A relative local path is read from the working directory (inputs are read by the process given them).

    :param name: What the value is, for the error (``input_file``, ``source``).
    :raises ValueError: for a value of another type, a malformed URI, or a file that does not exist, naming the
        fix.
    :raises StorageNotInstalledError: for object storage no installed provider serves.
    """
    location = _interpret(value, name, what="a JSONL file")
    if isinstance(location, Path):
        exists = location.is_file()
    else:
        is_file = getattr(location, "is_file", None)  # any object with ``fs`` and ``open`` is taken as a path
        exists = is_file() if callable(is_file) else True
    if not exists:
        raise ValueError(f"{name} {str(value)!r} does not exist or is not a file: pass an existing file's path or URI")
    return location


def destination_location(value: Any, name: str = "destination", *, relative_ok: bool = False) -> Any:
    """A destination as a local :class:`~pathlib.Path` or an ``ObjectStoragePath``.

    :param name: What the value is, for the error.
    :param relative_ok: Take a relative local path (resolved against this process's working directory) instead
        of refusing it: for a caller that writes in the same process that was given the path.
    :raises ValueError: for a value of another type, a malformed URI or (unless ``relative_ok``) a relative
        local path, naming the fix.
    :raises StorageNotInstalledError: for object storage no installed provider serves.
    """
    location = _interpret(value, name, what="an output file")
    local = location if isinstance(location, Path) else _local_part(location)
    if local is not None and not local.is_absolute() and not relative_ok:
        raise ValueError(
            f"{name} {str(value)!r} is a relative path: the DAG processor and the worker resolve it against "
            "different working directories, so the asset would name another file than the one written; give an "
            "absolute path or a URI instead, e.g. '/data/answers.jsonl', 'file:///data/answers.jsonl' or "
            "'s3://bucket/answers.jsonl'"
        )
    return location


def location_uri(value: Any, name: str = "destination") -> str:
    """A destination as a URI: ``file:///abs/path`` for a local one, the store's URI for object storage.

    Cheap enough for DAG-parse time: a URI string of object storage is returned as given (after the checks that
    need no filesystem), so nothing imports fsspec here.

    :raises ValueError: as :func:`destination_location` does.
    """
    if isinstance(value, str):
        scheme = _scheme(value)
        if scheme is not None and scheme != "file":
            _check_uri_shape(value, scheme, name)
            return value
    location = destination_location(value, name)
    if isinstance(location, Path):
        return location.as_uri()
    local = _local_part(location)
    return local.as_uri() if local is not None and getattr(location, "protocol", None) == "" else str(location)


def input_uri(value: Any, name: str = "input_file") -> str:
    """An input file as a URI (for lineage): a local path made absolute (``file:///...``), object storage as
    its store's URI."""
    location = input_location(value, name)
    return location_uri(location.resolve() if isinstance(location, Path) else location, name)


# ----------------------------------------------------------------------------------------------- helpers


def _interpret(value: Any, name: str, what: str) -> Any:
    if hasattr(value, "fs") and not isinstance(value, str):  # an ObjectStoragePath, or what quacks like one
        if getattr(value, "protocol", "") not in _LOCAL_PROTOCOLS:
            _require_filesystem(value, name, str(value))
        return value
    if isinstance(value, os.PathLike):
        return Path(value)
    if not isinstance(value, str):
        raise ValueError(
            f"{name} must be a local path, a file:// URI, an object storage URI such as 's3://bucket/file.jsonl', "
            f"or an ObjectStoragePath of {what}; got {type(value).__name__}: {value!r}"[:400]
        )
    if not value.strip():
        raise ValueError(f"{name} is an empty string: give a local path or a URI of {what}")
    scheme = _scheme(value)
    if scheme is None:
        return Path(value)
    if scheme == "file":
        return _file_uri_path(value, name)
    _check_uri_shape(value, scheme, name)
    from airflow.sdk import ObjectStoragePath

    try:
        path = ObjectStoragePath(value)
    except ValueError as err:  # a scheme fsspec itself does not know
        raise _not_installed(name, value, scheme, err) from None
    _require_filesystem(path, name, value)
    return path


def _scheme(value: str) -> str | None:
    match = _SCHEME.match(value)
    return match.group(1).lower() if match else None


def _check_uri_shape(value: str, scheme: str, name: str) -> None:
    if not value[len(scheme) + 1 :].startswith("//"):
        raise ValueError(
            f"{name} {value!r} starts like a {scheme}: URI but has no '//' after the scheme, so it would be read as "
            f"a relative local path: write '{scheme}://bucket/key' (or './{value}' for a local file of that name)"
        )


def _file_uri_path(value: str, name: str) -> Path:
    """The local path a ``file:`` URI names (RFC 8089), refusing the forms that would land somewhere else."""
    parts = urlsplit(value)
    host = parts.netloc
    if host and host.lower() != "localhost":
        raise ValueError(
            f"{name} {value!r} names the host {host!r}: a file: URI is 'file://' + an absolute path, so "
            f"'file://{host}/...' does not mean the folder '{host}'. For the absolute path write "
            f"'file:///{host}{parts.path}' (three slashes), or give a plain path"
        )
    if parts.query or parts.fragment:
        raise ValueError(
            f"{name} {value!r} has a query or fragment ('?' or '#'), which a file: URI does not carry: write '?' "
            "as %3F and '#' as %23 in the file name, or give a plain path"
        )
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise ValueError(
            f"{name} {value!r} is a file: URI without an absolute path: write 'file:///abs/path' (three "
            "slashes), or give a plain path"
        )
    return Path(path)


def _local_part(location: Any) -> PurePosixPath | None:
    """The path of a local ``ObjectStoragePath`` (``file://`` or a plain path), else ``None``."""
    if getattr(location, "protocol", None) not in _LOCAL_PROTOCOLS:
        return None
    return PurePosixPath(str(getattr(location, "path", "")))


def _require_filesystem(path: Any, name: str, shown: str) -> None:
    """Refuse object storage whose filesystem is not available here, naming what to install."""
    try:
        path.fs  # noqa: B018 - resolving the filesystem is the check
    except (ImportError, ValueError) as err:
        raise _not_installed(name, shown, str(getattr(path, "protocol", "") or _scheme(shown)), err) from None


def _not_installed(name: str, shown: str, scheme: str, err: Exception) -> StorageNotInstalledError:
    package = _SCHEME_PACKAGES.get(scheme)
    install = f"pip install '{package}'" if package else f"install the Airflow provider that serves {scheme}://"
    return StorageNotInstalledError(
        f"{name} {shown!r}: no filesystem for {scheme}:// is available in this Airflow ({err}): {install}, or "
        f"attach one with airflow.sdk.io.attach(protocol={scheme!r}, fs=...)"
    )
