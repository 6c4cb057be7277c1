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
        # @task.openai_batch in any DAG: airflow.sdk's task collection finds decorators by this name.
        "task-decorators": [
            {"name": "openai_batch", "class-name": f"{_PKG}.decorators.openai_batch.openai_batch_task"}
        ],
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
                    # The back end and, for Azure OpenAI, how to reach and authenticate (README: "Azure OpenAI
                    # and compatible APIs"). Parsed, and refused with the fix, in connection.py.
                    "api_type": {
                        "label": "API type",
                        "schema": {
                            "type": ["string", "null"],
                            "enum": ["openai", "azure", "openai_compatible", None],
                            "default": "openai",
                        },
                        "description": "openai (default), azure (Azure OpenAI: Base URL "
                        "https://{resource}.openai.azure.com/openai/v1) or openai_compatible (any other "
                        "OpenAI-compatible server at the Base URL).",
                    },
                    "api_version": {
                        "label": "Azure API version",
                        "schema": {"type": ["string", "null"]},
                        "description": "Azure only, for the classic .../openai/batches?api-version= paths (e.g. "
                        "2024-10-21, with Base URL https://{resource}.openai.azure.com). Leave empty for /openai/v1.",
                    },
                    "auth_type": {
                        "label": "Azure authentication",
                        "schema": {
                            "type": ["string", "null"],
                            "enum": ["api_key", "entra_id", None],
                            "default": "api_key",
                        },
                        "description": "api_key: the API key field is sent as the api-key header. entra_id: Microsoft "
                        "Entra ID tokens (needs the 'azure' extra): a service principal (Tenant ID, Client ID, its "
                        "client secret in the API key field), a managed identity, or the default credential chain.",
                    },
                    "tenant_id": {
                        "label": "Entra ID tenant ID",
                        "schema": {"type": ["string", "null"]},
                        "description": "Entra ID only: the service principal's directory (tenant).",
                    },
                    "client_id": {
                        "label": "Entra ID client ID",
                        "schema": {"type": ["string", "null"]},
                        "description": "Entra ID only: the service principal's application id, or a user-assigned "
                        "managed identity's client id.",
                    },
                    "managed_identity": {
                        "label": "Use the managed identity",
                        "schema": {"type": ["boolean", "null"], "default": False},
                        "description": "Entra ID only: get tokens from this machine's managed identity.",
                    },
                },
            }
        ],
    }
