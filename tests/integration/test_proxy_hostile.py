"""Hostile request targets and headers over real HTTP, and error responses that leak nothing.

Targets are sent over a raw socket so that no client library normalises them first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass

import pytest
from aiohttp import web

from tests.support.fake_upstream import FakeUpstream, Recorded
from tests.support.gateway import RunningGateway


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


async def raw_http(port: int, head: str, body: bytes = b"") -> RawResponse:
    """Send one request exactly as written (``head`` without the final blank line)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode("latin-1") + b"\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
    length = [int(v) for k, v in headers if k.lower() == "content-length"]
    return RawResponse(status, headers, rest[: length[0]] if length else rest)


def assert_no_leak(resp: RawResponse) -> dict:
    assert resp.header("Server") == ["fhir-gateway"]
    everything = (resp.body.decode() + repr(resp.headers)).lower()
    for needle in ("python", "aiohttp", "traceback", "127.0.0.1"):
        assert needle not in everything, needle
    assert resp.header("Content-Type")[0].startswith("application/fhir+json")
    doc = json.loads(resp.body)
    assert doc["resourceType"] == "OperationOutcome"
    assert isinstance(doc["issue"][0]["code"], str) and doc["issue"][0]["code"]
    return doc


HOSTILE_TARGETS = [
    "/r4/Patient/../Patient/1",
    "/r4/Patient/./1",
    "/r4/Patient/1/..",
    "/r4/./Patient/1",
    "/r4/Patient/%2e%2e/Patient/1",
    "/r4/Patient/%2E/1",
    "/r4/Patient/.%2e/1",
    "/r4/%2e%2e/admin",
    "/r4/Patient%2F1",
    "/r4/Patient/1%2F..%2F2",
    "/r4/Patient/1%2f2",
    "/r4/Patient/1%5C..%5C2",
    "/r4/Patient\\1",
    "/r4//Patient/1",
    "/r4/Patient//1",
    "//r4/Patient/1",
    "/r4/Patient/1%00",
    "/r4/Patient/1%00.json",
    "/r4/Patient/1%0d%0aX-Injected:%20yes",
    "/r4/Patient/1%09",
    "/r4/Patient?name=a%0d%0aX-Injected:%20yes",
    "/r4/Patient/%252e%252e/1",
    "/r4/Patient/%25252e",
    "/r4/Patient/1%",
    "/r4/Patient/1?_id=%ZZ",
    "/r4/Patient/1?x=%FF",
    "/r4/Patient?=x",
    "/r4/Patient/1;jsessionid=abc",
    "/r4/Patient;v=1/1",
    "/r4/Patient/1#frag",
    "/r4/Unicorn/1",
    "/r4/patient/1",
    "/r4/%55nicorn",
    "/r4/Patient/" + "a" * 65,
    "/r4/Patient/a_b",
    "/r4/Patient/%C3%A9",
    "/r4/Patient/1/_history/v_1",
    "/r4/Patient/1/$",
    "/r4/Patient/1/Observation/x",
    "/r4/Patient/1/unknown",
    "http://evil.example/r4/Patient/1",
    "http://127.0.0.1/r4/Patient/1",
]


@pytest.mark.parametrize("target", HOSTILE_TARGETS)
async def test_hostile_target_is_400_and_not_forwarded(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str], target: str
) -> None:
    resp = await raw_http(
        gateway.port,
        f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth['Authorization']}",
    )
    assert resp.status == 400, resp.body
    doc = assert_no_leak(resp)
    assert doc["issue"][0]["code"] in ("invalid", "not-supported")
    assert "X-Injected" not in repr(resp.headers)
    assert fake_upstream.requests == []


HOSTILE_HEADERS = {
    "method-override": "X-HTTP-Method-Override: DELETE",
    "x-http-method": "X-HTTP-Method: DELETE",
    "x-method-override": "X-Method-Override: PUT",
    "two-authorization": "Authorization: Bearer abc.def.ghi",
    "two-host": "Host: evil.example",
    "two-request-id": "X-Request-ID: a\r\nX-Request-ID: b",
    "two-if-match": 'If-Match: W/"1"\r\nIf-Match: W/"2"',
    "two-origin": "Origin: https://a.example\r\nOrigin: https://b.example",
    "cl-and-te": "Content-Length: 5\r\nTransfer-Encoding: chunked",
    "two-content-length": "Content-Length: 0\r\nContent-Length: 5",
    "obs-fold": "X-Folded: a\r\n b",
    "space-before-colon": "Accept : application/fhir+json",
}


