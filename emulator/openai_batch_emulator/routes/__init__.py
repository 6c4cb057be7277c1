"""The emulator's routes, one module per concern: ``files`` and ``batches`` (the emulated ``/v1`` API),
``admin`` (``/_emulator``, for tests and demos), ``page`` (a batch's page for a browser) and ``other`` (any
other path under ``/v1``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import Request

    from openai_batch_emulator.store import Store


def store_of(request: Request) -> Store:
    """The app's store (``create_app`` puts it on ``app.state``), typed for the routes."""
    store: Store = request.app.state.store
    return store
