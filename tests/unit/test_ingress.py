"""Ingress: JSON-only negotiation (406), body reading (413/415/400), access_token removal."""

from __future__ import annotations

import gzip
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import ingress
from gateway.errors import GatewayError, NotAcceptable
from gateway.fhir.request import FhirRequest, classify
from gateway.fhir.target import parse_target


def fhir(method: str, path: str) -> FhirRequest:
    target = parse_target("/r4" + path, "/r4")
    assert target is not None
    return classify(method, target)


ACCEPT_OK = [
    ("GET", "/Patient/1", None, "missing"),
    ("GET", "/Patient/1", "", "empty"),
    ("GET", "/Patient/1", "*/*", "any"),
    ("GET", "/Patient/1", "application/*", "application-any"),
    ("GET", "/Patient/1", "application/fhir+json", "fhir-json"),
    ("GET", "/Patient/1", "application/json", "json"),
    ("GET", "/Patient/1", "application/json+fhir", "legacy-dstu2-type"),
    ("GET", "/Patient/1", "APPLICATION/FHIR+JSON; fhirVersion=4.0", "case-and-params"),
    ("GET", "/Patient/1", "application/fhir+xml, application/fhir+json;q=0.1", "json-second"),
    ("GET", "/Patient/1", "text/html, */*;q=0.8", "browser"),
    ("GET", "/Patient/1?_format=json", None, "format-json"),
    ("GET", "/Patient/1?_format=application/fhir%2Bjson", None, "format-fhir-json"),
    ("GET", "/Patient/1?_format=application/json", "application/fhir+json", "format-app-json"),
    ("GET", "/Binary/1", "image/png", "binary-read-png"),
    ("GET", "/Binary/1/_history/2", "application/pdf", "binary-vread-pdf"),
    ("GET", "/metadata", "application/fhir+json", "metadata"),
]


@pytest.mark.parametrize(
    ("method", "path", "accept"), [c[:3] for c in ACCEPT_OK], ids=[c[3] for c in ACCEPT_OK]
)
def test_accept_ok(method: str, path: str, accept: str | None) -> None:
    ingress.check_accept(fhir(method, path), accept)


ACCEPT_406 = [
    ("GET", "/Patient/1", "application/xml", "xml"),
    ("GET", "/Patient/1", "application/fhir+xml", "fhir-xml"),
    ("GET", "/Patient/1", "text/html", "html"),
    ("GET", "/Patient/1", "application/fhir+xml;q=1, application/json;q=0", "json-q0"),
    ("GET", "/Patient/1", "application/fhir+json;q=0", "only-json-q0"),
    ("GET", "/Patient/1", "application/fhir+json; q=0.0", "only-json-q0.0"),
    ("GET", "/Patient/1", "*/*;q=0", "any-q0"),
    ("GET", "/Patient/1?_format=xml", None, "format-xml"),
    ("GET", "/Patient/1?_format=xml", "application/fhir+json", "format-xml-accept-json"),
    ("GET", "/Patient/1?_format=application/fhir%2Bxml", None, "format-fhir-xml"),
    ("GET", "/Patient/1?_format=json&_format=xml", None, "format-repeated"),
    ("GET", "/Patient/1?_format=html", None, "format-html"),
    ("GET", "/Binary/1?_format=xml", "image/png", "binary-format-xml"),
    ("GET", "/Patient/1", "image/png", "non-binary-png"),
]


@pytest.mark.parametrize(
    ("method", "path", "accept"), [c[:3] for c in ACCEPT_406], ids=[c[3] for c in ACCEPT_406]
)
def test_accept_406(method: str, path: str, accept: str | None) -> None:
    with pytest.raises(NotAcceptable) as info:
        ingress.check_accept(fhir(method, path), accept)
    assert info.value.status == 406


@pytest.mark.parametrize(
    ("params", "kept", "found"),
    [
        ((), (), False),
        ((("name", "x"),), (("name", "x"),), False),
        ((("access_token", "t"),), (), True),
        (
            (("a", "1"), ("access_token", "t1"), ("b", "2"), ("access_token", "t2")),
            (("a", "1"), ("b", "2")),
            True,
        ),
        ((("access_token", ""),), (), True),
        (
            (("Access_Token", "t"), ("access_token:x", "t")),
            (("Access_Token", "t"), ("access_token:x", "t")),
            False,
        ),
    ],
    ids=[
        "none",
        "no-token",
        "only-token",
        "several-tokens-order-kept",
        "empty-token",
        "other-names",
    ],
)
def test_split_access_token(params: Any, kept: Any, found: bool) -> None:
    assert ingress.split_access_token(params) == (kept, found)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("application/fhir+json; charset=utf-8", "application/fhir+json"),
        (" Application/JSON ", "application/json"),
        (";x=y", None),
    ],
)
def test_media_type(value: str | None, expected: str | None) -> None:
    assert ingress.media_type(value) == expected


# --------------------------------------------------------------------------- read_body

