"""The emulator as an ASGI app: the gateway in front, the routes behind it, state in ``app.state.store``.

Where each concern lives: :mod:`.gateway` (request id, auth, latency, faults), :mod:`.faults` (which fault
and what it looks like), :mod:`.routes` (files, batches, admin, the batch's page), :mod:`.contract` (what
the real API accepts), :mod:`.store` (state and the batch lifecycle), :mod:`.results` (result lines),
:mod:`.errors` (the API's error shape).
"""

from __future__ import annotations

from fastapi import FastAPI

from openai_batch_emulator.config import EmulatorConfig
from openai_batch_emulator.errors import install_handlers
from openai_batch_emulator.faults import FaultInjector
from openai_batch_emulator.gateway import Gateway
from openai_batch_emulator.routes import admin, batches, files, other, page
from openai_batch_emulator.store import Store


def create_app(config: EmulatorConfig | None = None, data_dir: str | None = None, seed: int | None = None) -> FastAPI:
    """Build the emulator app. ``app.state.store`` holds the state, ``app.state.store.config`` the settings.

    :param config: Initial settings (default: :class:`EmulatorConfig`'s defaults).
    :param data_dir: Persist state here, so a restart loses nothing.
    :param seed: Seed of the fault draw; overrides ``config.seed`` when given.
    """
    config = config or EmulatorConfig()
    if seed is not None:
        config.seed = seed
    store = Store(config, data_dir)
    faults = FaultInjector(config)
    # The real API answers a trailing slash with 404 like any unknown URL, not with a redirect.
    app = FastAPI(
        title="OpenAI Batch API emulator", docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False
    )
    app.state.store = store
    app.state.faults = faults
    for module in (files, batches, admin, page, other):  # other: last, for whatever no route above takes
        app.include_router(module.router)
    install_handlers(app)
    app.add_middleware(Gateway, store=store, faults=faults)
    return app
