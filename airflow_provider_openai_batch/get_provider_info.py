"""Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``).

Kept import-free: Airflow calls this for every process that discovers providers, and a malformed or slow
answer here breaks provider discovery for every installed provider.
"""

from __future__ import annotations

from typing import Any

_PKG = "airflow_provider_openai_batch"


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-openai-batch",
        "name": "OpenAI Batch",
        "description": "Run OpenAI Batch API jobs from Airflow: create, wait on (deferrable), cancel, read results.",
        "versions": ["0.1.0"],
        "integrations": [
            {
                "integration-name": "OpenAI Batch",
                "external-doc-url": "https://platform.openai.com/docs/guides/batch",
                "tags": ["software"],
            }
        ],
        "hooks": [{"integration-name": "OpenAI Batch", "python-modules": [f"{_PKG}.hooks.batch"]}],
        "operators": [
            {
                "integration-name": "OpenAI Batch",
                "python-modules": [f"{_PKG}.operators.batch", f"{_PKG}.operators.results"],
            }
        ],
        "sensors": [{"integration-name": "OpenAI Batch", "python-modules": [f"{_PKG}.sensors.batch"]}],
        "triggers": [{"integration-name": "OpenAI Batch", "python-modules": [f"{_PKG}.triggers.batch"]}],
        "extra-links": [f"{_PKG}.links.OpenAIBatchLink"],
        "connection-types": [
            {
                "connection-type": "openai_batch",
                "hook-class-name": f"{_PKG}.hooks.batch.OpenAIBatchHook",
                "hook-name": "OpenAI Batch",
                "ui-field-behaviour": {
                    "hidden-fields": ["login", "schema", "port", "extra"],
                    "relabeling": {"host": "Base URL", "password": "API key"},
                    "placeholders": {
                        "host": "https://api.openai.com/v1",
                        "password": "sk-...",
                    },
                },
                "conn-fields": {
                    "organization": {
                        "label": "Organization ID",
                        "schema": {"type": ["string", "null"]},
                        "description": "Sent as the OpenAI-Organization header (optional).",
                    },
                    "project": {
                        "label": "Project ID",
                        "schema": {"type": ["string", "null"]},
                        "description": "Sent as the OpenAI-Project header (optional).",
                    },
                    "timeout": {
                        "label": "Request timeout (seconds)",
                        "schema": {"type": ["number", "null"], "default": 60, "exclusiveMinimum": 0},
                        "description": "Connect and read timeout of each HTTP request.",
                    },
                    "max_retries": {
                        "label": "Max retries",
                        "schema": {"type": ["integer", "null"], "default": 5, "minimum": 0},
                        "description": "Retries of transient failures (429, 5xx, connection errors).",
                    },
                },
            }
        ],
    }
