"""What a finished batch's requests return: deterministic output and error lines per endpoint.

Nothing is computed for real: a line's answer derives from a digest of the request, so the same input gives
the same results on every run. A request fails on its own, as the API answers it, when its ``temperature`` is
outside 0..2 (one bad request among good ones: a file names one model) or when its ``model`` starts with
``fail`` (a model that does not exist: every request of the file, since they all name it). A request for a
structured output is answered with a document valid for its schema, or refused as the API refuses a schema
strict mode cannot take (:mod:`.json_schema`, which also says what a ``badjson`` model gets).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from openai_batch_emulator import json_schema
from openai_batch_emulator.contract import guide
from openai_batch_emulator.errors import rate_limited, server_error

#: The statuses of a transient failure of one request (see :func:`transient_line`).
TRANSIENT_STATUSES: tuple[int, ...] = (500, 429)


def digest(value: Any) -> str:
    """A stable digest of a request: the seed of its answer."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def expired_line(item: dict[str, Any]) -> dict[str, Any]:
    """The error line of a request the completion window ended before it ran (as the Batch guide says)."""
    return {
        "id": "batch_req_" + digest(item)[:24],
        "custom_id": item.get("custom_id"),
        "response": None,
        "error": {
            "code": "batch_expired",
            "message": "This request could not be executed before the completion window expired.",
        },
    }


def transient_line(item: dict[str, Any], status: int, attempt: int) -> dict[str, Any]:
    """The error line of a request that failed transiently (``status`` 500 or 429): repeating it may succeed.

    As the real API reports a request that failed on its own: ``response`` carries the status and the
    error body, ``error`` is null. For a 500::

        {"id": "batch_req_...", "custom_id": "...", "error": null,
         "response": {"status_code": 500, "request_id": "req_...",
                      "body": {"error": {"message": "The server had an error while processing your request.
                                          Sorry about that!", "type": "server_error", "param": null,
                                         "code": null}}}}

    and for a 429 the body is ``{"error": {"message": "Rate limit reached for requests. ...",
    "type": "requests", "param": null, "code": "rate_limit_exceeded"}}``. The ids differ per ``attempt``.
    """
    seed = digest({"item": item, "attempt": attempt, "status": status})
    failure = rate_limited() if status == 429 else server_error(status)
    return {
        "id": "batch_req_" + seed[24:48],
        "custom_id": item.get("custom_id"),
        "response": {"status_code": status, "request_id": "req_" + seed[:24], "body": failure.body},
        "error": None,
    }


def result_line(endpoint: str, item: dict[str, Any]) -> tuple[dict[str, Any], bool, tuple[int, int]]:
    """A deterministic output line for one request; one the API would refuse (see the module) fails."""
    raw = item.get("body")
    body: dict[str, Any] = raw if isinstance(raw, dict) else {}
    model = str(body.get("model", "gpt-4o-mini"))
    seed = digest(item)
    request_id = "req_" + seed[:24]
    line_id = "batch_req_" + seed[24:48]
    error = _refusal(endpoint, model, body)
    if error is not None:
        return (
            {
                "id": line_id,
                "custom_id": item.get("custom_id"),
                "response": {"status_code": 400, "request_id": request_id, "body": {"error": error}},
                "error": None,
            },
            True,
            (0, 0),
        )
    response, tokens = _fake_body(endpoint, model, body, seed)
    return (
        {
            "id": line_id,
            "custom_id": item.get("custom_id"),
            "response": {"status_code": 200, "request_id": request_id, "body": response},
            "error": None,
        },
        False,
        tokens,
    )


def _refusal(endpoint: str, model: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """The error the API answers a request with on its own, if it does (see the module)."""
    temperature = body.get("temperature")
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and not 0 <= temperature <= 2:
        above = temperature > 2
        return {
            "message": f"Invalid 'temperature': decimal {'above maximum' if above else 'below minimum'} value. "
            f"Expected a value {'<= 2' if above else '>= 0'}, but got {temperature} instead.",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "decimal_above_max_value" if above else "decimal_below_min_value",
        }
    if model.startswith("fail"):
        return {
            "message": f"The model '{model}' does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    asked = json_schema.requested(endpoint, body)
    if asked is not None and asked[3]:
        param, name, schema, _ = asked
        problem = json_schema.strict_problem(name, schema)
        if problem is not None:
            return {"message": problem, "type": "invalid_request_error", "param": param, "code": None}
    return None


def _fake_body(endpoint: str, model: str, body: dict[str, Any], seed: str) -> tuple[dict[str, Any], tuple[int, int]]:
    if not endpoint.startswith("/v1/"):  # Azure's lines name the same endpoints without /v1
        endpoint = "/v1" + endpoint
    created = 1_700_000_000
    prompt = json.dumps(body.get("messages") or body.get("input") or body.get("prompt") or "")
    prompt_tokens = max(1, len(prompt) // 4)
    if endpoint == "/v1/embeddings":
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": [int(seed[j : j + 2], 16) / 255 for j in range(0, 16, 2)],
            }
            for i in range(max(1, guide.embedding_inputs(body)))  # a token array is one input
        ]
        return (
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
            },
            (prompt_tokens, 0),
        )
    asked = json_schema.requested(endpoint, body)
    if asked is not None:  # structured output: a document for the schema (or, for a badjson model, not)
        answer = json_schema.answer_text(asked[2], seed, model)
    else:
        answer = f"Emulated answer {seed[:8]} to: {_last_user_text(body)[:80]}"
    completion_tokens = max(1, len(answer) // 4)
    if endpoint == "/v1/chat/completions":
        return (
            {
                "id": "chatcmpl-" + seed[:20],
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
                "system_fingerprint": None,
            },
            (prompt_tokens, completion_tokens),
        )
    if endpoint == "/v1/responses":
        return (
            {
                "id": "resp_" + seed[:20],
                "object": "response",
                "created_at": created,
                "status": "completed",
                "model": model,
                "output": [
                    {
                        "type": "message",
                        "id": "msg_" + seed[:16],
                        "status": "completed",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": answer, "annotations": []}],
                    }
                ],
                "usage": {
                    "input_tokens": prompt_tokens,
                    "output_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
            (prompt_tokens, completion_tokens),
        )
    if endpoint == "/v1/moderations":
        return (
            {
                "id": "modr-" + seed[:20],
                "model": model,
                "results": [{"flagged": False, "categories": {}, "category_scores": {}}],
            },
            (prompt_tokens, 0),
        )
    if endpoint == "/v1/completions":
        return (
            {
                "id": "cmpl-" + seed[:20],
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "text": answer, "logprobs": None, "finish_reason": "stop"}],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
            (prompt_tokens, completion_tokens),
        )
    return (
        {
            "id": "obj_" + seed[:20],
            "object": "emulated",
            "created": created,
            "model": model,
            "data": [{"url": f"https://example.invalid/{seed[:16]}"}],
        },
        (prompt_tokens, completion_tokens),
    )


def _last_user_text(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                return content if isinstance(content, str) else json.dumps(content)
    value = body.get("input") or body.get("prompt") or ""
    return value if isinstance(value, str) else json.dumps(value)
