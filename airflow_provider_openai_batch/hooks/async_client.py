"""The async transport for the trigger: the same :mod:`~airflow_provider_openai_batch.api` calls, sent with
aiohttp so nothing blocks the triggerer's event loop.

One ``aiohttp.ClientSession`` per event loop is shared by every trigger in it (a triggerer runs thousands);
credentials travel per request, so triggers of different connections share the pool safely.
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

_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = weakref.WeakKeyDictionary()


def shared_session() -> aiohttp.ClientSession:
    """The running loop's session, created on first use."""
    loop = asyncio.get_running_loop()
    session = _sessions.get(loop)
    if session is None or session.closed:
        # limit: enough parallel polls for thousands of triggers without opening a socket per trigger.
        connector = aiohttp.TCPConnector(limit=100, ttl_dns_cache=300)
        session = aiohttp.ClientSession(connector=connector, headers={"User-Agent": "airflow-provider-openai-batch"})
        _sessions[loop] = session
    return session


async def close_shared_session() -> None:
    """Close the running loop's session (e.g. at the end of a script); triggers never need to."""
    session = _sessions.pop(asyncio.get_running_loop(), None)
    if session is not None:
        await session.close()


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
    deferred tasks in a triggerer reuse a bounded pool of connections.

    :param settings: Connection settings (key, base URL, headers, timeout, retries).
    """

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings

    @classmethod
    async def from_connection(cls, conn_id: str) -> AsyncBatchClient:
        """Read the Airflow connection without blocking the loop (``BaseHook.aget_connection``)."""
        from airflow.sdk import BaseHook

        return cls(settings_from_connection(await BaseHook.aget_connection(conn_id)))

    async def retrieve_batch(self, batch_id: str) -> Batch:
        """Get a batch by id (see :meth:`OpenAIBatchHook.retrieve_batch`)."""
        return await self.request(api.retrieve_batch(batch_id))

    async def cancel_batch(self, batch_id: str) -> Batch:
        """Ask the API to cancel a batch (see :meth:`OpenAIBatchHook.cancel_batch`)."""
        return await self.request(api.cancel_batch(batch_id))

    async def request(self, call: api.ApiCall[T]) -> T:
        """Send a call with the shared retry policy; retries sleep with ``asyncio.sleep``, never blocking."""
        retrying = tenacity.AsyncRetrying(**policy_for(call, self.settings.max_retries))
        return await retrying(self._send, call)

    async def _send(self, call: api.ApiCall[T]) -> T:
        settings = self.settings
        timeout = aiohttp.ClientTimeout(total=None, connect=settings.timeout, sock_read=settings.timeout)
        kwargs: dict[str, Any] = {"params": call.params, "headers": settings.headers(), "timeout": timeout}
        if call.json is not None:
            kwargs["json"] = call.json
        proxy = env_proxy(settings.base_url)
        if proxy:
            kwargs["proxy"] = proxy
        try:
            async with shared_session().request(call.method, call.url(settings.base_url), **kwargs) as response:
                body = await response.read()
                return call.parse(response.status, response.headers, body)
        except asyncio.TimeoutError:
            raise APITimeoutError(
                f"{call.method} {call.path}: no answer from {settings.base_url} within {settings.timeout:g}s"
            ) from None
        except aiohttp.ClientConnectorError as err:
            raise APIConnectionError(
                f"{call.method} {call.path}: could not connect to {settings.base_url} ({type(err).__name__})",
                maybe_processed=False,
            ) from None
        except aiohttp.ClientError as err:
            raise APIConnectionError(
                f"{call.method} {call.path}: connection to {settings.base_url} broke before an answer arrived "
                f"({type(err).__name__})"
            ) from None
