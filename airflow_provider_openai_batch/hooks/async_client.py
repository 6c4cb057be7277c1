"""The async transport for the trigger: the same :mod:`~airflow_provider_openai_batch.api` calls, sent with
aiohttp so nothing blocks the triggerer's event loop.

One ``aiohttp.ClientSession`` per event loop is shared by every trigger in it (a triggerer runs thousands);
credentials travel per request, so triggers of different connections share the pool safely. The session is
reference-counted: each user (a trigger's wait, its ``on_kill``, one :meth:`AsyncBatchClient.request`) holds
a :class:`SessionLease`, and the last lease released closes it, so a run never ends with aiohttp's
``Unclosed client session`` / ``Unclosed connector`` warnings, while thousands of triggers still share it.

Connection look-ups are shared too (:func:`connection_settings`): triggers that start together (a restarted
triggerer starts all of its triggers at once) wait on one look-up per connection id instead of each reading
the connection before its first poll.
"""

from __future__ import annotations

import asyncio
import functools
import urllib.parse
import urllib.request
import weakref
from typing import Any, TypeVar

import aiohttp
import tenacity

from airflow_provider_openai_batch import api
from airflow_provider_openai_batch.connection import ClientSettings, settings_from_connection
from airflow_provider_openai_batch.exceptions import APIConnectionError, APITimeoutError
from airflow_provider_openai_batch.models import ApiModel, Batch
from airflow_provider_openai_batch.retries import policy_for

T = TypeVar("T", bound=ApiModel)

#: How long a connection look-up is reused by other triggers of the same event loop. Long enough to cover
#: a triggerer's start-up burst; short enough that a fixed connection (a rotated key) is seen by the next
#: trigger within seconds. Failed look-ups are never reused.
CONNECTION_TTL = 10.0


class _LoopSession:
    """The shared session of one event loop and how many leases hold it."""

    __slots__ = ("session", "users")

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None
        self.users = 0


_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopSession] = weakref.WeakKeyDictionary()
#: Per loop and connection id: (expiry, the look-up in flight or its result). A finished look-up is kept as
#: its result only: a task would hold its loop, and a weak key whose value holds it is never let go.
_settings: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[str, tuple[float, asyncio.Task[ClientSettings] | ClientSettings]]
] = weakref.WeakKeyDictionary()


def shared_session() -> aiohttp.ClientSession:
    """The running loop's session, created on first use (closed when the last :class:`SessionLease` goes)."""
    loop = asyncio.get_running_loop()
    entry = _sessions.get(loop)
    if entry is None:
        entry = _sessions[loop] = _LoopSession()
    if entry.session is None or entry.session.closed:
        # limit: enough parallel polls for thousands of triggers without opening a socket per trigger.
        connector = aiohttp.TCPConnector(limit=100, ttl_dns_cache=300)
        entry.session = aiohttp.ClientSession(
            connector=connector, headers={"User-Agent": "airflow-provider-openai-batch"}
        )
    return entry.session


class SessionLease:
    """One user's hold on the running loop's shared session; the last one released closes the session.

    Taking a lease costs a counter increment (the session itself is only opened by the first request), so a
    trigger takes one for its whole wait: the session, and its open connections, then outlive the pauses
    between polls. :meth:`release` may be called any number of times; only the first counts.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        entry = _sessions.get(self._loop)
        if entry is None:
            entry = _sessions[self._loop] = _LoopSession()
        entry.users += 1
        self.released = False

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        entry = _sessions.get(self._loop)
        if entry is None:  # closed meanwhile by close_shared_session()
            return
        entry.users -= 1
        if entry.users > 0:
            return
        del _sessions[self._loop]  # before awaiting: a new user meanwhile opens a fresh session
        await _close(entry.session)


async def _close(session: aiohttp.ClientSession | None) -> None:
    if session is None or session.closed:
        return
    try:
        await session.close()
    except asyncio.CancelledError:
        # The connector's sockets are closed before close() first waits; only the wait for them to finish
        # closing was cut short. Mark the session closed too, or it warns "Unclosed client session".
        session.detach()
        raise


async def close_shared_session() -> None:
    """Close the running loop's session now, whatever leases remain (e.g. at the end of a script)."""
    entry = _sessions.pop(asyncio.get_running_loop(), None)
    if entry is not None:
        await _close(entry.session)


