"""Judging a batch input file as the API does while a batch is ``validating``: the problems found, each
naming its line, become the failed batch's ``errors``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from openai_batch_emulator.contract import guide
from openai_batch_emulator.contract.judge import line_validator

#: A hopeless file reports this many problems, not one per line.
MAX_PROBLEMS = 100

# Which code a line problem gets, by the field it is about.
_FIELD_CODES = {"method": "invalid_method", "url": "mismatched_url", "body": "invalid_body"}


@dataclass(frozen=True)
class Problem:
    """One reason the batch fails validation.

    :param line: 1-based line of the input file, or ``None`` for the whole file.
    :param code: Machine-readable code.
    :param message: What is wrong.
    :param param: The field at fault, if any.
    """

    line: int | None
    code: str
    message: str
    param: str | None = None

    def as_error(self) -> dict[str, Any]:
        """The entry of a batch's ``errors.data``."""
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


@dataclass
class InputReport:
    """The verdict on an input file.

    :param problems: Empty when the file is fine.
    :param requests: Requests (non-blank lines) in the file.
    """

    problems: list[Problem] = field(default_factory=list)
    requests: int = 0


def judge_input_file(data: bytes, endpoint: str, flavor: str = "openai") -> InputReport:
    """Apply the input-file rules: UTF-8 JSONL, one request object per line under the line schema, unique
    ``custom_id``, ``url`` equal to ``endpoint``, every line naming the same ``model``, at most 50,000
    requests and 200 MB, and for embeddings at most 50,000 inputs in all. For ``flavor`` ``azure``: up to
    100,000 requests, and the one model is the deployment."""
    if len(data) > guide.MAX_INPUT_BYTES:
        message = f"The file is {len(data)} bytes; at most {guide.MAX_INPUT_BYTES} (200 MB) are allowed."
        return InputReport([Problem(None, "file_too_large", message)])
    lines = data.split(b"\n")
    count = sum(1 for raw in lines if raw.strip())
    most = guide.AZURE_MAX_INPUT_REQUESTS if flavor == "azure" else guide.MAX_INPUT_REQUESTS
    if count > most:
        message = f"The file has {count} requests; at most {most} are allowed per batch."
        return InputReport([Problem(None, "too_many_requests", message)], count)
    if count == 0:
        return InputReport([Problem(None, "empty_file", "The input file contains no requests.")])
    problems: list[Problem] = []
    line_rules = line_validator(endpoint)
    seen: dict[str, int] = {}
    first_model: tuple[Any, int] | None = None
    inputs = 0
    for number, raw in enumerate(lines, start=1):
        if len(problems) >= MAX_PROBLEMS:
            break
        if not raw.strip():
            continue
        item, problem = _decode(raw, number)
        if problem:
            problems.append(problem)
            continue
        for error in line_rules.iter_errors(item):
            problems.append(_line_problem(number, error))
        custom_id = item.get("custom_id")
        if isinstance(custom_id, str):
            if custom_id in seen:
                problems.append(
                    Problem(
                        number,
                        "duplicate_custom_id",
                        f"The custom_id {custom_id!r} is also used on line {seen[custom_id]}; custom_ids must be "
                        "unique within a batch.",
                        "custom_id",
                    )
                )
            else:
                seen[custom_id] = number
        if isinstance(item.get("body"), dict):
            model = item["body"].get("model")
            if first_model is None:
                first_model = (model, number)
            elif model != first_model[0]:
                single = "deployment" if flavor == "azure" else "model"
                problems.append(
                    Problem(
                        number,
                        "model_mismatch",
                        f"Line {number}: model {model!r} differs from {first_model[0]!r} on line {first_model[1]}; "
                        f"a batch file must target a single {single}.",
                        "body.model",
                    )
                )
        if endpoint == guide.EMBEDDINGS and isinstance(item.get("body"), dict):
            inputs += guide.embedding_inputs(item["body"])
    if inputs > guide.MAX_EMBEDDING_INPUTS:
        problems.append(
            Problem(
                None,
                "too_many_embedding_inputs",
                f"The batch has {inputs} embedding inputs in all; at most {guide.MAX_EMBEDDING_INPUTS} are allowed.",
            )
        )
    return InputReport(problems[:MAX_PROBLEMS], count)


def parse_requests(data: bytes) -> list[dict[str, Any]]:
    """The request objects of a file, in order. Lines that are not one are skipped: this runs on files that
    passed :func:`judge_input_file`, and on any file an admin forces to an end."""
    requests = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if raw.strip():
            item, problem = _decode(raw, number)
            if problem is None:
                requests.append(item)
    return requests


def _not_json(name: str) -> Any:
    # Python reads NaN and Infinity; JSON (RFC 8259) has no such values, so a strict parser refuses them.
    raise ValueError(f"{name} is not a JSON value")


def _decode(raw: bytes, number: int) -> tuple[dict[str, Any], Problem | None]:
    # Strictly: JSON text is UTF-8 (RFC 8259), and a replaced byte would change the request.
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        where = f"byte {err.object[err.start]:#04x} at offset {err.start}"
        return {}, Problem(
            number, "invalid_json_line", f"Line {number} is not valid UTF-8 ({where}); save it as UTF-8."
        )
    try:
        item = json.loads(text, parse_constant=_not_json)
    except ValueError as err:
        return {}, Problem(number, "invalid_json_line", f"Line {number} is not valid JSON ({err}).")
    if not isinstance(item, dict):
        return {}, Problem(number, "invalid_request", f"Line {number} must be a JSON object (a request).")
    return item, None


def _line_problem(number: int, error: Any) -> Problem:
    if error.validator == "required":
        missing = next(k for k in error.validator_value if k not in error.instance)
        return Problem(number, "missing_required_parameter", f"Line {number} has no '{missing}'.", missing)
    name = str(error.absolute_path[0]) if error.absolute_path else None
    code = _FIELD_CODES.get(name or "", "invalid_type" if error.validator == "type" else "invalid_value")
    if name == "url" and error.validator == "const":
        endpoint = error.validator_value
        message = f"Line {number}: url {error.instance!r} does not match the batch's endpoint {endpoint!r}."
    elif name == "method":
        message = f"Line {number}: method must be 'POST', got {error.instance!r}."
    elif name == "body":
        message = f"Line {number}: body must be a JSON object (the request's parameters)."
    else:
        message = f"Line {number}: '{name}' {error.message}."
    return Problem(number, code, message, name)
