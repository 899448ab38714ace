"""Request and response bodies: size caps, media types, JSON-only negotiation, Binary streaming."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from tests.support.fake_upstream import FakeUpstream, Recorded
from tests.support.gateway import RunningGateway

LIMIT = 1024
FHIR_JSON = "application/fhir+json"


def big_patient(size: int) -> bytes:
    return json.dumps({"resourceType": "Patient", "pad": "x" * size}).encode()


async def in_chunks(data: bytes, size: int = 256) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.fixture
async def small_gw(gateway_factory) -> RunningGateway:
    return await gateway_factory(server={"max_request_body_bytes": LIMIT})


async def outcome(resp) -> dict:  # type: ignore[no-untyped-def]
    assert resp.headers["Content-Type"].startswith(FHIR_JSON)
    doc = await resp.json(content_type=None)
    assert doc["resourceType"] == "OperationOutcome"
    return doc


@pytest.mark.parametrize(
    ("method", "path", "ctype"),
    [
        ("POST", "/Patient", FHIR_JSON),
        ("PUT", "/Patient/p1", FHIR_JSON),
        ("POST", "", FHIR_JSON),
        ("POST", "/Observation/_search", "application/x-www-form-urlencoded"),
        ("POST", "/Binary", "image/png"),
        ("PUT", "/Binary/b1", "application/octet-stream"),
    ],
    ids=["create", "update", "transaction", "form-search", "binary-create", "binary-update"],
)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_request_body_over_the_limit_is_413_and_not_forwarded(
    small_gw: RunningGateway,
    fake_upstream: FakeUpstream,
    auth: dict[str, str],
    method: str,
    path: str,
    ctype: str,
    framing: str,
) -> None:
    body = big_patient(4 * LIMIT)
    if ctype.endswith("urlencoded"):
        body = b"code=" + b"x" * 4 * LIMIT
    data = body if framing == "content-length" else in_chunks(body)
    headers = {**auth, "Content-Type": ctype}
    async with small_gw.session.request(
        method, small_gw.base + path, data=data, headers=headers
    ) as resp:
        assert resp.status == 413
        assert (await outcome(resp))["issue"][0]["code"] == "too-costly"
    assert fake_upstream.requests == []


async def test_body_at_the_limit_is_forwarded(
    small_gw: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    body = big_patient(LIMIT - len(big_patient(0)))
    assert len(body) == LIMIT
    headers = {**auth, "Content-Type": FHIR_JSON}
    async with small_gw.session.post(
        f"{small_gw.base}/Patient", data=in_chunks(body), headers=headers
    ) as resp:
        assert resp.status == 201
    assert fake_upstream.requests[0].body == body


@pytest.mark.parametrize(
    ("ctype", "body", "status"),
    [
        ("application/fhir+xml", b'<Patient xmlns="http://hl7.org/fhir"/>', 415),
        ("application/xml", b'<Patient xmlns="http://hl7.org/fhir"/>', 415),
        ("text/plain", b'{"resourceType": "Patient"}', 415),
        (None, b'{"resourceType": "Patient"}', 415),
        (FHIR_JSON, b'{"resourceType": "Patient",', 400),
        (FHIR_JSON, b"\xff\xfe{}", 400),
        (FHIR_JSON, b"[1, 2]", 400),
        (FHIR_JSON, b'"Patient"', 400),
        ("application/json-patch+json", b'[{"op": "remove", "path": "/a"}]', 415),
    ],
    ids=[
        "fhir-xml",
        "xml",
        "text",
        "none",
        "truncated-json",
        "not-utf8",
        "array",
        "string",
        "patch-type-on-create",
    ],
)
async def test_bad_request_bodies_are_refused_and_not_forwarded(
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    auth: dict[str, str],
    ctype: str | None,
    body: bytes,
    status: int,
) -> None:
    headers = dict(auth)
    skip = ()
    if ctype is None:
        skip = ("Content-Type",)
    else:
        headers["Content-Type"] = ctype
    async with gateway.session.post(
        f"{gateway.base}/Patient", data=body, headers=headers, skip_auto_headers=skip
    ) as resp:
        assert resp.status == status
        await outcome(resp)
    assert fake_upstream.requests == []


async def test_patch_body_must_be_a_json_patch_array(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    headers = {**auth, "Content-Type": "application/json-patch+json"}
    async with gateway.session.patch(
        f"{gateway.base}/Patient/p1", data=b'{"op": "remove"}', headers=headers
    ) as resp:
        assert resp.status == 400
    assert fake_upstream.requests == []


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_body_on_get_or_delete_is_not_forwarded(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str], method: str
) -> None:
    headers = {**auth, "Content-Type": FHIR_JSON}
    async with gateway.session.request(
        method, f"{gateway.base}/Patient/p1", data=b'{"resourceType": "Patient"}', headers=headers
    ) as resp:
        assert resp.status == 200
    [rec] = fake_upstream.requests
    assert rec.method == method
    assert rec.body == b""
    assert "Content-Type" not in rec.headers
    assert rec.headers.get("Content-Length", "0") == "0"


@pytest.mark.parametrize("accept", ["application/octet-stream", "image/png", "*/*"])
async def test_binary_read_streams_five_megabytes_intact(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str], accept: str
) -> None:
    payload = os.urandom(5 * 1024 * 1024)

    async def answer(request: web.Request, _: Recorded) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/png", "ETag": 'W/"2"'})
        resp.content_length = len(payload)
        await resp.prepare(request)
        for i in range(0, len(payload), 100_000):
            await resp.write(payload[i : i + 100_000])
        await resp.write_eof()
        return resp

    fake_upstream.reply(answer)
    headers = {**auth, "Accept": accept}
    async with gateway.session.get(f"{gateway.base}/Binary/b1", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "image/png"
        assert resp.headers["ETag"] == 'W/"2"'
        digest = hashlib.sha256()
        async for chunk in resp.content.iter_chunked(65536):
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(payload).hexdigest()
    assert fake_upstream.requests[0].headers["Accept"] == accept


async def test_binary_create_streams_body_intact(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    payload = os.urandom(2 * 1024 * 1024)
    fake_upstream.reply_json({"resourceType": "Binary", "id": "b9"}, status=201)
    headers = {**auth, "Content-Type": "application/pdf"}
    async with gateway.session.post(
        f"{gateway.base}/Binary", data=in_chunks(payload, 65536), headers=headers
    ) as resp:
        assert resp.status == 201
    [rec] = fake_upstream.requests
    assert hashlib.sha256(rec.body).digest() == hashlib.sha256(payload).digest()
    assert rec.headers["Content-Type"] == "application/pdf"


@pytest.mark.parametrize(
    ("accept", "query"),
    [
        ("application/fhir+xml", ""),
        ("application/xml", ""),
        ("text/html", ""),
        ("application/fhir+json;q=0, application/fhir+xml", ""),
        (None, "?_format=xml"),
        (None, "?_format=application/fhir%2Bxml"),
        ("application/fhir+json", "?_format=html"),
    ],
    ids=["fhir-xml", "xml", "html", "json-q0", "format-xml", "format-fhir-xml", "format-html"],
)
async def test_non_json_representations_are_406_and_not_forwarded(
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    auth: dict[str, str],
    accept: str | None,
    query: str,
) -> None:
    headers = dict(auth)
    if accept is not None:
        headers["Accept"] = accept
    async with gateway.session.get(f"{gateway.base}/Patient/p1{query}", headers=headers) as resp:
        assert resp.status == 406
        assert (await outcome(resp))["issue"][0]["code"] == "not-supported"
    assert fake_upstream.requests == []


@pytest.mark.parametrize(
    "accept", ["application/fhir+json", "application/json", "*/*", "text/html, application/*"]
)
async def test_json_accept_values_are_forwarded(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str], accept: str
) -> None:
    headers = {**auth, "Accept": accept}
    async with gateway.session.get(f"{gateway.base}/Patient/p1", headers=headers) as resp:
        assert resp.status == 200
    assert fake_upstream.requests[0].headers["Accept"] == accept
