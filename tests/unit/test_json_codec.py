"""The FHIR JSON codec keeps decimals exact and never quotes bad input."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gateway.fhir import json

ROUND_TRIP = [
    (b"1.50", Decimal("1.50"), "trailing-zero"),
    (b"0.000", Decimal("0.000"), "zeros"),
    (b"1e2", Decimal("1e2"), "exponent"),
    (b"1E-7", Decimal("1E-7"), "negative-exponent"),
    (b"-0.0", Decimal("-0.0"), "negative-zero"),
    (b"123456789012345678901234567890", 123456789012345678901234567890, "big-int"),
    (b"-123456789012345678901234567890", -123456789012345678901234567890, "big-negative-int"),
    (b"18446744073709551616", 2**64, "uint64-plus-one"),
    (
        b"3.14159265358979323846264338327950288",
        Decimal("3.14159265358979323846264338327950288"),
        "long-decimal",
    ),
    (b"0.1", Decimal("0.1"), "not-binary-float"),
]


@pytest.mark.parametrize(
    ("text", "value"), [r[:2] for r in ROUND_TRIP], ids=[r[2] for r in ROUND_TRIP]
)
def test_numbers_exact(text: bytes, value: object) -> None:
    decoded = json.decode(text)
    assert decoded == value
    assert type(decoded) is type(value)
    assert str(decoded) == str(value)  # precision kept, not only the numeric value
    again = json.decode(json.encode(decoded))
    assert str(again) == str(value)


@pytest.mark.parametrize("text", [b"1.50", b"-0.0", b"0.000", b"2.10", b"100"])
def test_plain_numbers_byte_identical(text: bytes) -> None:
    assert json.encode(json.decode(text)) == text


def test_nested_document_round_trip() -> None:
    raw = (
        '{"resourceType":"Observation","valueQuantity":{"value":1.50,"unit":"mg"},'
        '"component":[{"valueDecimal":-0.0},{"valueInteger":7}],'
        '"note":[{"text":"José 李 \\u2028 \\"q\\""}],"flag":true,"none":null}'
    ).encode()
    doc = json.decode(raw)
    assert doc["valueQuantity"]["value"] == Decimal("1.50")
    assert str(doc["valueQuantity"]["value"]) == "1.50"
    assert doc["component"][1]["valueInteger"] == 7
    assert type(doc["component"][1]["valueInteger"]) is int
    assert doc["note"][0]["text"] == 'José 李 \u2028 "q"'
    out = json.encode(doc)
    assert b'"value":1.50' in out
    assert b'"valueDecimal":-0.0' in out
    assert json.decode(out) == doc


def test_decode_accepts_str() -> None:
    assert json.decode('{"a": 1.0}') == {"a": Decimal("1.0")}


def test_unicode_encoded_as_utf8() -> None:
    assert json.encode({"n": "é"}) == '{"n":"é"}'.encode()


@pytest.mark.parametrize(
    "text",
    [
        b'{"ssn": "PHIMARKER123"',
        b'{"ssn": PHIMARKER123}',
        b"PHIMARKER123",
        b'{"a": 1,}',
        b"[1, 2",
        b"",
        b'{"a": NaN}',
        b'{"a": 1} PHIMARKER123',
        b'"\xff PHIMARKER123"',
        b'{"PHIMARKER123\xc3": 1}',
    ],
    ids=[
        "unterminated",
        "bare-word",
        "word",
        "trailing-comma",
        "array",
        "empty",
        "nan",
        "trailing-data",
        "invalid-utf8-string",
        "invalid-utf8-key",
    ],
)
def test_invalid_json_error_does_not_quote_input(text: bytes) -> None:
    with pytest.raises(json.JsonError) as info:
        json.decode(text)
    assert "PHIMARKER123" not in str(info.value)
    assert "PHIMARKER123" not in repr(info.value)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__  # the decoder's message is not chained into logs
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("raw", "duplicated"),
    [
        (b'{"subject": {"reference": "Patient/B"}, "subject": {"reference": "Patient/A"}}', True),
        (b'[{"op": "add", "value": "Patient/B", "value": "Patient/A"}]', True),
        (b'{"a": {"b": 1, "c": {"d": 1.50, "d": 2}}}', True),
        (b'{"a": 1, "b": [{"a": 1}, {"a": 2}]}', False),
        (b'{"a": 1.50, "A": 2}', False),
    ],
    ids=["top-level", "json-patch", "nested", "same-name-in-siblings", "case-differs"],
)
def test_duplicate_names_are_found(raw: bytes, duplicated: bool) -> None:
    json.decode(raw)  # valid JSON for the fast codec either way
    assert json.has_duplicate_keys(raw) is duplicated
