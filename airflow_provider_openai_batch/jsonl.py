"""The Batch API's rules for a JSONL input file, as a pure function: ``CreateBatchOperator``'s pre-flight
check, which refuses to spend money on a file the API would reject. (The emulator judges files by its own
reading of the contract, so a drift between this and the real API shows in the tests.)
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from airflow_provider_openai_batch.backends import BackendRules, rules_for


@dataclass(frozen=True)
class Problem:
    """One reason an input file is unusable.

    :param line: 1-based line number, or ``None`` for a problem with the whole file.
    :param code: Machine-readable code (mirrors the API's codes where known).
    :param message: What is wrong and how to fix it.
    :param param: The offending field, if any.
    """

    line: int | None
    code: str
    message: str
    param: str | None = None

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line is not None else self.message


def validate_batch_input_lines(
    lines: Iterable[bytes | str],
    endpoint: str,
    *,
    max_problems: int = 100,
    rules: BackendRules | None = None,
    seen_ids: dict[str, int] | None = None,
) -> list[Problem]:
    """Check every line of a batch input file; return the problems found (empty when the file is fine).

    :param lines: The file's lines (bytes or str), blank lines included so numbering matches the file.
    :param endpoint: The batch's endpoint; every line's ``url`` must equal it.
    :param max_problems: Stop collecting after this many, so a hopeless file costs little.
    :param rules: The back end's limits (default: OpenAI's). With ``one_model_per_file`` (Azure, where the
        ``model`` is a deployment) every line must name the model of the first.
    :param seen_ids: A dict to fill with each ``custom_id`` and its line number (the splitter keeps ids unique
        across shards from it, without parsing every line a second time).
    """
    rules = rules or rules_for()
    max_lines = rules.max_requests_per_file
    problems: list[Problem] = []
    seen: dict[str, int] = {} if seen_ids is None else seen_ids
    first_model: tuple[object, int] | None = None
    count = 0
    size = 0
    embedding_inputs = 0
    for number, raw in enumerate(lines, start=1):
        if len(problems) >= max_problems:
            break
        size += len(raw)
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError as err:
            problems.append(
                Problem(
                    number,
                    "invalid_encoding",
                    f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1}); save the file as UTF-8",
                )
            )
            continue
        if not text.strip():
            continue
        count += 1
        if count > max_lines:
            problems.append(
                Problem(None, "too_many_requests", f"the file has more than {max_lines} requests; split it")
            )
            break
        try:
            item = _DECODER.decode(text)
        except json.JSONDecodeError as err:
            problems.append(Problem(number, "invalid_json_line", f"not valid JSON ({err.msg})"))
            continue
        except ValueError as err:  # NaN or Infinity: Python reads them, JSON (and the API) does not
            problems.append(Problem(number, "invalid_json_line", f"not valid JSON ({err})"))
            continue
        if not isinstance(item, dict):
            problems.append(Problem(number, "invalid_request", "each line must be a JSON object"))
            continue
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            problems.append(
                Problem(number, "missing_required_parameter", "custom_id must be a non-empty string", "custom_id")
            )
        elif custom_id in seen:
            problems.append(
                Problem(
                    number,
                    "duplicate_custom_id",
                    f"custom_id {custom_id!r} is also used on line {seen[custom_id]}; custom_ids must be unique",
                    "custom_id",
                )
            )
        else:
            seen[custom_id] = number
        if item.get("method") != "POST":
            problems.append(
                Problem(number, "invalid_method", f"method must be 'POST', got {item.get('method')!r}", "method")
            )
        if item.get("url") != endpoint:
            problems.append(Problem(number, "mismatched_url", _url_message(item.get("url"), endpoint, rules), "url"))
        body = item.get("body")
        if not isinstance(body, dict):
            problems.append(Problem(number, "invalid_body", "body must be a JSON object", "body"))
        elif rules.one_model_per_file:
            model = body.get("model")
            if first_model is None:
                first_model = (model, number)
            elif model != first_model[0]:
                problems.append(
                    Problem(
                        number,
                        "mismatched_model",
                        f"model {model!r} differs from {first_model[0]!r} on line {first_model[1]}: on "
                        f"{rules.api_type} a batch file may use one model (deployment) only; split the file "
                        "by model",
                        "body.model",
                    )
                )
        elif endpoint.endswith("/embeddings"):
            embedding_inputs += count_embedding_inputs(body.get("input"))
    max_inputs = rules.max_embedding_inputs
    if max_inputs is not None and embedding_inputs > max_inputs:
        problems.append(
            Problem(
                None,
                "too_many_embedding_inputs",
                f"the file has {embedding_inputs} embedding inputs in all; at most {max_inputs} are "
                "allowed per batch: split it",
            )
        )
    problems.extend(too_large(size, rules))
    if count == 0 and not problems:
        problems.append(Problem(None, "empty_file", "the file contains no requests"))
    return problems


def _url_message(url: object, endpoint: str, rules: BackendRules) -> str:
    """Why a line's url is wrong, saying so when it is only the other back end's shape (``/v1`` or not)."""
    message = f"url {url!r} does not match the batch endpoint {endpoint!r}"
    if isinstance(url, str) and url.removeprefix("/v1") == endpoint.removeprefix("/v1") and url != endpoint:
        shape = "without" if not rules.line_url_prefix else "with"
        message += f" ({rules.api_type} lines' url is written {shape} /v1: use {endpoint!r})"
    return message


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON value; write null or a number")


#: One decoder for every line: ``json.loads`` with ``parse_constant`` builds a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def count_embedding_inputs(value: object) -> int:
    """How many inputs one embeddings request carries, as the API counts them: a string or one token array
    (a list of ints) is one input; a list of strings or of token arrays is one input per element."""
    if isinstance(value, list) and value and not all(isinstance(item, int) for item in value):
        return len(value)
    return 1


def too_large(size: int, rules: BackendRules | None = None) -> list[Problem]:
    """The problem of a file over the back end's size limit, if it is."""
    limit = (rules or rules_for()).max_bytes_per_file
    if size <= limit:
        return []
    megabytes = limit / (1024 * 1024)
    return [
        Problem(None, "file_too_large", f"the file is {size} bytes; at most {limit} ({megabytes:g} MB) are allowed")
    ]
