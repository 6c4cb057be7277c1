"""Reading an Airflow connection into :class:`ClientSettings`: the one place that trusts no connection value.

Every value is treated as hostile: keys read from secret files carry a trailing newline, URLs pasted from a
gateway's docs carry ``user:password@``, header values can smuggle a line break or characters HTTP cannot
send. Each is cleaned (surrounding whitespace) or refused with an error that names the field and the fix and
never repeats a secret. Imports nothing heavy: the operators read it at execute time only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from airflow_provider_openai_batch.azure_auth import AZURE_TOKEN_SCOPE, AZURE_TOKEN_SCOPES, EntraSettings
from airflow_provider_openai_batch.destinations import (
    AZURE_TOKEN_HOST_SUFFIXES,
    KNOWN_AUTHORITY_HOSTS,
    checked_url,
    token_host_allowed,
)

if TYPE_CHECKING:
    from airflow_provider_openai_batch.backends import BackendRules

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 5
#: More retries than this only hide an outage: with the capped back-off each retry can wait a minute.
MAX_RETRIES_LIMIT = 20
_LOOPBACK = ("localhost", "127.0.0.1", "::1", "[::1]")
#: The back ends a connection may name in extra ``api_type`` (the rules of each: :mod:`.backends`).
API_TYPES = ("openai", "azure", "openai_compatible")
AZURE_EXAMPLE_URL = "https://{resource}.openai.azure.com/openai/v1"
_API_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}(-preview)?")
_TENANT = re.compile(r"[A-Za-z0-9.-]{1,100}")


@dataclass(frozen=True)
class ClientSettings:
    """What a transport needs from the Airflow connection. ``repr`` hides the key.

    :param api_key: Bearer token (the connection's password), already stripped of surrounding whitespace.
    :param base_url: API root including ``/v1`` (the connection's host); any OpenAI-compatible URL works.
    :param organization: Sent as ``OpenAI-Organization`` when set.
    :param project: Sent as ``OpenAI-Project`` when set.
    :param timeout: Seconds to wait for connect and for each read.
    :param max_retries: Retries after the first attempt for transient failures.
    :param api_type: ``openai``, ``azure`` or ``openai_compatible``: whose rules apply (:mod:`.backends`).
    :param api_version: Azure's ``api-version`` query parameter, sent on every request when the classic
        ``.../openai/batches?api-version=...`` paths are used; ``None`` for the ``/openai/v1`` paths.
    :param entra: Set when Azure is reached with Microsoft Entra ID tokens instead of an API key.
    :param rule_overrides: ``(name, value)`` pairs from extra ``backend_rules`` that replace the back end's
        rules (e.g. ``max_requests_per_file`` when the service raised it).
    """

    api_key: str = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    organization: str | None = None
    project: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    api_type: str = "openai"
    api_version: str | None = None
    entra: EntraSettings | None = None
    rule_overrides: tuple[tuple[str, Any], ...] = ()

    def rules(self) -> BackendRules:
        """The back end's :class:`~airflow_provider_openai_batch.backends.BackendRules`, with the connection's
        ``backend_rules`` overrides applied."""
        from airflow_provider_openai_batch.backends import rules_for

        return rules_for(self.api_type, **dict(self.rule_overrides))

    def headers(self) -> dict[str, str]:
        """The headers every request carries. With Entra ID the ``Authorization`` header is not here: the
        transport adds a fresh token to each request (see :mod:`.azure_auth`)."""
        headers = {"Accept": "application/json"}
        if self.entra is None and self.api_type == "azure":
            headers["api-key"] = self.api_key
        elif self.entra is None:
            headers["Authorization"] = f"Bearer {self.api_key}"
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

    ``api_type`` (extra) picks the back end: ``openai`` (the default), ``azure`` or ``openai_compatible``. For
    ``azure`` the host is the resource's base URL (``https://{resource}.openai.azure.com/openai/v1``; a bare
    ``https://{resource}.openai.azure.com`` gets ``/openai/v1``), or with extra ``api_version`` the resource
    root for the classic ``.../openai/batches?api-version=...`` paths. Azure authenticates with the
    password as ``api-key``, or with ``auth_type: entra_id`` through Microsoft Entra ID: a service principal
    (``tenant_id``, ``client_id``, the password as client secret), a managed identity (``managed_identity:
    true``, optional ``client_id``) or the default credential chain; optional ``authority``, ``token_scope``.
    The token is the machine's or the service principal's, so it is only sent over HTTPS to an Azure host
    (:data:`AZURE_TOKEN_HOST_SUFFIXES`) and only for Azure OpenAI's scopes (:data:`AZURE_TOKEN_SCOPES`), unless
    the extra sets ``unsafe_send_token_to_any_host`` (a gateway you trust with it, or a loopback test server) or
    ``unsafe_allow_any_token_scope`` to true.

    :raises ValueError: naming the connection and the field, for a missing key, a key or header value HTTP
        cannot carry, credentials inside the URL, or a timeout or retry count out of range.
    """
    conn_id = str(conn.conn_id)
    extra, from_client_kwargs = _extra(conn, conn_id)
    api_type = _api_type(extra.get("api_type"), conn_id)
    secret = _header_value(conn.password, "password (API key)", conn_id, secret=True)
    entra = _entra(extra, secret, api_type, conn_id)
    if not secret and entra is None:
        hint = " or set extra auth_type to 'entra_id' to use Microsoft Entra ID" if api_type == "azure" else ""
        raise ValueError(
            f"Connection {conn_id!r} has no API key: put the key in the connection's password field "
            "('API key' in the UI), e.g. AIRFLOW_CONN_" + conn_id.upper() + "='openai-batch://:<key>@'" + hint
        )
    host, host_field = _host(conn, extra, from_client_kwargs)
    if not host and api_type != "openai":
        example = AZURE_EXAMPLE_URL if api_type == "azure" else "https://llm.example.com/v1"
        raise ValueError(
            f"Connection {conn_id!r}: api_type {api_type!r} needs the server's base URL in the host field "
            f"('Base URL' in the UI), e.g. {example}"
        )
    api_version = _api_version(extra.get("api_version"), api_type, conn_id)
    schema = _text(conn.schema)
    if api_type == "azure" and not schema and "://" not in host and "/" not in host:
        # A bare host (as a connection URI gives it) is the resource: its API lives under /openai, not /v1.
        schema = "openai/v1" if api_version is None else "openai"
    base_url = _base_url(host, conn.port, schema, conn_id, host_field)
    if api_type == "azure":
        base_url = _azure_base_url(base_url, api_version, conn_id)
    if entra is not None:
        _check_token_host(base_url, extra, conn_id, host_field)
    return ClientSettings(
        api_key="" if entra is not None else secret,
        base_url=base_url,
        organization=_header_value(extra.get("organization"), "organization", conn_id) or None,
        project=_header_value(extra.get("project"), "project", conn_id) or None,
        timeout=_number(extra.get("timeout"), DEFAULT_TIMEOUT, "timeout", conn_id),
        max_retries=_retries(extra.get("max_retries"), conn_id),
        api_type=api_type,
        api_version=api_version,
        entra=entra,
        rule_overrides=_rule_overrides(extra.get("backend_rules"), api_type, conn_id),
    )


def settings_for_connection_test(conn: Any) -> ClientSettings:
    """:func:`settings_from_connection` for the connection Test button: refused when the test could send a secret
    somewhere Airflow's own guard does not look.

    Airflow's Test button (``POST /api/v2/connections/test``) tests the connection as the tester submits it,
    with the stored password filled in for the masked one; it reuses the stored password only while the
    submitted host and port equal the stored ones, and takes every other field (the extra too) from the
    tester. So a test sends a secret only where the host and port, or this provider's constants, decide:

    - the base URL comes from the host field (or is OpenAI's default), never from extra ``base_url`` or
      ``openai_client_kwargs.base_url``;
    - an Entra ID ``authority`` (where the client secret goes, or with the default credential chain the
      machine's own ``AZURE_CLIENT_SECRET``) is one of Microsoft's own hosts (:data:`KNOWN_AUTHORITY_HOSTS`);
    - the machine's own Entra ID identity (a managed identity or the default credential chain, which needs no
      stored password at all) is never sent past the Azure host check: ``unsafe_send_token_to_any_host`` does
      not apply to a test.

    A connection refused here still works in tasks, which only whoever may edit the connection decides.

    :raises ValueError: naming the field and the fix, for those and for anything
        :func:`settings_from_connection` refuses.
    """
    conn_id = str(conn.conn_id)
    extra, from_client_kwargs = _extra(conn, conn_id)
    _, field = _host(conn, extra, from_client_kwargs)
    refused = f"Connection {conn_id!r}: the Test button does not send this connection's secret"
    guard = (
        "Airflow reuses a stored secret for a test whenever the host and port are unchanged, whatever the rest "
        "of the test says, so whoever may test the connection could name a server of their own there"
    )
    if field != "host":
        raise ValueError(
            f"{refused} to a base URL taken from {field}: {guard}. Move the base URL into the host field "
            "('Base URL' in the UI) to test this connection"
        )
    settings = settings_from_connection(conn)
    entra = settings.entra
    if entra is None:
        return settings
    if entra.authority is not None and urlsplit(entra.authority).hostname not in KNOWN_AUTHORITY_HOSTS:
        raise ValueError(
            f"{refused} or this machine's Entra ID credentials to the authority in extra field 'authority': "
            f"{guard}. A test only uses Microsoft's own authorities ({', '.join(sorted(KNOWN_AUTHORITY_HOSTS))}): "
            "remove 'authority' to test this connection, or test it from a task"
        )
    if entra.kind != "service_principal" and _flag(extra, "unsafe_send_token_to_any_host"):
        raise ValueError(
            f"Connection {conn_id!r}: the Test button does not send this machine's own Entra ID token (managed "
            "identity or default credential chain) past the Azure host check, and extra field "
            "'unsafe_send_token_to_any_host' is set: whoever may test connections could name a host of their own. "
            "Test this connection from a task"
        )
    return settings


def _rule_overrides(value: Any, api_type: str, conn_id: str) -> tuple[tuple[str, Any], ...]:
    """Extra ``backend_rules``: a JSON object of rule overrides, checked now so a typo fails at once."""
    from airflow_provider_openai_batch.backends import rules_for

    if value is None or value == "" or value == {}:
        return ()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    if not isinstance(value, Mapping):
        raise ValueError(
            f"Connection {conn_id!r}: extra field 'backend_rules' must be a JSON object such as "
            '{"max_requests_per_file": 100000}'
        )
    overrides = dict(value)
    for name in ("endpoints", "completion_windows"):
        if isinstance(overrides.get(name), list):
            overrides[name] = tuple(overrides[name])
    try:
        rules_for(api_type, **overrides)
    except (ValueError, TypeError) as err:
        raise ValueError(f"Connection {conn_id!r}: extra field 'backend_rules': {err}") from None
    for name, limit in overrides.items():
        if name.startswith("max_") and limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise ValueError(
                f"Connection {conn_id!r}: extra field 'backend_rules.{name}' must be a whole number; got {limit!r}"
            )
    return tuple(sorted(overrides.items()))


def _api_type(value: Any, conn_id: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        return "openai"
    cleaned = value.strip().lower() if isinstance(value, str) else value
    if cleaned not in API_TYPES:
        raise ValueError(
            f"Connection {conn_id!r}: extra field 'api_type' must be one of {', '.join(API_TYPES)}; "
            f"got {str(value)[:40]!r}"
        )
    return str(cleaned)


def _api_version(value: Any, api_type: str, conn_id: str) -> str | None:
    text = _text(value) if isinstance(value, str) else ("" if value is None else str(value))
    if not text:
        return None
    if api_type != "azure":
        raise ValueError(
            f"Connection {conn_id!r}: extra field 'api_version' is only for api_type 'azure' (its classic paths); "
            "remove it, or set api_type to 'azure'"
        )
    if not _API_VERSION.fullmatch(text):
        raise ValueError(
            f"Connection {conn_id!r}: extra field 'api_version' must be a date such as 2024-10-21 (or "
            f"2025-04-01-preview); got {text[:40]!r}"
        )
    return text


def _azure_base_url(base_url: str, api_version: str | None, conn_id: str) -> str:
    """The Azure base URL in the shape ``api_version`` asks for: ``.../openai/v1`` without it, ``.../openai``
    (the classic paths) with it. A bare resource URL is completed; a URL of the other shape is refused."""
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/")
    if api_version is None:
        if path in ("", "/openai"):
            path = "/openai/v1" if path == "" else path
            if path == "/openai":
                raise ValueError(
                    f"Connection {conn_id!r}: the base URL ends in /openai, the classic Azure paths, which need an "
                    "API version: add /v1 to the base URL (e.g. " + AZURE_EXAMPLE_URL + "), or set extra field "
                    "'api_version' (e.g. 2024-10-21)"
                )
        elif not path.endswith("/v1"):
            raise ValueError(
                f"Connection {conn_id!r}: an Azure base URL should end in /openai/v1, e.g. {AZURE_EXAMPLE_URL} "
                "(or set extra field 'api_version' for the classic paths)"
            )
    else:
        if path.endswith("/v1"):
            raise ValueError(
                f"Connection {conn_id!r}: extra field 'api_version' is for the classic paths "
                "(.../openai/batches?api-version=...), but the base URL ends in /v1: remove 'api_version', or set "
                "the base URL to https://{resource}.openai.azure.com/openai"
            )
        if not path.endswith("/openai"):
            path += "/openai"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _entra(extra: Mapping[str, Any], secret: str, api_type: str, conn_id: str) -> EntraSettings | None:
    auth = _text(extra.get("auth_type")).lower() if isinstance(extra.get("auth_type"), str) else ""
    if extra.get("auth_type") is not None and not isinstance(extra.get("auth_type"), str):
        auth = "?"
    if auth in ("", "api_key"):
        return None
    if auth != "entra_id":
        raise ValueError(
            f"Connection {conn_id!r}: extra field 'auth_type' must be 'api_key' or 'entra_id'; "
            f"got {str(extra.get('auth_type'))[:40]!r}"
        )
    if api_type != "azure":
        raise ValueError(
            f"Connection {conn_id!r}: auth_type 'entra_id' (Microsoft Entra ID) works with api_type 'azure' only; "
            "set api_type to 'azure' or remove auth_type"
        )
    tenant_id = _text(extra.get("tenant_id")) or None
    client_id = _header_value(extra.get("client_id"), "client_id", conn_id) or None
    if tenant_id is not None and not _TENANT.fullmatch(tenant_id):
        raise ValueError(
            f"Connection {conn_id!r}: extra field 'tenant_id' must be a directory id or domain such as "
            "contoso.onmicrosoft.com; copy it again from the app registration"
        )
    managed = _flag(extra, "managed_identity")
    if secret and not (tenant_id and client_id):
        raise ValueError(
            f"Connection {conn_id!r}: with auth_type 'entra_id' the password is a service principal's client "
            "secret, which also needs extra fields 'tenant_id' and 'client_id'; add them, or clear the password "
            "to use a managed identity or the default credential chain"
        )
    if secret and managed:
        raise ValueError(
            f"Connection {conn_id!r}: 'managed_identity' is set, but so is a client secret (the password); "
            "clear one of them"
        )
    authority = _text(extra.get("authority")) or None
    if authority is not None:
        # The client secret (or the machine's own credential) goes there: checked as strictly as the base URL.
        authority = checked_url(
            authority, conn_id, "extra field 'authority'", "https://login.microsoftonline.com", schemes=("https",)
        )
    scope = _text(extra.get("token_scope")) or AZURE_TOKEN_SCOPE
    if scope not in AZURE_TOKEN_SCOPES and not _flag(extra, "unsafe_allow_any_token_scope"):
        raise ValueError(
            f"Connection {conn_id!r}: extra field 'token_scope' must be one of Azure OpenAI's scopes "
            f"({', '.join(AZURE_TOKEN_SCOPES)}); got {scope[:80]!r}. A token for another resource would be sent to "
            "the connection's host: remove 'token_scope', or, only if that host may hold such a token, also set "
            "extra field 'unsafe_allow_any_token_scope' to true"
        )
    return EntraSettings(tenant_id, client_id, secret or None, managed, authority, scope)


def _check_token_host(base_url: str, extra: Mapping[str, Any], conn_id: str, field: str) -> None:
    """Refuse to send an Entra ID token anywhere but over HTTPS to an Azure OpenAI host, unless opted in: whoever
    may edit connections could otherwise have the machine's managed-identity token sent to a host they run.
    ``base_url`` has passed :func:`checked_url`, so its host is the one both transports connect to."""
    if _flag(extra, "unsafe_send_token_to_any_host"):
        return
    if token_host_allowed(base_url):
        return
    parts = urlsplit(base_url)
    host = (parts.hostname or "").rstrip(".").lower()
    raise ValueError(
        f"Connection {conn_id!r}: with auth_type 'entra_id' the base URL ({field}) must be an https:// URL of an "
        f"Azure resource ({', '.join('*' + s for s in AZURE_TOKEN_HOST_SUFFIXES[:3])}), since the Entra ID token is "
        f"sent there; got {parts.scheme}://{host}. Fix the host, e.g. {AZURE_EXAMPLE_URL}, or, only for a gateway "
        "or test server you trust with the token, set extra field 'unsafe_send_token_to_any_host' to true"
    )


def _flag(extra: Mapping[str, Any], name: str) -> bool:
    """A yes/no extra field: only an explicit true (JSON true, "true", 1) counts."""
    return extra.get(name) in (True, "true", "True", "1", 1)


def _extra(conn: Any, conn_id: str) -> tuple[dict[str, Any], frozenset[str]]:
    """The extra as a dict, with the official provider's ``openai_client_kwargs`` merged in, and the names taken
    from those (so a message can name the field a value really came from)."""
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
    taken = set()
    for name in ("organization", "project", "base_url", "timeout", "max_retries"):
        if merged.get(name) in (None, "") and kwargs and kwargs.get(name) not in (None, ""):
            merged[name] = kwargs[name]
            taken.add(name)
    return merged, frozenset(taken)


def _host(conn: Any, extra: Mapping[str, Any], from_client_kwargs: frozenset[str]) -> tuple[str, str]:
    """The base URL as given, and the field it came from: the host, else extra ``base_url`` (ours or the
    official provider's); ``("", "host")`` when none is set."""
    host = _text(conn.host)
    if host or not _text(extra.get("base_url")):
        return host, "host"
    field = "extra.openai_client_kwargs.base_url" if "base_url" in from_client_kwargs else "extra.base_url"
    return _text(extra.get("base_url")), field


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


def _base_url(host: str, port: Any, schema: str, conn_id: str, field: str) -> str:
    host = host.rstrip("/")
    if not host:
        return DEFAULT_BASE_URL
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
    return checked_url(url, conn_id, f"the base URL ({field})", DEFAULT_BASE_URL)


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
