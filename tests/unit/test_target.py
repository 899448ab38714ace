"""The raw request-target canonicaliser: one interpretation, everything ambiguous refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import InvalidTarget
from gateway.fhir.target import (
    MAX_TARGET_LENGTH,
    Target,
    encode_path,
    encode_query,
    parse_query,
    parse_target,
)

BASE = "/r4"


# --------------------------------------------------------------------------- valid targets

VALID = [
    ("/r4", (), "base"),
    ("/r4/", (), "base-trailing-slash"),
    ("/r4/Patient/123", ("Patient", "123"), "read"),
    ("/r4/Patient/123/", ("Patient", "123"), "read-trailing-slash"),
    ("/r4/Patient/123/_history/2", ("Patient", "123", "_history", "2"), "vread"),
    ("/r4/Patient/123/$everything", ("Patient", "123", "$everything"), "operation"),
    ("/r4/.well-known/smart-configuration", (".well-known", "smart-configuration"), "discovery"),
    ("/r4/%50atient/1", ("Patient", "1"), "encoded-allowed-char"),
    ("/r4/Patient/a%2Eb", ("Patient", "a.b"), "encoded-dot-inside-segment"),
    ("/r4/Patient/x/*", ("Patient", "x", "*"), "compartment-star"),
    ("/r4/metadata", ("metadata",), "metadata"),
    ("/%72%34/Patient", ("Patient",), "encoded-base"),
]


@pytest.mark.parametrize(("raw", "segments"), [v[:2] for v in VALID], ids=[v[2] for v in VALID])
def test_valid_targets(raw: str, segments: tuple[str, ...]) -> None:
    target = parse_target(raw, BASE)
    assert target == Target(segments=segments, params=())
    assert target.path == "/".join(segments)


def test_root_base_path_accepts_everything_inside() -> None:
    assert parse_target("/Patient/1", "") == Target(("Patient", "1"), ())
    assert parse_target("/", "") == Target((), ())


@pytest.mark.parametrize(
    "raw",
    ["/", "/r5/Patient", "/r4x/Patient", "/R4/Patient", "/fhir/r4/Patient", "/healthz"],
    ids=["root", "other-base", "longer-prefix", "case", "nested", "probe"],
)
def test_outside_base_is_none(raw: str) -> None:
    assert parse_target(raw, BASE) is None


# --------------------------------------------------------------------------- hostile targets

HOSTILE = [
    ("/r4/../x", "dot-dot"),
    ("/r4/./Patient", "dot"),
    ("/r4/Patient/..", "trailing-dot-dot"),
    ("/r4/%2e%2e/x", "pct-dot-dot-lower"),
    ("/r4/%2E%2E/x", "pct-dot-dot-upper"),
    ("/r4/%2E/Patient", "pct-dot"),
    ("/r4/.%2e/x", "mixed-dot-dot"),
    ("/r4/Patient%2F1", "encoded-slash-upper"),
    ("/r4/Patient%2f1", "encoded-slash-lower"),
    ("/r4/Patient%5C1", "encoded-backslash"),
    ("/r4/Patient\\1", "raw-backslash"),
    ("/r4//Patient", "double-slash-middle"),
    ("//r4/Patient", "double-slash-start"),
    ("/r4/Patient//", "double-slash-end"),
    ("/r4/Patient/1\x00", "raw-nul"),
    ("/r4/Patient/%00", "pct-nul"),
    ("/r4/Patient/1%0d%0aX-Evil:1", "pct-crlf"),
    ("/r4/Patient/1\r\nX: y", "raw-crlf"),
    ("/r4/Patient/%09", "pct-tab"),
    ("/r4/Patient/\t1", "raw-tab"),
    ("/r4/Patient/%7f", "pct-del"),
    ("/r4/%252e%252e/x", "double-encoded-dots"),
    ("/r4/Patient/%25", "encoded-percent"),
    ("/r4/Patient/%252F", "double-encoded-slash"),
    ("http://evil/r4/Patient", "absolute-form"),
    ("HTTP://evil/r4/Patient", "absolute-form-upper"),
    ("evil.example:443", "authority-form"),
    ("*", "asterisk-form"),
    ("", "empty"),
    ("r4/Patient", "no-leading-slash"),
    ("/r4/Patient#frag", "fragment"),
    ("/r4/Patient?a=1#frag", "fragment-in-query"),
    ("/r4/Patient;jsessionid=1/1", "path-params"),
    ("/r4/Patient/1;v=2", "path-param-last"),
    ("/r4/Patiént/1", "non-ascii-raw"),
    ("/r4/Patient?name=José", "non-ascii-raw-query"),
    ("/r4/Patient/a b", "raw-space"),
    ("/r4/Patient/a%20b", "encoded-space"),
    ("/r4/Patient/%ff", "invalid-utf8"),
    ("/r4/Patient/%c3%a9", "non-ascii-encoded-segment"),
    ("/r4/Patient/%G1", "malformed-pct"),
    ("/r4/Patient/1%", "trailing-pct"),
    ("/r4/Patient/1%4", "truncated-pct"),
    ("/r4/Patient/%3Cx%3E", "encoded-angle-brackets"),
    ("/r4/Patient/<x>", "raw-angle-brackets"),
    ("/r4/Patient/a:b", "colon"),
    ("/r4/Patient/a@b", "at-sign"),
    ("/r4/Patient/~a", "tilde"),
    ("/r4/" + "a" * MAX_TARGET_LENGTH, "overlong"),
]


@pytest.mark.parametrize("raw", [h[0] for h in HOSTILE], ids=[h[1] for h in HOSTILE])
def test_hostile_targets_refused(raw: str) -> None:
    with pytest.raises(InvalidTarget) as info:
        parse_target(raw, BASE)
    assert info.value.status == 400
    assert "evil" not in info.value.diagnostics.lower()


def test_hostile_outside_base_is_still_refused() -> None:
    # refusal does not depend on the base matching: no "not mine" shortcut for tricks
    with pytest.raises(InvalidTarget):
        parse_target("/other/../r4/Patient", BASE)


def test_length_limit_boundary() -> None:
    prefix = "/r4/Patient?x="
    ok = prefix + "a" * (MAX_TARGET_LENGTH - len(prefix))
    assert len(ok) == MAX_TARGET_LENGTH
    assert parse_target(ok, BASE) is not None
    with pytest.raises(InvalidTarget):
        parse_target(ok + "a", BASE)


# --------------------------------------------------------------------------- query parsing

QUERIES = [
    ("a=1&b=2&a=3", (("a", "1"), ("b", "2"), ("a", "3")), "order-and-repeats"),
    ("name=John+Smith", (("name", "John Smith"),), "plus-is-space"),
    ("name=a%2Bb", (("name", "a+b"),), "encoded-plus"),
    ("identifier=sys|val", (("identifier", "sys|val"),), "pipe-raw"),
    ("identifier=sys%7Cval", (("identifier", "sys|val"),), "pipe-encoded"),
    ("code=a,b", (("code", "a,b"),), "comma"),
    ("q=a%26b%3Dc", (("q", "a&b=c"),), "encoded-amp-eq"),
    ("q=100%25", (("q", "100%"),), "encoded-percent"),
    ("q=%252e", (("q", "%2e"),), "double-encoding-decoded-once"),
    ("name=Jos%C3%A9", (("name", "José"),), "utf8"),
    ("name=%E6%9D%8E", (("name", "李"),), "utf8-cjk"),
    ("a=&b=", (("a", ""), ("b", "")), "empty-values"),
    ("_summary", (("_summary", ""),), "no-equals"),
    ("a=1&&b=2&", (("a", "1"), ("b", "2")), "empty-pieces"),
    ("a=b=c", (("a", "b=c"),), "second-equals-in-value"),
    ("date=ge2020-01-01&date=le2021", (("date", "ge2020-01-01"), ("date", "le2021")), "dates"),
    ("subject:Patient.name=x", (("subject:Patient.name", "x"),), "chain-modifier"),
    ("", (), "empty"),
]


@pytest.mark.parametrize(("raw", "expected"), [q[:2] for q in QUERIES], ids=[q[2] for q in QUERIES])
def test_parse_query(raw: str, expected: tuple[tuple[str, str], ...]) -> None:
    assert parse_query(raw) == expected


def test_target_carries_query_params() -> None:
    target = parse_target("/r4/Patient?name=a+b&_count=10", BASE)
    assert target is not None
    assert target.params == (("name", "a b"), ("_count", "10"))


@pytest.mark.parametrize(
    "raw",
    [
        "=1",
        "=",
        "a=1&=2",
        "=x",
        "a%00=1",
        "a=%00",
        "a=%0d%0a",
        "a=%09",
        "a=%7F",
        "a=%ff",
        "a=%G1",
        "a=1%",
        "a%=1",
    ],
    ids=[
        "empty-name",
        "empty-name-empty-value",
        "empty-name-later",
        "empty-name-value",
        "nul-name",
        "nul-value",
        "crlf",
        "tab",
        "del",
        "invalid-utf8",
        "malformed-pct",
        "trailing-pct",
        "pct-in-name",
    ],
)
def test_parse_query_refuses(raw: str) -> None:
    with pytest.raises(InvalidTarget):
        parse_query(raw)


# --------------------------------------------------------------------------- encoding


def test_encode_query_escapes_everything_special() -> None:
    encoded = encode_query([("a b", "x+y"), ("q", "1&2=3"), ("p", "100%|,"), ("n", "José")])
    assert encoded == "a%20b=x%2By&q=1%262%3D3&p=100%25%7C%2C&n=Jos%C3%A9"
    assert " " not in encoded and "+" not in encoded


def test_encode_path_keeps_dollar_and_star() -> None:
    assert encode_path(("Patient", "x", "$everything")) == "Patient/x/$everything"
    assert encode_path(("Patient", "x", "*")) == "Patient/x/*"


_NO_CONTROL = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")),
)


@given(st.lists(st.tuples(_NO_CONTROL.filter(bool), _NO_CONTROL), max_size=8))
def test_query_round_trip(pairs: list[tuple[str, str]]) -> None:
    assert parse_query(encode_query(pairs)) == tuple(pairs)


@given(st.lists(st.tuples(_NO_CONTROL.filter(bool), _NO_CONTROL), max_size=5))
def test_query_round_trip_through_target(pairs: list[tuple[str, str]]) -> None:
    raw = "/r4/Patient?" + encode_query(pairs)
    if len(raw) > MAX_TARGET_LENGTH:
        return
    target = parse_target(raw, BASE)
    assert target is not None
    assert target.params == tuple(pairs)
