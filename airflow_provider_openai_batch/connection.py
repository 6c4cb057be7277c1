"""Reading an Airflow connection into :class:`ClientSettings`: the one place that trusts no connection value.

Every value is treated as hostile: keys read from secret files carry a trailing newline, URLs pasted from a
gateway's docs carry ``user:password@``, header values can smuggle a line break or characters HTTP cannot
send. Each is cleaned (surrounding whitespace) or refused with an error that names the field and the fix and
never repeats a secret. Imports nothing heavy: the operators read it at execute time only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 5
#: More retries than this only hide an outage: with the capped back-off each retry can wait a minute.
MAX_RETRIES_LIMIT = 20
_LOOPBACK = ("localhost", "127.0.0.1", "::1", "[::1]")


@dataclass(frozen=True)
class ClientSettings:
    """What a transport needs from the Airflow connection. ``repr`` hides the key.

    :param api_key: Bearer token (the connection's password), already stripped of surrounding whitespace.
    :param base_url: API root including ``/v1`` (the connection's host); any OpenAI-compatible URL works.
    :param organization: Sent as ``OpenAI-Organization`` when set.
    :param project: Sent as ``OpenAI-Project`` when set.
    :param timeout: Seconds to wait for connect and for each read.
    :param max_retries: Retries after the first attempt for transient failures.
    """

    api_key: str = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    organization: str | None = None
    project: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES

    def headers(self) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.api_key}", "Accept": "application/json"}
        if self.organization:
            headers["OpenAI-Organization"] = self.organization
        if self.project:
            headers["OpenAI-Project"] = self.project
        return headers


def settings_from_connection(conn: Any) -> ClientSettings:
    """Build :class:`ClientSettings` from an Airflow connection (however it was looked up, sync or async).

    The base URL is the host when it is a full URL (what the UI's "Base URL" field asks for). A bare host,
    as a connection URI gives it (``openai-batch://:KEY@127.0.0.1:8089/v1``), is completed with the port,
    the schema as path (default ``/v1``), and ``http`` for loopback hosts, ``https`` otherwise.

    ``organization``, ``project``, ``base_url``, ``timeout`` and ``max_retries`` are read from the extra, and,
    for a connection made for the official OpenAI provider, from its ``extra.openai_client_kwargs`` (the
    top-level extra wins).

    :raises ValueError: naming the connection and the field, for a missing key, a key or header value HTTP
        cannot carry, credentials inside the URL, or a timeout or retry count out of range.
    """
    conn_id = str(conn.conn_id)
    extra = _extra(conn, conn_id)
    api_key = _header_value(conn.password, "password (API key)", conn_id, secret=True)
    if not api_key:
        raise ValueError(
            f"Connection {conn_id!r} has no API key: put the key in the connection's password field "
            "('API key' in the UI), e.g. AIRFLOW_CONN_" + conn_id.upper() + "='openai-batch://:<key>@'"
        )
    host = _text(conn.host) or _text(extra.get("base_url"))
    return ClientSettings(
        api_key=api_key,
        base_url=_base_url(host, conn.port, _text(conn.schema), conn_id),
        organization=_header_value(extra.get("organization"), "organization", conn_id) or None,
        project=_header_value(extra.get("project"), "project", conn_id) or None,
        timeout=_number(extra.get("timeout"), DEFAULT_TIMEOUT, "timeout", conn_id),
        max_retries=_retries(extra.get("max_retries"), conn_id),
    )


def _extra(conn: Any, conn_id: str) -> dict[str, Any]:
    raw = getattr(conn, "extra", None)
    if isinstance(raw, str) and raw.strip():
        # Parsed here rather than through extra_dejson, which logs bad JSON and carries on with {}.
        try:
            extra = json.loads(raw)
        except ValueError:
            extra = None
        if not isinstance(extra, Mapping):
            raise ValueError(f"Connection {conn_id!r}: the extra field is not a JSON object; fix or clear it")
    else:
        extra = raw if isinstance(raw, Mapping) else {}
    merged = dict(extra)
    kwargs = merged.get("openai_client_kwargs")
    if isinstance(kwargs, str):  # the official provider's form stores it as a JSON string
        try:
            kwargs = json.loads(kwargs) if kwargs.strip() else {}
        except ValueError:
            raise ValueError(
                f"Connection {conn_id!r}: extra 'openai_client_kwargs' is not valid JSON; fix or remove it"
            ) from None
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise ValueError(f"Connection {conn_id!r}: extra 'openai_client_kwargs' must be a JSON object")
    for name in ("organization", "project", "base_url", "timeout", "max_retries"):
        if merged.get(name) in (None, "") and kwargs and kwargs.get(name) not in (None, ""):
            merged[name] = kwargs[name]
    return merged


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _header_value(value: Any, name: str, conn_id: str, *, secret: bool = False) -> str:
    """A value for an HTTP header: surrounding whitespace dropped; anything HTTP cannot carry refused.

    The message never repeats a secret value: it only says which field and what is wrong with it.
    """
    if value is None:
        return ""
    if not isinstance(value, str):
        value = str(value)
    cleaned = value.strip()
    shown = "" if secret else f" {cleaned[:40]!r}"
    if any(ch.isspace() or not ch.isprintable() for ch in cleaned):
        raise ValueError(
            f"Connection {conn_id!r}: the {name}{shown} contains a space, line break or control character "
            "inside it; copy the value again without them"
        )
    try:
        cleaned.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(
            f"Connection {conn_id!r}: the {name}{shown} contains characters an HTTP header cannot carry "
            "(only ASCII is valid); copy the value again"
        ) from None
    return cleaned


def _base_url(host: str, port: Any, schema: str, conn_id: str) -> str:
    host = host.rstrip("/")
    if not host:
        return DEFAULT_BASE_URL
    if any(ch.isspace() or not ch.isprintable() for ch in host):
        raise ValueError(f"Connection {conn_id!r}: the base URL (host) contains spaces or control characters")
    if "://" in host:
        url = host
    elif "/" in host:  # host and path without a scheme
        url = "https://" + host
    else:
        name, _, own_port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
        scheme = "http" if (name or host).lower() in _LOOPBACK else "https"
        netloc = host if own_port else (f"{host}:{port}" if port else host)  # port 0 or None: the default
        path = "/" + schema.strip("/") if schema.strip("/") else "/v1"
        url = f"{scheme}://{netloc}{path}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(
            f"Connection {conn_id!r}: the base URL is not a valid URL; use e.g. {DEFAULT_BASE_URL}"
        ) from None
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"Connection {conn_id!r}: the base URL carries credentials (user:password@host); remove them "
            "from the URL and put the API key in the connection's password field"
        )
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"Connection {conn_id!r}: the base URL must be an http:// or https:// URL with a host, "
            f"e.g. {DEFAULT_BASE_URL}"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"Connection {conn_id!r}: the base URL must not have a ?query or #fragment")
    return urlunsplit((parts.scheme.lower(), parts.netloc, parts.path.rstrip("/"), "", ""))


def _number(value: Any, default: float, name: str, conn_id: str) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if isinstance(value, bool) or not 0 < number < float("inf"):
        raise ValueError(f"Connection {conn_id!r}: extra field {name!r} must be a positive number; got {value!r}")
    return number


def _retries(value: Any, conn_id: str) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        return DEFAULT_MAX_RETRIES
    text = value.strip() if isinstance(value, str) else value
    try:
        number = float(text)
    except (TypeError, ValueError):
        number = -1.0
    if isinstance(value, bool) or not number.is_integer() or not 0 <= number <= MAX_RETRIES_LIMIT:
        raise ValueError(
            f"Connection {conn_id!r}: extra field 'max_retries' must be a whole number from 0 to "
            f"{MAX_RETRIES_LIMIT}; got {value!r}"
        )
    return int(number)
