"""What ``@task.openai_batch``'s function returns, written as a batch input file one line at a time.

The function returns (or yields) the input in any of these shapes:

- a list, tuple, generator or any iterator of items, consumed lazily and written as it is consumed, so a
  million prompts never sit in memory; each item is
    - a string: a prompt;
    - a dict with ``prompt``: a prompt with its own ``custom_id`` and/or ``variables`` (``str.format`` fields
      of the prompt: ``{"prompt": "Translate to {lang}: {text}", "variables": {"lang": "French", ...}}``);
    - a dict with ``body``: a full request line (``custom_id``, ``method``, ``url``, ``body``);
    - any other dict: a request body (``{"messages": [...]}``, or a whole body), with an optional
      ``custom_id`` beside its fields;
- a path, a URI or an ``ObjectStoragePath`` of a JSONL file, whose lines are read as such dicts.

Every body then gets, where it has none of its own: ``model``; the ``system_prompt`` (a first system message
for chat completions, ``instructions`` for responses); each of ``request_params``; and, with an
``output_type``, the strict JSON-schema format (:mod:`airflow_provider_openai_batch.structured`). A missing
``custom_id`` is ``request-<n>``, ``n`` counting items from 1. The lines then go through the same checks and
split as any input of :class:`~airflow_provider_openai_batch.operators.batch.CreateBatchOperator`.

Import-light: loaded when the task runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from airflow_provider_openai_batch.jobs.inputs import encode_line, request_line

if TYPE_CHECKING:
    from airflow_provider_openai_batch.structured import OutputSchema

#: The keys of a prompt item.
PROMPT_KEYS = frozenset({"prompt", "custom_id", "variables"})
#: The body field a prompt goes to, per endpoint (chat completions build ``messages`` instead).
PROMPT_FIELD = {
    "/v1/responses": "input",
    "/v1/embeddings": "input",
    "/v1/completions": "prompt",
    "/v1/moderations": "input",
}


class RequestBuilder:
    """Turns items into full input lines for ``endpoint``.

    :param endpoint: The batch endpoint, in the back end's shape (Azure writes no ``/v1``).
    :param model: The model of every body that names none.
    :param system_prompt: The instructions of every chat or responses body that has none.
    :param request_params: Fields added to every body that lacks them (``temperature``, ``max_tokens``...).
    :param output: The structured output every chat or responses body asks for.
    """

    def __init__(
        self,
        endpoint: str,
        model: str | None = None,
        system_prompt: str | None = None,
        request_params: Mapping[str, Any] | None = None,
        output: OutputSchema | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.kind = endpoint if endpoint.startswith("/v1/") else "/v1" + endpoint
        self.model = model
        self.system_prompt = system_prompt
        self.request_params = dict(request_params or {})
        self.output_fields = output.request_fields(endpoint) if output is not None else {}

    def line(self, item: Any, number: int, where: str) -> dict[str, Any]:
        """The input line of ``item``, the ``number``-th (from 1); ``where`` names it in errors."""
        if isinstance(item, str):
            item = {"prompt": item}
        if not isinstance(item, Mapping):
            raise ValueError(
                f"{where} is a {type(item).__name__}: give a prompt (a string) or a dict (a prompt with "
                "'prompt', a request body, or a full request line with 'body')"
            )
        if "prompt" in item and "body" not in item:
            line = self._prompt_line(item, number, where)
        else:
            line = request_line(item, self.endpoint, number)
        body = line.get("body")
        if not isinstance(body, Mapping):
            raise ValueError(f"{where}: 'body' must be a dict (the request body); got {type(body).__name__}")
        line["body"] = self._complete(dict(body), where)
        return line

    def _prompt_line(self, item: Mapping[str, Any], number: int, where: str) -> dict[str, Any]:
        unknown = sorted(set(item) - PROMPT_KEYS)
        if unknown:
            raise ValueError(
                f"{where} has {unknown} beside 'prompt': a prompt item takes only 'prompt', 'custom_id' and "
                "'variables'; for other body fields give the body itself, or use request_params"
            )
        prompt = item["prompt"]
        if not isinstance(prompt, str):
            raise ValueError(f"{where}: 'prompt' must be a string; got {type(prompt).__name__}")
        variables = item.get("variables")
        if variables is not None:
            if not isinstance(variables, Mapping):
                raise ValueError(f"{where}: 'variables' must be a dict of the prompt's {{fields}}")
            try:
                prompt = prompt.format_map(variables)
            except KeyError as err:
                raise ValueError(f"{where}: the prompt uses {{{err.args[0]}}}, which 'variables' lacks") from None
            except (ValueError, IndexError) as err:
                raise ValueError(
                    f"{where}: the prompt is not a valid format string ({err}); write a literal brace as {{{{ or }}}}"
                ) from None
        line = {"custom_id": item.get("custom_id", f"request-{number}"), "method": "POST", "url": self.endpoint}
        if self.kind == "/v1/chat/completions":
            line["body"] = {"messages": [{"role": "user", "content": prompt}]}
        elif self.kind in PROMPT_FIELD:
            line["body"] = {PROMPT_FIELD[self.kind]: prompt}
        else:
            raise ValueError(f"{where} is a prompt, but {self.endpoint} takes no prompt: return request bodies for it")
        return line

    def _complete(self, body: dict[str, Any], where: str) -> dict[str, Any]:
        if self.model is not None:
            body.setdefault("model", self.model)
        if self.system_prompt is not None:
            self._add_system_prompt(body)
        for key, value in self.request_params.items():
            body.setdefault(key, value)
        for key, value in self.output_fields.items():
            self._add_output(body, key, value, where)
        if "model" not in body and self.kind != "/v1/moderations":
            raise ValueError(f"{where} names no model: give @task.openai_batch(model=...) or a 'model' in its body")
        return body

    def _add_system_prompt(self, body: dict[str, Any]) -> None:
        if self.kind == "/v1/responses":
            body.setdefault("instructions", self.system_prompt)
            return
        messages = body.get("messages")
        if self.kind == "/v1/chat/completions" and isinstance(messages, list):
            first = messages[0] if messages and isinstance(messages[0], Mapping) else {}
            if first.get("role") not in ("system", "developer"):
                body["messages"] = [{"role": "system", "content": self.system_prompt}, *messages]

    @staticmethod
    def _add_output(body: dict[str, Any], key: str, value: dict[str, Any], where: str) -> None:
        """Ask for the structured output; a body that asks for another format of its own is refused (its rows
        would be judged against a schema it never asked for)."""
        if key == "text":  # responses: the format sits in "text", beside other text settings
            current = body.get("text")
            text = dict(current) if isinstance(current, Mapping) else {}
            if "format" in text and text["format"] != value["format"]:
                raise ValueError(f"{where} sets text.format and output_type is given: give one of them")
            body["text"] = {**text, **value}
            return
        if key in body and body[key] != value:
            raise ValueError(f"{where} sets {key} and output_type is given: give one of them")
        body[key] = value


def write_input(value: Any, path: str | os.PathLike[str], builder: RequestBuilder) -> int:
    """Write what the function returned (see the module docstring) to ``path`` as input lines; returns how
    many. Items are consumed one at a time: an iterator is never held whole.

    :raises ValueError: for a shape that is no input, or an item that is no request, naming it and the fix.
    """
    count = 0
    with open(path, "wb") as out:
        for number, (item, where) in enumerate(_items(value), start=1):
            out.write(encode_line(builder.line(item, number, where), where))
            count = number
    if count == 0:
        raise ValueError("the function returned no requests: return at least one prompt or request")
    return count


def is_file(value: Any) -> bool:
    """Whether the function returned a file (a path, a URI or an ``ObjectStoragePath``), not items."""
    return isinstance(value, (str, os.PathLike)) or (hasattr(value, "fs") and hasattr(value, "open"))


def _items(value: Any) -> Iterator[tuple[Any, str]]:
    if value is None:
        raise ValueError("the function returned None: return the prompts (or requests), or a JSONL file's path")
    if is_file(value):
        yield from _file_items(value)
        return
    if isinstance(value, (Mapping, bytes)) or not isinstance(value, Iterable):
        raise ValueError(
            f"the function returned a {type(value).__name__}: return a list (or generator) of prompts or "
            "requests, or the path of a JSONL file"
        )
    for index, item in enumerate(value):
        yield item, f"item {index} the function returned"


def _file_items(source: Any) -> Iterator[tuple[Any, str]]:
    from airflow_provider_openai_batch.locations import input_location

    location = input_location(source, "the file the function returned")
    with location.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            where = f"line {number} of {source}"
            try:
                yield json.loads(raw), where
            except ValueError as err:
                raise ValueError(f"{where} is not valid JSON ({err})") from None
