"""JSON for the export: msgspec's speed with the standard library's results, value for value and byte for byte.

An export decodes every result line and encodes every row, which the standard ``json`` module does at a few
times msgspec's cost. The two differ at the edges: msgspec refuses a few lines ``json`` reads (``NaN``, a
byte-order mark, lone surrogates), and writes a float below 1e-4 or from 1e16 up in its own form (``json``
writes ``1e-05`` and ``1e+16``). So :func:`decode` falls back to ``json`` for the lines msgspec refuses and
reads such floats as :class:`JsonFloat`, which :func:`encode` writes as ``json`` does: what a reader of the
export sees does not depend on which library did the work. A float made by other code is written in
msgspec's form, the same number (read it with :func:`decode`, or make it a :class:`JsonFloat`, to keep
``json``'s bytes).
"""

from __future__ import annotations

import json
from typing import Any

import msgspec


class JsonFloat(float):
    """A float that ``json`` writes in another form than msgspec (an exponent, ``NaN``, ``Infinity``);
    :func:`encode` writes it as ``json`` does."""


def _float(text: str) -> float:
    value = float(text)
    # json (float.__repr__) writes 0 and 1e-4 <= |x| < 1e16 in fixed point, exactly as msgspec does.
    return value if value == 0 or 1e-4 <= abs(value) < 1e16 else JsonFloat(value)


_NON_FINITE = {"nan": b"NaN", "inf": b"Infinity", "-inf": b"-Infinity"}


def _as_json(value: Any) -> msgspec.Raw:
    if isinstance(value, JsonFloat):
        text = float.__repr__(value)
        return msgspec.Raw(_NON_FINITE.get(text) or text.encode("ascii"))
    raise TypeError(f"{type(value).__name__} is left to json")


_decode = msgspec.json.Decoder(float_hook=_float).decode
_encode = msgspec.json.Encoder(enc_hook=_as_json).encode
_encode_sorted = msgspec.json.Encoder(enc_hook=_as_json, order="sorted").encode


def decoder(type: Any) -> Any:
    """A msgspec decode function for ``type`` that reads floats as :func:`decode` does."""
    return msgspec.json.Decoder(type, float_hook=_float).decode


def decode(line: bytes) -> Any:
    """``json.loads(line)``: the same value, or the same error (from ``json``), with the floats ``json`` writes
    in another form than msgspec as :class:`JsonFloat`."""
    try:
        return _decode(line)
    except msgspec.DecodeError:
        return json.loads(line, parse_float=_float, parse_constant=_float)


def encode(value: Any) -> bytes:
    """``json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")``, byte for byte for any
    value :func:`decode` made."""
    try:
        return _encode(value)
    except (TypeError, ValueError):  # a lone surrogate, a type msgspec does not know: json says what it makes of it
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def canonical(value: Any) -> bytes:
    """``value`` with every object's keys sorted, as compact UTF-8 JSON: the same bytes for the same value
    whichever way its keys were written (the form depends on the value only, not on how it was read)."""
    try:
        return _encode_sorted(value)
    except (TypeError, ValueError):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
