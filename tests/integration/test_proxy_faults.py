"""Upstream faults: each becomes the right status and a clean OperationOutcome.

Nothing of the upstream (host, port, software name, error page, stack trace) reaches the
client; redirects are never followed; a broken stream is never a complete 200.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from tests.support.fake_upstream import FakeUpstream, Recorded
from tests.support.gateway import RunningGateway

FHIR_JSON = "application/fhir+json"
TRACE = (
    'Traceback (most recent call last):\n  File "/srv/hapi/Server.py", line 42, in handle\n'
    "psycopg2.OperationalError: FATAL: password authentication failed for user fhiradmin"
)
LEAKS = ("Python", "aiohttp", "upstream/1.0", "Traceback", "psycopg2", "fhiradmin", "HAPI")

Answer = Callable[[web.Request, Recorded], Awaitable[web.StreamResponse]]


def assert_clean_error(
    status: int, headers: CIMultiDictProxy[str], raw: bytes, expected: int, fake: FakeUpstream
) -> dict:
    assert status == expected, raw
    assert headers["Content-Type"].startswith(FHIR_JSON)
    assert headers.getall("Server") == ["fhir-gateway"]
    port = fake.base_url.split(":")[2].split("/")[0]
    text = raw.decode() + "\n" + "\n".join(f"{k}: {v}" for k, v in headers.items())
    for needle in (*LEAKS, "127.0.0.1", f":{port}", "redirect-target"):
        assert needle not in text, needle
    doc = json.loads(raw)
    assert doc["resourceType"] == "OperationOutcome"
    assert doc["issue"][0]["code"] in ("transient", "timeout", "exception", "not-found")
    return doc


def text(body: str | bytes, ctype: str, status: int = 200) -> Answer:
    data = body.encode() if isinstance(body, str) else body

    async def answer(_: web.Request, __: Recorded) -> web.StreamResponse:
        return web.Response(
            status=status,
            body=data,
            headers={"Content-Type": ctype, "Server": "upstream/1.0", "X-Powered-By": "HAPI"},
        )

    return answer


def redirect(status: int) -> Answer:
    async def answer(request: web.Request, rec: Recorded) -> web.StreamResponse:
        if rec.path.endswith("/redirect-target"):
            return web.json_response({"resourceType": "Patient", "id": "moved"})
        return web.Response(
            status=status, headers={"Location": f"{request.url.origin()}/fhir/redirect-target"}
        )

    return answer


def slow(seconds: float) -> Answer:
    async def answer(_: web.Request, __: Recorded) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.json_response({"resourceType": "Patient", "id": "p1"})

    return answer


def cut_off(declared: int, sent: bytes, ctype: str = FHIR_JSON) -> Answer:
    """Declare ``declared`` bytes, send ``sent``, then drop the connection."""

    async def answer(request: web.Request, _: Recorded) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": ctype})
        resp.content_length = declared
        await resp.prepare(request)
        await resp.write(sent)
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        return resp

    return answer


def chunked(body: bytes) -> Answer:
    async def answer(request: web.Request, _: Recorded) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": FHIR_JSON})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(body), 512):
            await resp.write(body[i : i + 512])
        await resp.write_eof()
        return resp

    return answer


BIG = json.dumps({"resourceType": "Patient", "id": "p1", "pad": "x" * 5000}).encode()

FAULTS: list[tuple[str, Answer, int]] = [
    ("slow", slow(1.0), 504),
    ("status-500-trace", text(TRACE, "text/plain", 500), 502),
    (
        "status-503-fhir",
        text(b'{"resourceType":"OperationOutcome","issue":[]}', FHIR_JSON, 503),
        502,
    ),
    ("redirect-301", redirect(301), 502),
    ("redirect-302", redirect(302), 502),
    ("redirect-307", redirect(307), 502),
    ("redirect-308", redirect(308), 502),
    ("invalid-json", text(b'{"resourceType": "Patient", ', FHIR_JSON), 502),
    ("json-array", text(b"[1,2]", FHIR_JSON), 502),
    ("json-string", text(b'"Patient"', "application/json"), 502),
    ("json-no-type", text(b'{"id": "p1"}', FHIR_JSON), 502),
    ("json-bad-type", text(b'{"resourceType": 5}', FHIR_JSON), 502),
    ("html", text("<html><body>Welcome to HAPI on Python</body></html>", "text/html"), 502),
    ("xml", text(b'<Patient xmlns="http://hl7.org/fhir"/>', "application/fhir+xml"), 502),
    ("no-content-type", text(b'{"resourceType": "Patient"}', ""), 502),
    ("reset-mid-body", cut_off(1000, b'{"resourceType": "Patient", "id": "'), 502),
    ("too-large-declared", text(BIG, FHIR_JSON), 502),
    ("too-large-chunked", chunked(BIG), 502),
    # a read answered 404 becomes the gateway's own 404 (decision 3), whatever the upstream body
    ("error-404-html", text("<h1>Not Found</h1> Python/3.11 aiohttp", "text/html", 404), 404),
]


@pytest.mark.parametrize(
    ("answer", "expected"), [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS]
)
async def test_upstream_fault_becomes_clean_operation_outcome(
    gateway_factory,
    fake_upstream: FakeUpstream,
    auth: dict[str, str],
    answer: Answer,
    expected: int,
) -> None:
    gw = await gateway_factory(
        upstream={"timeout_s": 0.5}, server={"max_response_body_bytes": 2048}
    )
    fake_upstream.reply(answer)
    async with gw.session.get(f"{gw.base}/Patient/p1", headers=auth) as resp:
        raw = await resp.read()
        assert_clean_error(resp.status, resp.headers, raw, expected, fake_upstream)
    await asyncio.sleep(0.1)
    # exactly one upstream request: no retry, and a redirect target receives nothing
    assert [r.path for r in fake_upstream.requests] == ["/fhir/Patient/p1"]


async def test_connection_refused_is_502(
    gateway_factory, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gw = await gateway_factory(upstream_url=f"http://127.0.0.1:{port}/fhir")
    async with gw.session.get(f"{gw.base}/Patient/p1", headers=auth) as resp:
        raw = await resp.read()
        assert resp.status == 502
        assert f":{port}" not in raw.decode()
        assert all(f":{port}" not in v for v in resp.headers.values())
        assert json.loads(raw)["issue"][0]["code"] == "transient"
        assert resp.headers["Content-Type"].startswith(FHIR_JSON)


async def test_not_modified_is_answered_by_the_gateway_after_verification(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    """The upstream's 304 would skip verification: it gets no conditional header, and the
    gateway answers 304 itself once the resource passed its checks."""

    async def answer(_: web.Request, rec: Recorded) -> web.StreamResponse:
        assert "If-None-Match" not in rec.headers
        return web.Response(
            body=b'{"resourceType": "Patient", "id": "p1"}',
            content_type="application/fhir+json",
            headers={"ETag": 'W/"3"'},
        )

    fake_upstream.reply(answer)
    headers = {**auth, "If-None-Match": 'W/"3"'}
    async with gateway.session.get(f"{gateway.base}/Patient/p1", headers=headers) as resp:
        assert resp.status == 304
        assert resp.headers["ETag"] == 'W/"3"'
        assert await resp.read() == b""


async def test_json_answer_cut_off_after_headers_is_502(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    fake_upstream.reply(cut_off(100_000, b'{"resourceType": "Bundle", "entry": [' + b" " * 70_000))
    async with gateway.session.get(f"{gateway.base}/Observation", headers=auth) as resp:
        raw = await resp.read()
        assert_clean_error(resp.status, resp.headers, raw, 502, fake_upstream)


async def test_binary_stream_dying_midway_is_a_broken_transfer(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    total, sent = 2 * 1024 * 1024, 1024 * 1024
    fake_upstream.reply(cut_off(total, b"\x89PNG" + b"\0" * (sent - 4), "image/png"))
    headers = {**auth, "Accept": "image/png"}
    async with gateway.session.get(f"{gateway.base}/Binary/b1", headers=headers) as resp:
        assert resp.status == 200  # the headers had gone out before the upstream died
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_slow_binary_stream_times_out_as_broken_transfer(
    gateway_factory, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    gw = await gateway_factory(upstream={"timeout_s": 0.5})

    async def answer(request: web.Request, _: Recorded) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = 10_000
        await resp.prepare(request)
        await resp.write(b"a" * 5000)
        await asyncio.sleep(1.0)
        return resp

    fake_upstream.reply(answer)
    headers = {**auth, "Accept": "application/octet-stream"}
    async with gw.session.get(f"{gw.base}/Binary/b1", headers=headers) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
