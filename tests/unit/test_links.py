"""Upstream URLs never reach clients: headers and JSON bodies are rewritten to the public base."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.upstream.links import UrlRewriter

UP = "http://legacy-fhir:8080/fhir"
PUBLIC = "https://fhir.example.org/r4"


@pytest.fixture
def rw() -> UrlRewriter:
    return UrlRewriter([UP + "/"], PUBLIC + "/")


HEADER_CASES = [
    (f"{UP}/Patient/1/_history/2", f"{PUBLIC}/Patient/1/_history/2", "location"),
    (UP, PUBLIC, "base-itself"),
    (f"{UP}/", f"{PUBLIC}/", "base-slash"),
    (f"{UP}?_getpages=abc&_offset=10", f"{PUBLIC}?_getpages=abc&_offset=10", "base-query"),
    (f"{UP}/Patient?name=x", f"{PUBLIC}/Patient?name=x", "search-query"),
    (f"{UP}#frag", f"{PUBLIC}#frag", "fragment"),
    ("HTTP://LEGACY-FHIR:8080/fhir/Patient/1", f"{PUBLIC}/Patient/1", "case-insensitive-host"),
    ("Patient/1/_history/2", "Patient/1/_history/2", "relative"),
    ("/r4/Patient/1", "/r4/Patient/1", "absolute-path"),
    ("https://other.example/fhir/Patient/1", "https://other.example/fhir/Patient/1", "foreign"),
    ("http://legacy-fhir:9090/fhir/Patient/1", "http://legacy-fhir:9090/fhir/Patient/1", "port"),
]


@pytest.mark.parametrize(
    ("value", "expected"), [c[:2] for c in HEADER_CASES], ids=[c[2] for c in HEADER_CASES]
)
def test_rewrite_header(rw: UrlRewriter, value: str, expected: str) -> None:
    assert rw.rewrite_header(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "http://legacy-fhir:8080/fhirX/Patient/1",
        "http://legacy-fhir:8080/fhir2",
        "http://legacy-fhir:8080/admin/console",
        "http://legacy-fhir:8080/",
        "http://legacy-fhir:8080",
        "http://LEGACY-FHIR:8080/other",
        "https://legacy-fhir:8080/other",
    ],
    ids=[
        "boundary-fhirX",
        "boundary-fhir2",
        "outside-base",
        "root-slash",
        "root",
        "case",
        "other-scheme",
    ],
)
def test_upstream_host_outside_base_dropped(rw: UrlRewriter, value: str) -> None:
    assert rw.rewrite_header(value) is None


def test_base_boundary_in_json_only_the_origin_is_replaced(rw: UrlRewriter) -> None:
    """`/fhirX` is not under the base `/fhir`: it is not mapped onto the public base, but the
    upstream origin is still replaced (a dead link, never a leaked host)."""
    doc = {"url": f"{UP}X/Patient", "other": f"{UP}.evil/x", "foreign": "http://other:8080/fhir"}
    assert rw.rewrite_json(doc) is True
    assert doc == {
        "url": "https://fhir.example.org/fhirX/Patient",
        "other": "https://fhir.example.org/fhir.evil/x",
        "foreign": "http://other:8080/fhir",
    }


def _bundle(base: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 1,
        "link": [
            {"relation": "self", "url": f"{base}/Observation?patient=1"},
            {"relation": "next", "url": f"{base}?_getpages=x&_getpagesoffset=20"},
        ],
        "entry": [
            {
                "fullUrl": f"{base}/Observation/9",
                "resource": {
                    "resourceType": "Observation",
                    "id": "9",
                    "valueQuantity": {"value": 1.5},
                    "subject": {"reference": f"{base}/Patient/1"},
                    "performer": [{"reference": "Practitioner/2"}],
                    "text": {
                        "status": "generated",
                        "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><a href="{base}/'
                        f'Patient/1">p</a> see {base}/Patient/1 </div>',
                    },
                    "component": [[{"x": [f"{base}/Device/3"]}]],
                },
                "response": {"status": "201", "location": f"{base}/Observation/9/_history/1"},
                "search": {"mode": "match"},
            }
        ],
    }


def test_rewrite_json_nested(rw: UrlRewriter) -> None:
    doc = _bundle(UP)
    assert rw.rewrite_json(doc) is True
    assert doc == _bundle(PUBLIC)
    assert "legacy-fhir" not in repr(doc)
    # non-string leaves untouched, relative references untouched
    entry = doc["entry"][0]
    assert entry["resource"]["valueQuantity"]["value"] == 1.5
    assert entry["resource"]["performer"][0]["reference"] == "Practitioner/2"


def test_rewrite_json_unchanged(rw: UrlRewriter) -> None:
    doc = _bundle(PUBLIC)
    before = copy.deepcopy(doc)
    assert rw.rewrite_json(doc) is False
    assert doc == before


def test_rewrite_json_top_level_list_and_scalars(rw: UrlRewriter) -> None:
    doc: list[Any] = [f"{UP}/Patient/1", 3, None, True, {"a": [UP]}]
    assert rw.rewrite_json(doc) is True
    assert doc == [f"{PUBLIC}/Patient/1", 3, None, True, {"a": [PUBLIC]}]
    assert rw.rewrite_json("just a string") is False


def test_rewrite_json_deeply_nested_does_not_recurse(rw: UrlRewriter) -> None:
    doc: Any = UP
    for _ in range(5000):
        doc = {"n": [doc]}
    assert rw.rewrite_json(doc) is True


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"url": "http://legacy-fhir:8080/fhir/Patient/1"}', True),
        (b'{"url": "HTTP://LEGACY-FHIR:8080/x"}', True),
        (b'{"url": "https://fhir.example.org/r4/Patient/1"}', False),
        (b'{"url": "http://legacy-fhir/fhir"}', False),
        (b"", False),
    ],
    ids=["upstream", "case", "public", "other-port", "empty"],
)
def test_mentions_upstream(rw: UrlRewriter, body: bytes, expected: bool) -> None:
    assert rw.mentions_upstream(body) is expected


def test_several_upstream_bases_longest_first() -> None:
    rw = UrlRewriter(["http://up/fhir", "http://up/fhir/r4"], PUBLIC)
    assert rw.rewrite_header("http://up/fhir/r4/Patient/1") == f"{PUBLIC}/Patient/1"
    assert rw.rewrite_header("http://up/fhir/Patient/1") == f"{PUBLIC}/Patient/1"


def test_base_with_regex_metacharacters_is_literal() -> None:
    rw = UrlRewriter(["http://up.example/fhir+r4"], PUBLIC)
    assert rw.rewrite_header("http://up.example/fhir+r4/Patient/1") == f"{PUBLIC}/Patient/1"
    assert rw.rewrite_header("http://upXexample/fhirr4/Patient/1") == (
        "http://upXexample/fhirr4/Patient/1"
    )


@pytest.mark.parametrize(
    "value",
    [
        f"{UP}/Patient/1",
        UP,
        f"{UP}?_offset=10",
        "HTTP://LEGACY-FHIR:8080/fhir/Patient/1",
        f"{UP}X/Patient",
        "http://legacy-fhir:8080/blobs/1.png",
        f'<a href="{UP}/Patient/1">x</a>',
        "http://other:8080/fhir/Patient/1",
        "plain text",
    ],
)
def test_bytes_rewrite_matches_the_document_walk(rw: UrlRewriter, value: str) -> None:
    """The one-pass byte rewrite and the per-string walk give the same document."""
    import json

    doc: dict[str, Any] = {"resourceType": "Bundle", "entry": [{"fullUrl": value, "x": [value]}]}
    walked = copy.deepcopy(doc)
    rw.rewrite_json(walked)
    raw = json.dumps(doc).encode()
    rewritten, escaped = rw.rewrite_bytes(raw)
    assert json.loads(rewritten) == walked
    assert escaped is False


def test_escaped_urls_are_left_for_the_walk(rw: UrlRewriter) -> None:
    raw = b'{"url": "http:\\/\\/legacy-fhir:8080\\/fhir\\/Patient\\/1"}'
    rewritten, escaped = rw.rewrite_bytes(raw)
    assert rewritten == raw
    assert escaped is True  # the caller then walks the document


@pytest.mark.parametrize(
    ("raw", "left_over"),
    [
        (
            b'{"a": "http://legacy-fhir:8080/fhir/Patient/1", "b": "HTTP://Legacy-FHIR:8080/x"}',
            False,
        ),
        (b'{"a": "http://legacy-fhir:8080/fhir/Patient/1", "b": "host legacy-fhir:8080"}', True),
        (b'{"a": "legacy-fhir:8080"}', True),
        (b'{"a": "http://elsewhere/fhir"}', False),
    ],
    ids=["all-rewritten", "bare-host-in-text", "only-bare-host", "no-mention"],
)
def test_bytes_rewrite_reports_what_it_left(rw: UrlRewriter, raw: bytes, left_over: bool) -> None:
    rewritten, escaped = rw.rewrite_bytes(raw)
    assert escaped is left_over
    assert b"http://legacy-fhir:8080" not in rewritten.lower()


def test_bytes_rewrite_with_two_upstream_hosts() -> None:
    rw = UrlRewriter(["http://up-a/fhir", "http://up-b:81/fhir"], PUBLIC)
    raw = b'{"x": "http://up-a/fhir/Patient/1", "y": "http://UP-B:81/fhir/Patient/2"}'
    rewritten, escaped = rw.rewrite_bytes(raw)
    assert rewritten == (
        b'{"x": "' + PUBLIC.encode() + b'/Patient/1", "y": "' + PUBLIC.encode() + b'/Patient/2"}'
    )
    assert escaped is False
    assert rw.rewrite_bytes(b'{"x": "http:\\/\\/up-b:81\\/fhir"}')[1] is True


def test_outcome_naming_the_upstream_host_is_scrubbed(rw: UrlRewriter) -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "text": {"status": "generated", "div": "<div>legacy-fhir:8080 down</div>"},
        "issue": [
            {"severity": "error", "code": "exception", "diagnostics": "at LEGACY-FHIR:8080/idx"},
            {"severity": "error", "code": "invalid", "details": {"text": "legacy-fhir:8080"}},
            {"severity": "error", "code": "invalid", "diagnostics": "Observation.status missing"},
        ],
    }
    assert rw.scrub_outcome(outcome) is True
    assert "text" not in outcome
    assert "legacy-fhir" not in str(outcome).lower()
    assert outcome["issue"][2]["diagnostics"] == "Observation.status missing"
    assert rw.scrub_outcome({"resourceType": "Observation", "note": "legacy-fhir:8080"}) is False


@pytest.mark.parametrize(
    "value",
    [
        "http://svc@legacy-fhir:8080/fhir/Patient/1",
        "http://user:pw@legacy-fhir:8080/blobs/1.png",
        "HTTP://Svc@LEGACY-FHIR:8080/fhir",
    ],
)
def test_userinfo_does_not_hide_the_upstream_host(rw: UrlRewriter, value: str) -> None:
    import json

    raw = json.dumps({"url": value}).encode()
    rewritten, escaped = rw.rewrite_bytes(raw)
    assert escaped is True  # left for the walk over the decoded document
    doc = json.loads(rewritten)
    assert rw.rewrite_json(doc) is True
    assert "legacy-fhir" not in json.dumps(doc).lower()
    assert "legacy-fhir" not in (rw.rewrite_header(value) or "").lower()
