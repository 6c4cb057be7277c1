"""JSON for the export: msgspec's speed with the standard library's results, value for value and byte for byte.

An export decodes every result line and encodes every row, which the standard ``json`` module does at a few
times msgspec's cost. The two differ at the edges: msgspec refuses a few lines ``json`` reads (``NaN``, a
byte-order mark, lone surrogates), writes ``NaN`` as ``null``, and writes a float below 1e-4 or from 1e16 up
in its own form (``json`` writes ``1e-05`` and ``1e+16``). So :func:`decode` falls back to ``json`` for the
lines msgspec refuses, and :func:`encode` to ``json`` for the values it would write differently: what a
reader of the export sees does not depend on which library did the work.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import msgspec


class NonFinite(float):
    """``NaN`` or an infinity, read by the ``json`` fallback: msgspec would write it as ``null``, so the value
    that holds one is encoded by ``json``."""


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is left to json")


def _float(text: str) -> float:
    value = float(text)
    return value if math.isfinite(value) else NonFinite(value)


_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder(enc_hook=_refuse).encode
_encode_sorted = msgspec.json.Encoder(enc_hook=_refuse, order="sorted").encode

#: Where msgspec writes an exponent (``json`` writes every exponent with two digits at least, and a sign).
_EXPONENT = re.compile(rb"e[-+0-9]")
#: What precedes a number's exponent: its mantissa, after the ``:``, ``,``, ``[`` or ``-`` a number follows in
#: compact JSON (inside a string the same bytes only cost a needless fallback, never a miss).
_MANTISSA = re.compile(rb"[:,\[-][0-9]+(?:\.[0-9]+)?\Z")


def decode(line: bytes) -> Any:
    """``json.loads(line)``: the same value, or the same error (from ``json``)."""
    try:
        return _decode(line)
    except msgspec.DecodeError:
        return json.loads(line, parse_float=_float, parse_constant=_float)


def encode(value: Any) -> bytes:
    """``json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")``, byte for byte (a ``NaN``
    or infinity not read by :func:`decode` is written ``null``, as JSON has no such number)."""
    try:
        text = _encode(value)
    except (TypeError, ValueError):  # NonFinite, a lone surrogate, a type msgspec does not know
        return _json_bytes(value)
    return _json_bytes(value) if _writes_a_float_differently(text) else text


def _writes_a_float_differently(text: bytes) -> bool:
    """Whether msgspec's ``text`` holds a float ``json`` writes otherwise: below 1e-4, where ``json`` writes an
    exponent and msgspec often fixed point (``0.00003``), or any exponent (``1e-7``, ``1e16``)."""
    if b"0.0000" in text:
        return True
    for found in _EXPONENT.finditer(text):
        end = found.start()
        if _MANTISSA.search(text, max(0, end - 32), end):  # a mantissa is at most 17 digits, a dot and a sign
            return True
    return False


def canonical(value: Any) -> bytes:
    """``value`` with every object's keys sorted, as compact UTF-8 JSON: the same bytes for the same value
    whichever way its keys were written (the form depends on the value only, not on how it was read)."""
    try:
        return _encode_sorted(value)
    except (TypeError, ValueError):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
