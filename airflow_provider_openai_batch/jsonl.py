"""The Batch API's rules for a JSONL input file: ``CreateBatchOperator``'s pre-flight check, which refuses to
spend money on a file the API would reject, naming every bad line. :class:`InputCheck` applies the rules as
the lines stream by, at about the speed of parsing them (``bench/preflight.py``); the functions below run it
on a list of lines or on a stream. (The emulator judges files by its own reading of the contract, so a drift
between this and the real API shows in the tests.)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import islice, repeat
from operator import attrgetter, eq
from typing import Annotated, Any, BinaryIO, Literal, cast

import msgspec

from airflow_provider_openai_batch.backends import AZURE, BackendRules, rules_for

#: Problems collected before a check stops: a hopeless file costs little.
MAX_PROBLEMS = 100


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
    max_problems: int = MAX_PROBLEMS,
    rules: BackendRules | None = None,
    seen_ids: dict[str, int] | None = None,
) -> list[Problem]:
    """Check every line of a batch input file; return the problems found (empty when the file is fine).

    :param lines: The file's lines (bytes or str), blank lines included so numbering matches the file.
    :param endpoint: The batch's endpoint; every line's ``url`` must equal it.
    :param max_problems: Stop collecting after this many, so a hopeless file costs little.
    :param rules: The back end's limits (default: OpenAI's). With ``one_model_per_file`` every line must name
        the model of the first.
    :param seen_ids: A dict to fill with each ``custom_id`` and its line number.
    """
    check = InputCheck(endpoint, rules, seen_ids=seen_ids, max_problems=max_problems)
    given = iter(lines)
    number = 0
    while chunk := list(islice(given, 1024)):
        check.size += sum(map(len, chunk))
        if not check.feed(chunk, number):
            break
        number += len(chunk)
    return check.finish()


def check_stream(
    stream: BinaryIO, endpoint: str, *, rules: BackendRules | None = None, digest: Any = None
) -> list[Problem]:
    """:func:`validate_batch_input_lines` on a binary stream (a file, or an object-storage file), read in large
    blocks rather than line by line; each block is added to ``digest`` (a ``hashlib`` object) when given."""
    check = InputCheck(endpoint, rules)
    number = 0
    for block in line_blocks(stream, digest, check.rules.max_bytes_per_file):
        if isinstance(block, int):  # a line longer than a whole file may be: the size rule names it
            number += 1
            check.size += block
            continue
        lines, spans = block
        check.size += sum(map(len, spans))
        if not check.feed(lines, number):
            break
        number += len(lines)
    return check.finish()


#: Bytes read at a time by :func:`line_blocks`.
BLOCK_SIZE = 1 << 20


def line_blocks(
    stream: Any, digest: Any = None, limit: int | None = None
) -> Iterator[tuple[list[bytes], list[Any]] | int]:
    """The lines of a binary stream (a file, or an object-storage file), read a large block at a time.

    Yields, per block, its lines without their newline character (blank ones included, so numbering holds;
    split at newline characters only, as iterating the file would) and the bytes they span, newlines
    included, as buffers to be written out as they are (no copy). Every byte read is added to ``digest`` (a
    ``hashlib`` object) when given. A line longer than ``limit`` bytes that is not complete within one block is
    never held whole: it comes alone, as its length (newline included); one complete within a block (only
    for a ``limit`` below the block size) comes as it is.
    """
    pieces: list[bytes] | None = []  # the line the last block left open; None once over the limit
    held = 0
    while True:
        data = stream.read(BLOCK_SIZE)
        if not data:
            break
        if digest is not None:
            digest.update(data)
        lines = data.split(b"\n")
        tail = lines.pop()  # the open line, b"" when the block ends with a newline
        view = memoryview(data)[: len(data) - len(tail)]
        spans: list[Any] = [view]
        if held and lines:  # the open line ends in this block
            first = len(lines[0])
            if pieces is None or (limit is not None and held + first > limit):
                del lines[0]
                spans = [view[first + 1 :]]
                yield held + first + 1
            else:
                spans = [*pieces, view]
                lines[0] = b"".join([*pieces, lines[0]])
            pieces, held = [], 0
        if lines:
            yield lines, spans
        if tail:
            held += len(tail)
            if pieces is not None:
                if limit is not None and held > limit:
                    pieces = None
                else:
                    pieces.append(tail)
    if held:
        yield held if pieces is None else ([b"".join(pieces)], pieces)


#: What the typed decoder raises for a line it refuses (``UnicodeError``: a str line with a lone surrogate).
_REFUSED = (msgspec.DecodeError, RecursionError, UnicodeError)
_CUSTOM_ID = attrgetter("custom_id")
_MODEL = attrgetter("body.model")
_INPUT = attrgetter("body.input")


class InputCheck:
    """The pre-flight rules of one batch input file, applied to its lines as they stream by.

    A line is first read by a typed msgspec decoder that accepts only a line every per-line rule passes (a
    JSON object in UTF-8 with a non-empty string ``custom_id``, ``method`` ``POST``, ``url`` the endpoint and
    an object ``body``), checking the rest of the line as JSON without building it: that is what lets the
    check run at about the speed of parsing. Any line that decoder refuses, or that repeats a ``custom_id``
    or changes the model, is judged again by the standard library's ``json``, which names exactly what is
    wrong; so the decoder can only make the check faster, never change its verdict or its messages.

    :param endpoint: The batch's endpoint; every line's ``url`` must equal it.
    :param rules: The back end's limits (default: OpenAI's).
    :param seen_ids: A dict to fill with each ``custom_id`` and its line number.
    :param where: How an earlier line is named in a message (default ``line N``), for a file that is a
        shard of a larger input.
    :param max_problems: Stop after this many problems.
    """

    __slots__ = (
        "_decode",
        "_embeddings",
        "_limit",
        "_model",
        "_model_line",
        "_one_model",
        "_where",
        "embedding_inputs",
        "endpoint",
        "max_problems",
        "problems",
        "requests",
        "rules",
        "seen",
        "size",
    )

    def __init__(
        self,
        endpoint: str,
        rules: BackendRules | None = None,
        *,
        seen_ids: dict[str, int] | None = None,
        where: Callable[[int], str] | None = None,
        max_problems: int = MAX_PROBLEMS,
    ) -> None:
        self.endpoint = endpoint
        self.rules = rules or rules_for()
        self.problems: list[Problem] = []
        self.seen: dict[str, int] = {} if seen_ids is None else seen_ids
        self.max_problems = max_problems
        #: Request (non-blank) lines so far.
        self.requests = 0
        #: Bytes of the file so far, counted by the caller (who knows where the newlines went).
        self.size = 0
        self.embedding_inputs = 0
        self._where = where or _line
        #: The first line's model, and that line (0: no line yet).
        self._model: object = None
        self._model_line = 0
        self._limit = self.rules.max_requests_per_file
        self._one_model = self.rules.one_model_per_file
        self._embeddings = endpoint.endswith("/embeddings")
        self._decode = _typed_decoder(endpoint, self._embeddings)

    def read(self, raw: bytes | str) -> Any:
        """The line as the typed decoder reads it (its ``body.input`` too, for ``/embeddings``), or ``None``
        when the decoder refuses it."""
        try:
            if not raw.isascii() and isinstance(raw, bytes):
                raw.decode("utf-8")  # the decoder checks UTF-8 only in the fields it reads
            return self._decode(raw)
        except _REFUSED:
            return None

    def read_all(self, lines: Sequence[bytes | str]) -> list[Any]:
        """:meth:`read` of each line. A block of good lines is read in one pass of the decoder, without a
        Python call per line; a block with any line the decoder refuses is read again line by line."""
        try:
            if not all(map(bytes.isascii, lines)):  # type: ignore[arg-type]
                b"\n".join(cast("Sequence[bytes]", lines)).decode("utf-8")  # no character spans a newline
            return list(map(self._decode, lines))
        except (*_REFUSED, TypeError):  # TypeError: str lines, read one by one
            return list(map(self.read, lines))

    def feed(self, lines: Sequence[bytes | str], number: int = 0, decoded: Iterable[Any] | None = None) -> bool:
        """Judge the next lines, numbered from ``number + 1``.

        :param decoded: What :meth:`read_all` gave for the lines, when the caller read them already.
        :returns: ``False`` once the check is over (more requests than allowed, or ``max_problems``): feed
            no more.
        """
        decoded = self.read_all(lines) if decoded is None else list(decoded)
        if self._take(decoded, number):  # the whole block, as nearly always
            return True
        for raw, line in zip(lines, decoded, strict=True):  # a line of it needs a closer look: one at a time
            judged = not self._take([line], number)
            if judged and (not self._judge(number + 1, raw) or len(self.problems) >= self.max_problems):
                return False
            number += 1
        return True

    def _take(self, decoded: list[Any], number: int) -> bool:
        """Take lines (numbered from ``number + 1``) that pass every rule, in a few passes over them without a
        Python step per line: every line read by the typed decoder, naming the file's model, with a new
        ``custom_id``, and room for them all. ``False``, and nothing taken, when any line needs a closer look."""
        count = len(decoded)
        if not count or self.requests + count > self._limit:
            return False
        try:
            ids = list(map(_CUSTOM_ID, decoded))
        except AttributeError:  # a None: a line the decoder refused
            return False
        model = self._model if self._model_line else _MODEL(decoded[0])
        if self._one_model and not all(map(eq, map(_MODEL, decoded), repeat(model))):
            return False
        # Each id with its line, unless it is there already: one look-up per id. The first use of an id comes
        # back for one that is not new, and then the lines are taken back.
        numbers = range(number + 1, number + count + 1)
        seen = self.seen
        firsts = list(map(seen.setdefault, ids, numbers))
        if not all(map(eq, firsts, numbers)):
            for custom_id, first, line in zip(ids, firsts, numbers, strict=True):
                if first == line:  # put there by these lines
                    del seen[custom_id]
            return False
        self.requests += count
        if not self._model_line:
            self._model, self._model_line = model, number + 1
        if self._embeddings:
            self.embedding_inputs += sum(map(count_embedding_inputs, map(_INPUT, decoded)))
        return True

    def finish(self) -> list[Problem]:
        """The problems of the lines so far and of the whole file."""
        problems = self.problems
        max_inputs = self.rules.max_embedding_inputs
        if max_inputs is not None and self.embedding_inputs > max_inputs:
            problems.append(
                Problem(
                    None,
                    "too_many_embedding_inputs",
                    f"the file has {self.embedding_inputs} embedding inputs in all; at most {max_inputs} are "
                    "allowed per batch: split it",
                )
            )
        problems.extend(too_large(self.size, self.rules))
        if self.requests == 0 and not problems:
            problems.append(Problem(None, "empty_file", "the file contains no requests"))
        return problems

    def _too_many(self) -> bool:
        limit = self.rules.max_requests_per_file
        self.problems.append(Problem(None, "too_many_requests", f"the file has more than {limit} requests; split it"))
        return False

    def _judge(self, number: int, raw: bytes | str) -> bool:
        """One line judged by ``json``, naming every problem it has."""
        problems = self.problems
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
            return True
        if not text.strip():
            return True
        self.requests += 1
        if self.requests > self._limit:
            return self._too_many()
        try:
            item = _DECODER.decode(text)
        except json.JSONDecodeError as err:
            problems.append(Problem(number, "invalid_json_line", f"not valid JSON ({err.msg})"))
            return True
        except ValueError as err:  # NaN or Infinity: Python reads them, JSON (and the API) does not
            problems.append(Problem(number, "invalid_json_line", f"not valid JSON ({err})"))
            return True
        if not isinstance(item, dict):
            problems.append(Problem(number, "invalid_request", "each line must be a JSON object"))
            return True
        seen = self.seen
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
                    f"custom_id {custom_id!r} is also used on {self._where(seen[custom_id])}; custom_ids must be "
                    "unique",
                    "custom_id",
                )
            )
        else:
            seen[custom_id] = number
        if item.get("method") != "POST":
            problems.append(
                Problem(number, "invalid_method", f"method must be 'POST', got {item.get('method')!r}", "method")
            )
        if item.get("url") != self.endpoint:
            problems.append(
                Problem(number, "mismatched_url", _url_message(item.get("url"), self.endpoint, self.rules), "url")
            )
        body = item.get("body")
        if not isinstance(body, dict):
            problems.append(Problem(number, "invalid_body", "body must be a JSON object", "body"))
            return True
        if self._one_model:
            api_type = self.rules.api_type
            model = body.get("model")
            if not self._model_line:
                self._model, self._model_line = model, number
            elif model != self._model:
                problems.append(
                    Problem(
                        number,
                        "mismatched_model",
                        f"model {model!r} differs from {self._model!r} on {self._where(self._model_line)}: on "
                        f"{api_type} a batch file may use {_ONE_MODEL.get(api_type, 'one model')} only; split the "
                        "file by model",
                        "body.model",
                    )
                )
        if self._embeddings:
            self.embedding_inputs += count_embedding_inputs(body.get("input"))
        return True


def _line(number: int) -> str:
    return f"line {number}"


#: What "one model" means on a back end whose model is something else by name.
_ONE_MODEL = {AZURE: "one model (deployment)"}


@cache
def _typed_decoder(endpoint: str, embeddings: bool) -> Callable[[bytes | str], Any]:
    """A decoder of the lines of one endpoint that accepts only a line every per-line rule passes. Unknown
    fields (the body's messages, anything else) are checked as JSON and skipped, never built."""
    body_fields: list[Any] = [("model", Any, None)]
    if embeddings:
        body_fields.append(("input", Any, None))
    body = msgspec.defstruct("Body", body_fields, gc=False)
    line = msgspec.defstruct(
        "Line",
        [
            ("custom_id", Annotated[str, msgspec.Meta(min_length=1)]),
            ("method", Literal["POST"]),
            ("url", Literal[endpoint]),  # type: ignore[valid-type]
            ("body", body),
        ],
        gc=False,
    )
    return msgspec.json.Decoder(line).decode


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