async def connection_settings(conn_id: str) -> ClientSettings:
    """:class:`ClientSettings` of an Airflow connection, read without blocking the loop and shared.

    Concurrent callers in one event loop wait on the same look-up (``BaseHook.aget_connection`` plus
    parsing costs about 0.7 ms of loop time; 1,000 triggers starting together stalled the loop 0.4-0.65 s),
    and its result is reused for :data:`CONNECTION_TTL` seconds. A failed look-up is handed to the callers
    already waiting for it and then forgotten, so the next caller reads the connection again.

    :raises ValueError: for a connection that cannot be used (see :func:`settings_from_connection`).
    :raises airflow.exceptions.AirflowNotFoundException: for an unknown connection id.
    """
    loop = asyncio.get_running_loop()
    cache = _settings.get(loop)
    if cache is None:
        cache = _settings[loop] = {}
    entry = cache.get(conn_id)
    if entry is None or entry[0] <= loop.time():
        task = loop.create_task(_read_settings(conn_id))
        entry = cache[conn_id] = (loop.time() + CONNECTION_TTL, task)
        task.add_done_callback(functools.partial(_settle, cache, conn_id, entry))
    found = entry[1]
    if isinstance(found, ClientSettings):
        return found
    # shield: a caller cancelled while waiting (its trigger was killed) must not cancel the others' look-up.
    return await asyncio.shield(found)


async def _read_settings(conn_id: str) -> ClientSettings:
    from airflow.sdk import BaseHook

    conn = await BaseHook.aget_connection(conn_id)
    settings = settings_from_connection(conn)
    if settings.api_key and settings.api_key != conn.password:
        # Airflow masks the password as stored ("sk-...\n"); the key we send is the cleaned one, as the hook does.
        from airflow.sdk.log import amask_secret

        await amask_secret(settings.api_key)
    return settings


def _settle(
    cache: dict[str, tuple[float, asyncio.Task[ClientSettings] | ClientSettings]],
    conn_id: str,
    entry: tuple[float, asyncio.Task[ClientSettings]],
    task: asyncio.Task[ClientSettings],
) -> None:
    """Keep a successful look-up as its result until it expires; forget a failed one at once."""
    if cache.get(conn_id) is not entry:  # replaced meanwhile
        return
    if task.cancelled() or task.exception() is not None:  # exception() also marks it as retrieved
        del cache[conn_id]
    else:
        cache[conn_id] = (entry[0], task.result())


def shown_url(base_url: str) -> str:
    """The base URL as error messages show it: without any ``user:password@`` part."""
    try:
        parts = urllib.parse.urlsplit(base_url)
        netloc = parts.netloc.rpartition("@")[2]
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "(an unparseable base URL)"


class RequestNotSentError(APIConnectionError):
    """The request could not even be built from the settings (an invalid URL, or a header value HTTP cannot
    carry): nothing was sent, and sending it again would fail the same way, so it is never retried."""

    def __init__(self, message: str) -> None:
        super().__init__(message, maybe_processed=False)


@functools.lru_cache(maxsize=64)
def env_proxy(base_url: str) -> str | None:
    """The proxy ``requests`` would use for ``base_url`` (``HTTPS_PROXY``/``HTTP_PROXY`` unless ``NO_PROXY``
    covers the host), looked up once per base URL. aiohttp's ``trust_env`` would redo that look-up, and read
    ``~/.netrc``, on every request: at 1,000 waiting triggers that doubled the event loop's p99 lag."""
    parts = urllib.parse.urlsplit(base_url)
    proxies = urllib.request.getproxies_environment()
    if urllib.request.proxy_bypass(parts.netloc):  # NO_PROXY, as requests reads it
        return None
    return proxies.get(parts.scheme) or None


