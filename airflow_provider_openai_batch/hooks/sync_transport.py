"""Sending an :class:`~airflow_provider_openai_batch.api.ApiCall` over ``requests``: the sync hook's transport.

One keep-alive session per hook that never follows a redirect, and every exception the HTTP stack raises
wrapped in an :class:`~airflow_provider_openai_batch.exceptions.APIConnectionError` or
:class:`~airflow_provider_openai_batch.exceptions.APITimeoutError` that says whether the API may have acted on
the request (``maybe_processed``), and never quotes a header or URL the stack put in its own message. The
trigger's transport is :mod:`.async_client`; both send the same calls of :mod:`~airflow_provider_openai_batch.api`.
"""

from __future__ import annotations

from typing import Any

import requests

from airflow_provider_openai_batch import api
from airflow_provider_openai_batch.connection import ClientSettings
from airflow_provider_openai_batch.exceptions import APIConnectionError, APITimeoutError


def new_session(settings: ClientSettings) -> requests.Session:
    """A session carrying the connection's headers (the key among them) that never follows a redirect."""
    session = NoRedirectSession()
    session.headers.update(settings.headers())
    session.headers["User-Agent"] = "airflow-provider-openai-batch"
    return session


def send(
    session: requests.Session,
    call: api.ApiCall[Any],
    settings: ClientSettings,
    auth: dict[str, str],
    *,
    stream: bool,
    **kwargs: Any,
) -> requests.Response:
    """One HTTP exchange for ``call``; ``auth``: per-request headers (a fresh Entra ID token), if any."""
    url = call.url(settings.base_url)
    if auth:
        kwargs["headers"] = {**kwargs.get("headers", {}), **auth}
    try:
        return session.request(
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
        raise connection_error(call, settings.base_url, err) from None
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


class NoRedirectSession(requests.Session):
    """A session that sees no redirect target in any answer, so a 3xx comes back as it is (and becomes an
    :class:`APIError`). ``allow_redirects=False`` alone is not enough: requests still prepares the next
    request of a redirect for ``Response.next``, which rewinds a streamed upload body and fails on it."""

    def get_redirect_target(self, resp: requests.Response) -> None:
        return None


def connection_error(
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