LIMIT = 64


async def _body_endpoint(request: web.Request) -> web.Response:
    target = parse_target(request.raw_path, "/r4")
    assert target is not None
    req = classify(request.method, target)
    try:
        body = await ingress.read_body(request, req, LIMIT)
    except GatewayError as exc:
        return web.json_response({"status": exc.status}, status=299)
    if body is None:
        return web.json_response({"body": None})
    data = body.data
    if body.stream is not None:
        data = b"".join([c async for c in body.stream])
    return web.json_response(
        {
            "ctype": body.content_type,
            "data": None if data is None else data.decode("latin-1"),
            "form": None if body.form is None else [list(p) for p in body.form],
            "streamed": body.stream is not None,
        }
    )


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient[Any, Any]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _body_endpoint)
    return await aiohttp_client(app)


BODY_CASES = [
    ("POST", "/Patient", "application/fhir+json", b'{"resourceType":"Patient"}', 200, "json"),
    ("PUT", "/Patient/1", "application/json; charset=utf-8", b"{}", 200, "json-charset"),
    ("POST", "/Patient", "application/xml", b"<Patient/>", 415, "xml"),
    ("POST", "/Patient", None, b"{}", 415, "no-content-type"),
    ("POST", "/Patient", "text/plain", b"{}", 415, "text"),
    ("POST", "/Patient", "application/fhir+json", b"[1]", 400, "json-not-object"),
    ("POST", "/Patient", "application/fhir+json", b"{PHI", 400, "invalid-json"),
    ("POST", "/Patient", "application/fhir+json", b'"\xff"', 400, "invalid-utf8-json"),
    ("POST", "/Patient", "application/fhir+json", b"{}" + b" " * LIMIT, 413, "too-large"),
    ("PATCH", "/Patient/1", "application/json-patch+json", b"[]", 200, "json-patch"),
    ("PATCH", "/Patient/1", "application/json-patch+json", b"{}", 400, "json-patch-object"),
    ("POST", "/Patient", "application/json-patch+json", b"[]", 415, "json-patch-on-create"),
    ("POST", "/Binary", "image/png", b"\x89PNG", 200, "binary-create"),
    ("POST", "/Binary", "image/png", b"x" * (LIMIT + 1), 413, "binary-too-large"),
]


@pytest.mark.parametrize(
    ("method", "path", "ctype", "data", "status"),
    [c[:5] for c in BODY_CASES],
    ids=[c[5] for c in BODY_CASES],
)
async def test_read_body(
    client: TestClient[Any, Any],
    method: str,
    path: str,
    ctype: str | None,
    data: bytes,
    status: int,
) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    async with client.request(method, "/r4" + path, data=data, headers=headers) as resp:
        assert resp.status in (200, 299), f"read_body raised a non-gateway error ({resp.status})"
        doc = await resp.json()
    if status == 200:
        assert resp.status == 200, doc
        assert doc["data"].encode("latin-1") == data
    else:
        assert doc == {"status": status}


async def test_streamed_body_cap_applies_to_chunked(client: TestClient[Any, Any]) -> None:
    async def gen() -> Any:
        for _ in range(10):
            yield b"x" * 16

    async with client.post(
        "/r4/Patient", data=gen(), headers={"Content-Type": "application/fhir+json"}
    ) as resp:
        assert await resp.json() == {"status": 413}


async def test_form_search_body_parsed(client: TestClient[Any, Any]) -> None:
    async with client.post(
        "/r4/Observation/_search",
        data=b"code=a%7Cb&access_token=t&name=J+S",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ) as resp:
        doc = await resp.json()
    assert doc["form"] == [["code", "a|b"], ["access_token", "t"], ["name", "J S"]]


async def test_non_ascii_form_refused(client: TestClient[Any, Any]) -> None:
    async with client.post(
        "/r4/Observation/_search",
        data="name=José".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ) as resp:
        assert await resp.json() == {"status": 400}


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_bodies_on_reads_ignored(client: TestClient[Any, Any], method: str) -> None:
    async with client.request(
        method, "/r4/Patient/1", data=b"{}", headers={"Content-Type": "application/fhir+json"}
    ) as resp:
        assert await resp.json() == {"body": None}


async def test_gzip_body_not_json(client: TestClient[Any, Any]) -> None:
    # a compressed body without Content-Encoding is just invalid JSON
    async with client.post(
        "/r4/Patient", data=gzip.compress(b"{}"), headers={"Content-Type": "application/json"}
    ) as resp:
        assert await resp.json() == {"status": 400}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("application/fhir+json", None),
        ("application/fhir+json; charset=utf-8", "utf-8"),
        ('application/fhir+json; fhirVersion=4.0; Charset="UTF-7"', "utf-7"),
        ("application/json;charset=ISO-8859-1", "iso-8859-1"),
        (None, None),
    ],
)
def test_charset_parameter(value: str | None, expected: str | None) -> None:
    assert ingress.charset(value) == expected
