"""Pointing an Airflow connection at the OpenAI Batch API emulator (the ``openai-batch-emulator`` package), for
tests and demos. Its pytest fixture is in :mod:`airflow_provider_openai_batch.pytest_plugin`."""

from __future__ import annotations

import json
from typing import Any


def connection_json(emulator: Any, extra: dict[str, Any] | None = None, *, api_version: str | None = None) -> str:
    """The value for an ``AIRFLOW_CONN_<CONN_ID>`` variable that points a connection at ``emulator`` (an
    ``openai_batch_emulator.testing.EmulatorHandle``); for its azure flavor an ``api_type: azure`` connection to
    ``.../openai/v1`` (or, with ``api_version``, to the classic paths).

    :param extra: The connection's extra fields, e.g. ``{"max_retries": 0, "timeout": 2}``.
    :param api_version: Azure only: use the classic ``/openai/...?api-version=`` paths with this version.
    """
    fields = dict(extra or {})
    host = emulator.base_url
    if emulator.flavor == "azure":
        fields.setdefault("api_type", "azure")
        if api_version is not None:
            fields["api_version"] = api_version
            host = emulator.root + "/openai"
    conn = {"conn_type": "openai_batch", "host": host, "password": emulator.api_key, "extra": fields}
    return json.dumps(conn)
