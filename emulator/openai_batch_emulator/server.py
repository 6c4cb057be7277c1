"""Serving the emulator with uvicorn: from the command line, in a thread (tests), or in a subprocess."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from openai_batch_emulator.app import create_app
from openai_batch_emulator.config import EmulatorConfig


class _TransportAwareProtocol(H11Protocol):
    """Exposes each connection's transport to the app (``scope["state"]["transport"]``), so the ``drop``
    fault can close the TCP connection without sending any answer, as a broken proxy would."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.app_state = {**self.app_state, "transport": transport}


def uvicorn_config(app: Any, host: str, port: int, log_level: str = "warning") -> uvicorn.Config:
    # Access lines (method, path, status; never headers) only when asked for with --log-level info or
    # lower: a quiet emulator is faster under load.
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=log_level.lower() in ("info", "debug", "trace"),
        http=_TransportAwareProtocol,
        lifespan="off",
        timeout_keep_alive=30,
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ThreadedEmulator:
    """The emulator in a background thread of this process (fast start, for tests).

    :param config: Initial settings.
    :param host: Interface to bind (loopback by default).
    :param port: Port, or ``None`` for a free one.
    :param data_dir: Persist state here.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        data_dir: str | None = None,
    ) -> None:
        self.app = create_app(config, data_dir=data_dir)
        self.host = host
        self.port = port or free_port(host)
        self._server = uvicorn.Server(uvicorn_config(self.app, self.host, self.port))
        self._thread = threading.Thread(target=self._server.run, name="openai-batch-emulator", daemon=True)

    @property
    def store(self) -> Any:
        return self.app.state.store

    def start(self) -> ThreadedEmulator:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the emulator did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