class AsyncBatchClient:
    """The calls a trigger needs, over aiohttp, with the validation, parsing, error mapping and retry policy
    of :mod:`airflow_provider_openai_batch.api` that the sync hook uses too: only the transport differs.

    All clients of one event loop share one HTTP session (see :func:`shared_session`), so thousands of
    deferred tasks in a triggerer reuse a bounded pool of connections. Each :meth:`request` holds a
    :class:`SessionLease` while it runs, so a client used on its own leaves no open session behind.

    Every failure to get an answer is an :class:`APIConnectionError` (or :class:`APITimeoutError`) whose
    message names the call and the base URL, and never the library's own message, which may repeat a header.

    :param settings: Connection settings (key, base URL, headers, timeout, retries).
    """

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings

    @classmethod
    async def from_connection(cls, conn_id: str) -> AsyncBatchClient:
        """Read the Airflow connection without blocking the loop, shared with concurrent callers (see
        :func:`connection_settings`)."""
        return cls(await connection_settings(conn_id))

    async def retrieve_batch(self, batch_id: str) -> Batch:
        """Get a batch by id (see :meth:`OpenAIBatchHook.retrieve_batch`)."""
        return await self.request(api.retrieve_batch(batch_id))

    async def cancel_batch(self, batch_id: str) -> Batch:
        """Ask the API to cancel a batch (see :meth:`OpenAIBatchHook.cancel_batch`)."""
        return await self.request(api.cancel_batch(batch_id))

    async def request(self, call: api.ApiCall[T]) -> T:
        """Send a call with the shared retry policy; retries sleep with ``asyncio.sleep``, never blocking."""
        policy = policy_for(call, self.settings.max_retries)
        # A request that could not be built fails the same way every time: never worth a retry.
        policy["retry"] = tenacity.retry_if_not_exception_type(RequestNotSentError) & policy["retry"]
        lease = SessionLease()
        try:
            return await tenacity.AsyncRetrying(**policy)(self._send, call)
        finally:
            await lease.release()

    async def _send(self, call: api.ApiCall[T]) -> T:
        settings = self.settings
        sent = False
        sent_headers = settings.headers()
        if settings.entra is not None:  # a fresh Entra ID token, refreshed before it expires (no I/O if cached)
            from airflow_provider_openai_batch.azure_auth import aprovider_for

            sent_headers.update(await (await aprovider_for(settings.entra)).aheaders())
        try:
            timeout = aiohttp.ClientTimeout(total=None, connect=settings.timeout, sock_read=settings.timeout)
            params = call.query(settings.api_version)
            # allow_redirects=False: the API never redirects, and aiohttp would send Azure's api-key along to
            # another host (it drops only Authorization); a 3xx becomes an APIError in call.parse.
            kwargs: dict[str, Any] = {
                "params": params,
                "headers": sent_headers,
                "timeout": timeout,
                "allow_redirects": False,
            }
            if call.json is not None:
                kwargs["json"] = call.json
            proxy = env_proxy(settings.base_url)
            if proxy:
                kwargs["proxy"] = proxy
            async with shared_session().request(call.method, call.url(settings.base_url), **kwargs) as response:
                sent = True
                status, headers, body = response.status, response.headers, await response.read()
        except Exception as err:
            failure = _transport_failure(err, f"{call.method} {call.path}", settings, sent)
        else:
            return call.parse(status, headers, body)
        # Raised here, outside the except block, so the library's exception is not even its __context__.
        raise failure


def _transport_failure(err: Exception, where: str, settings: ClientSettings, sent: bool) -> APIConnectionError:
    """The provider's error for a request that got no usable answer. The library's message is never
    repeated (some quote the header value they refused); its type name says enough to look it up."""
    url = shown_url(settings.base_url)
    kind = type(err).__name__
    if isinstance(err, asyncio.TimeoutError):
        return APITimeoutError(f"{where}: no answer from {url} within {settings.timeout:g}s")
    if isinstance(err, aiohttp.ClientConnectorError):
        return APIConnectionError(f"{where}: could not connect to {url} ({kind})", maybe_processed=False)
    if isinstance(err, (aiohttp.InvalidUrlRedirectClientError, aiohttp.NonHttpUrlRedirectClientError)):
        return APIConnectionError(f"{where}: {url} redirected to an unusable URL ({kind})")  # it was sent
    if isinstance(err, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError, ValueError, TypeError)):
        if sent:  # e.g. an answer aiohttp cannot decode: the request did reach the server
            return APIConnectionError(f"{where}: unreadable answer from {url} ({kind})")
        # InvalidURL and UnicodeError are ValueErrors too: the URL, a header or a parameter is unusable.
        return RequestNotSentError(
            f"{where}: the request to {url} could not be built from the connection's settings ({kind}: check "
            "the base URL and the header values); nothing was sent"
        )
    if isinstance(err, aiohttp.ClientError):
        return APIConnectionError(f"{where}: connection to {url} broke before an answer arrived ({kind})")
    # Anything else the transport raises: whether any of it was sent is unknown, so a POST is not repeated.
    return APIConnectionError(f"{where}: request to {url} failed ({kind})")
