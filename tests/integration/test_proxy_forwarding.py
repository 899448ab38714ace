"""Forwarding fidelity: what the upstream receives is exactly the validated client request.

Method, path (rebuilt from validated segments), query pairs (order and repeats), body bytes
(exactly once, never retried), the end-to-end headers, and nothing the client must not steer:
its bearer token, hop-by-hop headers, spoofable X-Forwarded-* values, ``access_token``.
"""

from __future__ import annotations

import asyncio
import base64
import re

import pytest
from aiohttp import web
from yarl import URL

from tests.support.fake_upstream import FakeUpstream, Recorded
from tests.support.gateway import RunningGateway

BODY = b'{ "resourceType" : "Patient",\n  "id": "p1", "weight": 1.50, "tiny": 1.0E-7 }'
PATCH = b'[ {"op": "replace", "path": "/active", "value": true} ]'
# Batch/transaction Bundles are rebuilt entry by entry from their validated parts:
# tests/integration/test_access_bundles.py pins what reaches the upstream.
FHIR_CT = "application/fhir+json; charset=utf-8"


@pytest.mark.parametrize(
    ("method", "raw_path", "body", "ctype", "upstream_target"),
    [
        ("GET", "/Patient/pat-1", None, None, "/fhir/Patient/pat-1"),
        ("GET", "/%50atient/1", None, None, "/fhir/Patient/1"),
        ("GET", "/Patient/1/", None, None, "/fhir/Patient/1"),
        (
            "GET",
            "/Observation?code=a&code=b&status=final&code=c&_count=5",
            None,
            None,
            "/fhir/Observation?code=a&code=b&status=final&code=c&_count=5",
        ),
        (
            "GET",
            "/Observation?code=http%3A%2F%2Floinc.org%7C1234-5&value-quantity=5.40+x&note=a%2Bb",
            None,
            None,
            "/fhir/Observation?code=http%3A%2F%2Floinc.org%7C1234-5&value-quantity=5.40%20x"
            "&note=a%2Bb",
        ),
        ("POST", "/Patient", BODY, FHIR_CT, "/fhir/Patient"),
        ("PUT", "/Patient/p1", BODY, FHIR_CT, "/fhir/Patient/p1"),
        ("PATCH", "/Patient/p1", PATCH, "application/json-patch+json", "/fhir/Patient/p1"),
        ("DELETE", "/Patient/p1", None, None, "/fhir/Patient/p1"),
    ],
    ids=[
        "read",
        "encoded-type",
        "trailing-slash",
        "search",
        "search-escapes",
        "create",
        "update",
        "patch",
        "delete",
    ],
)
async def test_interactions_reach_upstream_exactly(
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    auth: dict[str, str],
    method: str,
    raw_path: str,
    body: bytes | None,
    ctype: str | None,
    upstream_target: str,
) -> None:
    headers = dict(auth)
    if ctype:
        headers["Content-Type"] = ctype
    url = URL(gateway.base + raw_path, encoded=True)
    async with gateway.session.request(method, url, data=body, headers=headers) as resp:
        assert resp.status < 300, await resp.text()
    [rec] = fake_upstream.requests
    assert rec.method == method
    assert rec.raw_target == upstream_target
    assert rec.body == (body or b"")
    assert rec.headers.get("Content-Type") == ctype


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
@pytest.mark.parametrize("fault", ["status-500", "timeout"])
async def test_writes_are_sent_exactly_once_even_when_upstream_fails(
    gateway_factory, fake_upstream: FakeUpstream, auth: dict[str, str], method: str, fault: str
) -> None:
    gw = await gateway_factory(upstream={"timeout_s": 0.5})

    async def answer(_: web.Request, __: Recorded) -> web.StreamResponse:
        if fault == "timeout":
            await asyncio.sleep(1.0)
        return web.Response(status=500, text="boom")

    fake_upstream.reply(answer)
    path, body, ctype = {
        "POST": ("/Patient", BODY, FHIR_CT),
        "PUT": ("/Patient/p1", BODY, FHIR_CT),
        "PATCH": ("/Patient/p1", PATCH, "application/json-patch+json"),
    }[method]
    headers = {**auth, "Content-Type": ctype}
    async with gw.session.request(method, gw.base + path, data=body, headers=headers) as resp:
        assert resp.status == (504 if fault == "timeout" else 502)
    await asyncio.sleep(0.7)  # a retry would have arrived by now
    assert len(fake_upstream.requests) == 1
    assert fake_upstream.requests[0].body == body


