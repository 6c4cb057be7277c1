"""One table of what differs between the batch back ends this provider speaks to.

Every limit and shape rule that depends on the back end lives here, and only here: the pre-flight check
(:mod:`~airflow_provider_openai_batch.jsonl`), the splitting of large inputs, the operators and the links all
read a :class:`BackendRules`. A user whose back end changed a limit overrides it with :func:`rules_for`'s
keyword arguments rather than waiting for a release.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

OPENAI = "openai"
AZURE = "azure"
OPENAI_COMPATIBLE = "openai_compatible"
API_TYPES: tuple[str, ...] = (OPENAI, AZURE, OPENAI_COMPATIBLE)

_MB = 1024 * 1024


@dataclass(frozen=True)
class BackendRules:
    """The rules of one back end.

    :param api_type: ``openai``, ``azure`` or ``openai_compatible``.
    :param max_requests_per_file: Most request lines one batch input file may hold.
    :param max_bytes_per_file: Largest batch input file, in bytes.
    :param max_embedding_inputs: Most embedding inputs over all lines of one file (``None``: no such limit).
    :param endpoints: Endpoints a batch may target; ``None`` accepts any path that starts with ``/``.
    :param completion_windows: Accepted ``completion_window`` values.
    :param one_model_per_file: Whether every line of a file must name the same ``model`` (OpenAI: the model;
        Azure: the deployment).
    :param link: Where the task's extra link points: ``openai_platform`` (OpenAI's dashboard) or ``airflow``
        (the provider's own batches page in the Airflow UI).
    :param line_url_prefix: What a line's ``url`` (and the batch's ``endpoint``) starts with: ``/v1`` on
        OpenAI (``/v1/chat/completions``), nothing on Azure (``/chat/completions``).
    """

    api_type: str
    max_requests_per_file: int
    max_bytes_per_file: int
    max_embedding_inputs: int | None
    endpoints: tuple[str, ...] | None
    completion_windows: tuple[str, ...]
    one_model_per_file: bool
    link: str
    line_url_prefix: str = "/v1"

    def accepts_endpoint(self, endpoint: object) -> bool:
        if not isinstance(endpoint, str):
            return False
        if self.endpoints is None:
            return endpoint.startswith("/") and ".." not in endpoint and endpoint.isprintable()
        return endpoint in self.endpoints

    def endpoint(self, endpoint: object) -> str:
        """``endpoint`` in this back end's shape, so one DAG runs on every back end: on Azure
        ``/v1/chat/completions`` becomes ``/chat/completions``, on OpenAI ``/chat/completions`` becomes
        ``/v1/chat/completions``. Any other path is returned as given when the back end accepts it.

        :raises ValueError: naming the accepted endpoints, for one this back end does not serve.
        """
        if isinstance(endpoint, str) and endpoint.startswith("/") and not self.accepts_endpoint(endpoint):
            bare = endpoint[3:] if endpoint.startswith("/v1/") else endpoint
            shaped = self.line_url_prefix + bare
            if self.accepts_endpoint(shaped):
                return shaped
        if not self.accepts_endpoint(endpoint):
            accepted = ", ".join(self.endpoints) if self.endpoints else "a path starting with '/'"
            raise ValueError(f"endpoint must be one of {accepted} ({self.api_type}); got {endpoint!r}")
        return str(endpoint)

    def completion_window(self, window: object) -> str:
        """``window`` when this back end offers it.

        :raises ValueError: naming the accepted windows.
        """
        if window not in self.completion_windows:
            accepted = ", ".join(repr(w) for w in self.completion_windows)
            raise ValueError(f"completion_window must be one of {accepted} ({self.api_type}); got {window!r}")
        return str(window)


_OPENAI_ENDPOINTS: tuple[str, ...] = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)

RULES: dict[str, BackendRules] = {
    OPENAI: BackendRules(
        api_type=OPENAI,
        max_requests_per_file=50_000,
        max_bytes_per_file=200 * _MB,
        max_embedding_inputs=50_000,
        endpoints=_OPENAI_ENDPOINTS,
        completion_windows=("24h",),
        one_model_per_file=True,
        link="openai_platform",
    ),
    # Azure OpenAI global batch: a line's url has no /v1, its model is a deployment (one per file), and a
    # file may hold up to 100,000 requests.
    AZURE: BackendRules(
        api_type=AZURE,
        max_requests_per_file=100_000,
        max_bytes_per_file=200 * _MB,
        max_embedding_inputs=None,
        endpoints=("/chat/completions", "/embeddings", "/responses"),
        completion_windows=("24h",),
        one_model_per_file=True,
        link="airflow",
        line_url_prefix="",
    ),
    # Other OpenAI-compatible servers: OpenAI's limits as a safe default, any endpoint path, and any mix of
    # models (a server that wants one model per file says so with backend_rules).
    OPENAI_COMPATIBLE: BackendRules(
        api_type=OPENAI_COMPATIBLE,
        max_requests_per_file=50_000,
        max_bytes_per_file=200 * _MB,
        max_embedding_inputs=None,
        endpoints=None,
        completion_windows=("24h",),
        one_model_per_file=False,
        link="airflow",
    ),
}


def rules_for(api_type: str = OPENAI, **overrides: Any) -> BackendRules:
    """The rules of ``api_type``, with any field replaced by a keyword argument of the same name.

    :raises ValueError: for an unknown ``api_type`` or override, naming the accepted values.
    """
    if api_type not in RULES:
        raise ValueError(f"api_type must be one of {', '.join(API_TYPES)}; got {api_type!r}")
    fields = {field.name for field in dataclasses.fields(BackendRules)} - {"api_type"}
    fields.discard("line_url_prefix")  # the back end's URL shape, not a limit: it follows api_type
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown back-end rule(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    return dataclasses.replace(RULES[api_type], **overrides) if overrides else RULES[api_type]
