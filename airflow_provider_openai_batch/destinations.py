"""Where a secret may be sent: the one check every URL that receives the API key, an Entra ID token or a client
secret passes, made with the URL parser of each HTTP client the provider sends through.

Imports nothing heavy at module level (urllib3 and yarl are imported by the check itself).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

#: The hosts an Entra ID token is sent to without extra ``unsafe_send_token_to_any_host``: Azure OpenAI,
#: Cognitive Services and Azure AI Foundry resources (public cloud, Azure Government, Azure China).
AZURE_TOKEN_HOST_SUFFIXES = (
    ".openai.azure.com",
    ".cognitiveservices.azure.com",
    ".services.ai.azure.com",
    ".openai.azure.us",
    ".cognitiveservices.azure.us",
    ".openai.azure.cn",
    ".cognitiveservices.azure.cn",
)
#: Microsoft's own Entra ID hosts (public and sovereign clouds): where a client secret may go in a connection
#: test (see :func:`check_test_destination`), and which azure-identity's instance discovery knows.
KNOWN_AUTHORITY_HOSTS = frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoftonline.us",
        "login.chinacloudapi.cn",
        "login.partner.microsoftonline.cn",
        "login.microsoftonline.de",
    }
)
#: ``host[:port]`` of a URL a secret is sent to: a name of letters, digits, ``-``, ``_`` and ``.``, or an IPv6
#: address in brackets. Stricter than RFC 3986, which also allows percent-encodings and ``!$&'()*+,;=`` in a
#: host name: no API host needs them, and each is one more place where URL parsers disagree on the host.
_NETLOC = re.compile(r"(?P<host>[A-Za-z0-9_.-]+|\[(?P<ipv6>[0-9A-Fa-f:.]+)\])(?::(?P<port>[0-9]{1,5}))?")
_HOST_RULE = (
    "labels of letters, digits, '-' and '_' joined by '.', or an IPv6 address in brackets, then an optional :port"
)


def checked_url(
    url: str, conn_id: str, what: str, example: str, *, schemes: tuple[str, ...] = ("http", "https")
) -> str:
    """``url`` without a trailing ``/``, once it is certain that every HTTP client of this provider connects to
    the host it names; refused otherwise. A secret is sent there: the API key, an Entra ID token, or (for extra
    ``authority``) a client secret.

    The host must be plain (see :data:`_NETLOC`), and it must be the host that ``requests`` (through
    ``urllib3.util.parse_url``) and aiohttp (through ``yarl.URL``) read from the same text. Parsers disagree on
    a backslash (``https://attacker.example\\.openai.azure.com`` is ``attacker.example`` to urllib3 and an Azure
    host to ``urllib.parse``), on non-ASCII dots (yarl reads the ideographic full stop U+3002 as ``.``, urllib3
    refuses it) and on ``user@`` parts, so a check made with one parser proves nothing about another's host.

    :param what: The field as messages name it, e.g. ``the base URL (host)`` or ``extra field 'authority'``.
    :param example: A correct value, shown with the fix.
    :param schemes: The schemes allowed.
    :raises ValueError: naming ``what`` and the fix, never repeating the URL (it may hold a secret).
    """

    def refuse(problem: str) -> ValueError:
        return ValueError(f"Connection {conn_id!r}: {what} {problem}")

    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise refuse("contains spaces or control characters")
    if not url.isascii():
        raise refuse(
            "contains characters outside ASCII, which HTTP clients read differently: write the host in its ASCII "
            "form (xn--...) and percent-encode the path"
        )
    if "\\" in url:
        raise refuse(
            "contains a backslash, which some HTTP clients read as '/' and others as part of the host: use '/'"
        )
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        raise refuse(f"is not a valid URL; use e.g. {example}") from None
    if parts.username is not None or parts.password is not None:
        raise refuse(
            "carries credentials (user:password@host); remove them from the URL and put the secret in the "
            "connection's password field"
        )
    scheme = parts.scheme.lower()
    if scheme not in schemes or not parts.hostname:
        raise refuse(f"must be an {' or '.join(s + '://' for s in schemes)} URL with a host, e.g. {example}")
    if parts.query or parts.fragment:
        raise refuse("must not have a ?query or #fragment")
    if not _plain_netloc(parts.netloc):
        raise refuse(f"has a host a URL parser may read otherwise: use only {_HOST_RULE}, e.g. {example}")
    cleaned = urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
    if not _transports_agree(cleaned, parts.hostname, port):
        raise refuse(f"is read differently by the HTTP clients (requests and aiohttp): fix the host, e.g. {example}")
    return cleaned


def _plain_netloc(netloc: str) -> bool:
    """Whether ``netloc`` is ``host[:port]`` as :data:`_NETLOC` allows, with no empty label in a name (``a..b``)
    and a valid address between brackets."""
    import ipaddress

    found = _NETLOC.fullmatch(netloc)
    if found is None:
        return False
    if found["ipv6"] is None:
        return all(found["host"].rstrip(".").split("."))
    try:
        ipaddress.IPv6Address(found["ipv6"])
    except ValueError:
        return False
    return True


def _transports_agree(url: str, host: str, port: int | None) -> bool:
    """Whether ``requests`` (urllib3's parser) and aiohttp (yarl's) both connect to ``host:port`` for ``url``:
    the host is checked with the parser of each transport, not only with ``urllib.parse``."""
    from urllib3.util import parse_url
    from yarl import URL

    try:
        sync, async_ = parse_url(url), URL(url)
    except ValueError:  # urllib3's LocationParseError is a ValueError too
        return False
    want = host.lower()
    return (
        (sync.host or "").lower().strip("[]") == want
        and sync.port == port
        and sync.auth is None
        and (async_.raw_host or "").lower() == want  # what aiohttp connects to (.host decodes xn--)
        and async_.explicit_port == port
        and async_.user is None
        and async_.password is None
    )


def token_host_allowed(base_url: str) -> bool:
    """Whether an Entra ID token may go to ``base_url`` (already through :func:`checked_url`) without an explicit
    opt-in: over HTTPS to an Azure OpenAI, Cognitive Services or Azure AI Foundry host."""
    parts = urlsplit(base_url)
    host = (parts.hostname or "").rstrip(".").lower()
    return parts.scheme == "https" and any(
        host.endswith(suffix) and len(host) > len(suffix) for suffix in AZURE_TOKEN_HOST_SUFFIXES
    )