async def test_client_authorization_is_not_forwarded_by_default(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    async with gateway.session.get(f"{gateway.base}/Patient/p1", headers=auth) as resp:
        assert resp.status == 200
    [rec] = fake_upstream.requests
    assert "Authorization" not in rec.headers
    token = auth["Authorization"].split()[1]
    assert all(token not in v for v in rec.headers.values())


async def test_client_authorization_forwarded_when_configured(
    gateway_factory, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    gw = await gateway_factory(upstream={"forward_authorization": True})
    async with gw.session.get(f"{gw.base}/Patient/p1", headers=auth) as resp:
        assert resp.status == 200
    assert fake_upstream.requests[0].headers.getall("Authorization") == [auth["Authorization"]]


@pytest.mark.parametrize(
    ("upstream_auth", "name", "value"),
    [
        ({"header": {"name": "X-Api-Key", "value": "k"}}, "X-Api-Key", "k"),
        (
            {"basic": {"username": "gw", "password": "s3cret"}},
            "Authorization",
            "Basic " + base64.b64encode(b"gw:s3cret").decode(),
        ),
    ],
    ids=["header", "basic"],
)
async def test_static_upstream_credentials_are_sent(
    gateway_factory,
    fake_upstream: FakeUpstream,
    auth: dict[str, str],
    upstream_auth: dict,
    name: str,
    value: str,
) -> None:
    gw = await gateway_factory(upstream={"auth": upstream_auth})
    async with gw.session.get(f"{gw.base}/Patient/p1", headers=auth) as resp:
        assert resp.status == 200
    [rec] = fake_upstream.requests
    assert rec.headers.getall(name) == [value]
    assert auth["Authorization"] not in rec.headers.getall("Authorization", [])


@pytest.mark.parametrize(
    ("sent", "kept"),
    [("abc-123_X.y", True), ("has space", False), ("a" * 129, False), ("<script>", False)],
    ids=["safe", "space", "too-long", "markup"],
)
async def test_request_id_accepted_or_generated_and_propagated(
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    auth: dict[str, str],
    sent: str,
    kept: bool,
) -> None:
    headers = {**auth, "X-Request-ID": sent}
    async with gateway.session.get(f"{gateway.base}/Patient/p1", headers=headers) as resp:
        rid = resp.headers["X-Request-ID"]
    if kept:
        assert rid == sent
    else:
        assert rid != sent
        assert re.fullmatch(r"[A-Za-z0-9._\-]{1,128}", rid)
    assert fake_upstream.requests[0].headers.getall("X-Request-ID") == [rid]


async def test_generated_request_id_without_client_value(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    ids = []
    for _ in range(2):
        async with gateway.session.get(f"{gateway.base}/Patient/p1", headers=auth) as resp:
            ids.append(resp.headers["X-Request-ID"])
    assert ids[0] != ids[1]
    assert [r.headers["X-Request-ID"] for r in fake_upstream.requests] == ids


async def test_hop_by_hop_request_headers_are_stripped(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    headers = {
        **auth,
        "Connection": "keep-alive, Prefer, X-Secret",
        "Prefer": "return=minimal",
        "X-Secret": "1",
        "Keep-Alive": "timeout=300",
        "TE": "trailers",
        "Proxy-Authorization": "Basic eDp5",
        "Accept-Language": "de",
    }
    async with gateway.session.get(f"{gateway.base}/Patient/p1", headers=headers) as resp:
        assert resp.status == 200
    [rec] = fake_upstream.requests
    for name in ("Prefer", "X-Secret", "Keep-Alive", "TE", "Proxy-Authorization"):
        assert name not in rec.headers, name
    assert "prefer" not in rec.headers.get("Connection", "").lower()
    assert rec.headers["Accept-Language"] == "de"  # an end-to-end header still goes through


async def test_hop_by_hop_and_upstream_identity_response_headers_are_stripped(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    fake_upstream.reply_json(
        {"resourceType": "Patient", "id": "p1"},
        headers={
            "Connection": "X-Secret, Content-Language",
            "X-Secret": "1",
            "Content-Language": "en",
            "Keep-Alive": "timeout=5",
            "Server": "upstream/1.0",
            "Set-Cookie": "sid=abc; Path=/",
            "Access-Control-Allow-Origin": "*",
            "X-Powered-By": "HAPI FHIR 6.0",
            "ETag": 'W/"7"',
        },
    )
    async with gateway.session.get(f"{gateway.base}/Patient/p1", headers=auth) as resp:
        assert resp.status == 200
        got = resp.headers
    for name in ("X-Secret", "Content-Language", "Keep-Alive", "Set-Cookie", "X-Powered-By"):
        assert name not in got, name
    assert "Access-Control-Allow-Origin" not in got  # no Origin sent: no CORS answer at all
    assert got.getall("Server") == ["fhir-gateway"]
    assert "x-secret" not in got.get("Connection", "").lower()
    assert got["ETag"] == 'W/"7"'


async def test_forwarded_headers_come_from_the_gateway_view(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    spoof = {
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example",
        "Forwarded": "for=6.6.6.6;proto=https;host=evil.example",
    }
    async with gateway.session.get(f"{gateway.base}/Patient/p1", headers={**auth, **spoof}) as resp:
        assert resp.status == 200
    [rec] = fake_upstream.requests
    assert rec.headers.getall("X-Forwarded-For") == ["127.0.0.1"]
    assert rec.headers.getall("X-Forwarded-Proto") == ["http"]
    assert rec.headers.getall("X-Forwarded-Host") == [f"127.0.0.1:{gateway.port}"]
    assert "Forwarded" not in rec.headers
    assert not any("6.6.6.6" in v or "evil.example" in v for v in rec.headers.values())


async def test_forwarded_headers_trusted_from_a_trusted_proxy(
    gateway_factory, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    gw = await gateway_factory(server={"trusted_proxies": ["127.0.0.0/8"]})
    spoof = {
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "fhir.example.test",
    }
    async with gw.session.get(f"{gw.base}/Patient/p1", headers={**auth, **spoof}) as resp:
        assert resp.status == 200
    [rec] = fake_upstream.requests
    assert rec.headers.getall("X-Forwarded-For") == ["6.6.6.6, 127.0.0.1"]
    assert rec.headers.getall("X-Forwarded-Proto") == ["https"]
    assert rec.headers.getall("X-Forwarded-Host") == ["fhir.example.test"]


async def test_access_token_in_query_alone_is_never_accepted(
    gateway: RunningGateway, fake_upstream: FakeUpstream, token: str
) -> None:
    async with gateway.session.get(
        f"{gateway.base}/Patient/p1", params={"access_token": token}
    ) as resp:
        assert resp.status == 401
        assert "invalid_request" not in resp.headers["WWW-Authenticate"]
        body = await resp.json(content_type=None)
    assert body["resourceType"] == "OperationOutcome"
    assert fake_upstream.requests == []


async def test_access_token_in_form_body_alone_is_never_accepted(
    gateway: RunningGateway, fake_upstream: FakeUpstream, token: str
) -> None:
    async with gateway.session.post(
        f"{gateway.base}/Observation/_search", data={"code": "x", "access_token": token}
    ) as resp:
        assert resp.status == 401
    assert fake_upstream.requests == []


@pytest.mark.parametrize("where", ["query", "form"])
async def test_access_token_with_header_is_invalid_request(
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    auth: dict[str, str],
    token: str,
    where: str,
) -> None:
    url = f"{gateway.base}/Observation/_search"
    if where == "query":
        url += f"?access_token={token}"
        kw: dict = {"data": {"code": "x"}}
    else:
        kw = {"data": {"code": "x", "access_token": token}}
    async with gateway.session.post(url, headers=auth, **kw) as resp:
        assert resp.status == 400
        assert 'error="invalid_request"' in resp.headers["WWW-Authenticate"]
        body = await resp.json(content_type=None)
    assert body["issue"][0]["code"] == "invalid"
    assert fake_upstream.requests == []


async def test_access_token_is_stripped_from_public_requests(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    url = URL(f"{gateway.base}/metadata?_format=json&access_token=abc.def&x=1", encoded=True)
    async with gateway.session.get(url) as resp:
        assert resp.status == 200
    [rec] = fake_upstream.requests  # the gateway fetches (and caches) its own statement:
    assert rec.raw_target == "/fhir/metadata"  # nothing of the client's query goes upstream
    assert "abc.def" not in rec.raw_target