@pytest.mark.parametrize("extra", HOSTILE_HEADERS.values(), ids=HOSTILE_HEADERS.keys())
async def test_hostile_header_is_400_and_not_forwarded(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str], extra: str
) -> None:
    resp = await raw_http(
        gateway.port,
        "GET /r4/Patient/1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: {auth['Authorization']}\r\n{extra}",
    )
    assert resp.status == 400, resp.body
    assert_no_leak(resp)
    assert fake_upstream.requests == []


async def test_method_override_on_post_is_400(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    headers = {**auth, "X-HTTP-Method-Override": "DELETE"}
    async with gateway.session.post(
        f"{gateway.base}/Patient", json={"resourceType": "Patient"}, headers=headers
    ) as resp:
        assert resp.status == 400
    assert fake_upstream.requests == []


async def test_valid_raw_request_is_forwarded(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    """Control: the raw client itself is fine; a clean target goes through."""
    resp = await raw_http(
        gateway.port,
        "GET /r4/Patient/p-1.x HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: {auth['Authorization']}",
    )
    assert resp.status == 200
    assert [r.raw_target for r in fake_upstream.requests] == ["/fhir/Patient/p-1.x"]


# ----------------------------------------------------------------- errors never leak


@pytest.fixture
async def strict_gw(gateway_factory, fake_upstream: FakeUpstream) -> RunningGateway:
    async def answer(_: web.Request, rec: Recorded) -> web.StreamResponse:
        if rec.path.endswith("/slow"):
            await asyncio.sleep(1.0)
        return web.Response(
            status=500,
            text="Traceback (most recent call last): aiohttp Python/3.11",
            headers={"Server": "Python/3.11 aiohttp/3.9"},
        )

    fake_upstream.reply(answer)
    return await gateway_factory(
        upstream={"timeout_s": 0.5}, server={"max_request_body_bytes": 1024}
    )


ERRORS = [
    ("404-outside-base", "GET /other/Patient/1 HTTP/1.1", b"", 404),
    ("404-root", "GET / HTTP/1.1", b"", 404),
    ("404-base-prefix", "GET /r4x/Patient HTTP/1.1", b"", 404),
    ("405-put-metadata", "PUT /r4/metadata HTTP/1.1\r\nContent-Length: 0", b"", 405),
    ("405-post-instance", "POST /r4/Patient/1 HTTP/1.1\r\nContent-Length: 0", b"", 405),
    ("405-trace", "TRACE /r4/Patient/1 HTTP/1.1", b"", 405),
    ("400-target", "GET /r4/Patient/%2e%2e HTTP/1.1", b"", 400),
    ("401-no-token", "GET /r4/Patient/1 HTTP/1.1", b"", 401),
    ("406-xml", "GET /r4/Patient/1 HTTP/1.1\r\nAccept: application/fhir+xml", b"", 406),
    (
        "413-body",
        "POST /r4/Patient HTTP/1.1\r\nContent-Type: application/fhir+json\r\nContent-Length: 2048",
        b"{" + b" " * 2046 + b"}",
        413,
    ),
    (
        "415-xml-body",
        "POST /r4/Patient HTTP/1.1\r\nContent-Type: application/fhir+xml\r\nContent-Length: 2",
        b"<a",
        415,
    ),
    ("502-upstream-500", "GET /r4/Patient/1 HTTP/1.1", b"", 502),
    ("504-upstream-slow", "GET /r4/Patient/slow HTTP/1.1", b"", 504),
    ("400-bad-version", "GET /r4/Patient/1 HTTP/9.9", b"", 400),
]


@pytest.mark.parametrize(
    ("head", "body", "status"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
async def test_gateway_errors_never_leak(
    strict_gw: RunningGateway, auth: dict[str, str], head: str, body: bytes, status: int
) -> None:
    method_line, _, rest = head.partition("\r\n")
    lines = [method_line, "Host: fhir.example.test"]
    if status != 401:
        lines.append(f"Authorization: {auth['Authorization']}")
    if rest:
        lines.append(rest)
    resp = await raw_http(strict_gw.port, "\r\n".join(lines), body)
    assert resp.status == status, resp.body
    assert_no_leak(resp)
    if status == 405:
        assert resp.header("Allow")
    if status == 401:
        assert resp.header("WWW-Authenticate")[0].startswith("Bearer realm=")


@pytest.mark.parametrize("size", [9000, 20000])
async def test_oversized_header_is_431_without_echo(
    gateway: RunningGateway, fake_upstream: FakeUpstream, size: int
) -> None:
    """errors.HeadersTooLarge / server.GatewayRequestHandler promise 431 for this case."""
    resp = await raw_http(gateway.port, "GET /r4/Patient/1 HTTP/1.1\r\nX-Big: " + "PHI" * size)
    assert_no_leak(resp)
    assert b"PHIPHI" not in resp.body
    assert resp.status == 431
    assert fake_upstream.requests == []
