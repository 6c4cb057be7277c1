"""``results.codec``: msgspec's speed, ``json``'s values and bytes."""

from __future__ import annotations

import json
import math
import random
import struct

import pytest

from airflow_provider_openai_batch.results.codec import JsonFloat, canonical, decode, encode


def json_bytes(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def floats() -> list[float]:
    """Every magnitude json writes with an exponent or in fixed point, the edges between them, and random bits."""
    rng = random.Random(11)
    found = [0.0, -0.0, 1e-4, -1e-4, 1e16, -1e16, math.nextafter(1e-4, 0), math.nextafter(1e16, 0), 5e-324]
    found += [float(f"{m}e{e}") for e in range(-325, 309) for m in (1, 1.5, 9.999999999999999, -2.5)]
    found += [rng.uniform(-1, 1) * 10 ** rng.randint(-8, 20) for _ in range(20_000)]
    bits = (struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0] for _ in range(20_000))
    return found + [f for f in bits if math.isfinite(f)]


def test_every_float_decodes_and_encodes_to_the_bytes_json_writes():
    values = floats()
    line = json_bytes({"values": values})
    decoded = decode(line)
    assert decoded == json.loads(line)
    assert encode(decoded) == line
    for value in decoded["values"]:  # one at a time too: a float written json's way hides no other
        for holder in ({"v": value}, [1, "x", [value]], {"a": "1e5, 0.00001", "b": value}):
            assert encode(holder) == json_bytes(holder), value


def test_a_float_made_elsewhere_is_the_same_number_and_json_s_bytes_once_marked():
    for value in (1.5e-05, -2.5e-07, 1e16, 1.2345678901234567e19, 0.5):
        assert json.loads(encode({"v": value})) == {"v": value}
        assert encode({"v": JsonFloat(value)}) == json_bytes({"v": value})


@pytest.mark.parametrize(
    "line",
    [
        b'{"a": NaN, "b": Infinity, "c": -Infinity}',  # json reads these; msgspec does not
        b'{"a": 1e400}',  # out of float range: json reads inf
        b'\xef\xbb\xbf{"a": 1}',  # a byte-order mark
        b'{"a": "\\ud83d\\ude00 \\u00e9 \\u2028 \\u0000"}',
        b'{"a": 123456789012345678901234567890, "b": [true, false, null], "a": 2}',  # a repeated key: the last
    ],
)
def test_lines_only_json_reads_decode_and_encode_as_json_does(line):
    assert decode(line) == json.loads(line) or math.isnan(decode(line)["a"])
    assert encode(decode(line)) == json_bytes(json.loads(line))


@pytest.mark.parametrize("line", [b"not json", b'{"a": 1,}', b'{"a": "\xff"}', b'{"a": "x\x01"}', b""])
def test_what_json_refuses_is_refused_with_its_error(line):
    with pytest.raises(ValueError) as theirs:
        json.loads(line)
    with pytest.raises(ValueError) as ours:
        decode(line)
    assert type(ours.value) is type(theirs.value)


def test_a_lone_surrogate_fails_to_encode_as_json_does():
    value = json.loads(b'{"a": "\\ud800"}')
    with pytest.raises(UnicodeEncodeError):
        json_bytes(value)
    with pytest.raises(UnicodeEncodeError):
        encode(value)


def test_canonical_ignores_key_order_and_how_the_value_was_read():
    plain = b'{"b": {"y": [1, 2.5e-07], "x": "\xc3\xa9"}, "a": 1}'
    reordered = b'{"a": 1, "b": {"x": "\\u00e9", "y": [1, 2.5e-7]}}'
    with_mark = b"\xef\xbb\xbf" + plain  # read by the json fallback
    assert canonical(decode(plain)) == canonical(decode(reordered)) == canonical(decode(with_mark))
    assert canonical(decode(plain)) != canonical(decode(plain.replace(b"2.5e-07", b"2.5e-06")))
    assert canonical(decode(b'{"a": 0.5, "b": 1}')) == b'{"a":0.5,"b":1}'
