"""Fault injection: which ``/v1`` request gets which fault, and what each fault looks like on the wire."""

from __future__ import annotations

import asyncio
import random

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from openai_batch_emulator.config import EmulatorConfig
from openai_batch_emulator.errors import AZURE_RATE_LIMITED, AzureFailure, rate_limited, server_error

_BAD_GATEWAY = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"


class FaultInjector:
    """Decides each request's fault: the config's ``fault_script`` first, one entry per request, then a
    draw at ``fault_rate`` from ``fault_kinds`` with a generator seeded by ``seed``.

    :param config: The live settings (the script is read from, and used up in, ``config.fault_script``).
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)

    def reseed(self) -> None:
        """Start the draw over from ``config.seed``: the same seed gives the same faults again."""
        self._rng = random.Random(self.config.seed)

    def draw(self) -> str | None:
        """The fault for the request at hand, or ``None``."""
        cfg = self.config
        if cfg.fault_script:
            # A new list rather than pop(): the caller's list (e.g. a defaults dict) is never changed.
            kind, cfg.fault_script = cfg.fault_script[0], cfg.fault_script[1:]
            return kind or None
        if cfg.fault_kinds and self._rng.random() < cfg.fault_rate:
            return self._rng.choice(cfg.fault_kinds)
        return None


async def send_fault(kind: str, config: EmulatorConfig, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer with fault ``kind`` (any but ``slow``, which the gateway handles by holding the request)."""
    if kind == "drop":
        transport = scope.get("state", {}).get("transport")
        if transport is not None:
            transport.abort()  # no answer at all, as a broken proxy would
            # Let the server see the connection lost first, so it does not report an app that never answered.
            await asyncio.sleep(0)
            return
        response = Response(b"", status_code=500)  # no socket to drop (an in-process client)
    elif kind == "429":
        refusal = AzureFailure(429, AZURE_RATE_LIMITED) if config.flavor == "azure" else rate_limited()
        response = refusal.response({"retry-after": f"{config.retry_after:g}"})
    elif kind == "502":
        response = Response(_BAD_GATEWAY, 502, media_type="text/html")  # a proxy's page, not the API's JSON
    else:
        response = server_error(int(kind)).response()
    await response(scope, receive, send)
