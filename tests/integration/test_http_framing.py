"""HTTP/1.1 framing on raw sockets: every ambiguity is a 400 OperationOutcome, never forwarded.

The gateway runs on aiohttp's C (llhttp) parser with our own parser-error handler
(``gateway.server.GatewayRequestHandler``); these tests talk bytes to the real runner.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp.http_parser
import pytest

from gateway import server
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import RunningGateway, make_config, run_gateway

MARKER = b"PHIMARKER123"
GZ = gzip.compress(b'{"resourceType":"Patient"}')


@dataclass
class Answer:
    status: int
    headers: dict[str, list[str]]
    body: bytes
    raw: bytes

    def header(self, name: str) -> list[str]:
        return self.headers.get(name.lower(), [])


@dataclass
class Env:
    fake: FakeUpstream
    gw: RunningGateway


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    fake = await FakeUpstream.start()
    gw = await run_gateway(make_config(fake.base_url))
    try:
        yield Env(fake, gw)
    finally:
        await gw.close()
        await fake.close()


async def send_raw(port: int, raw: bytes) -> Answer:
    """Send bytes, read until the server closes the connection (a timeout fails the test)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(5):
            data = await reader.read()
    finally:
        writer.close()
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response: {data[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return Answer(status, headers, body, data)


def assert_outcome(ans: Answer, status: int | tuple[int, ...] = 400) -> dict[str, object]:
    statuses = status if isinstance(status, tuple) else (status,)
    assert ans.status in statuses, ans.raw[:300]
    assert MARKER not in ans.raw and MARKER.lower() not in ans.raw.lower()
    assert ans.header("Server") == ["fhir-gateway"]
    [ctype] = ans.header("Content-Type")
    assert ctype.split(";")[0] == "application/fhir+json"
    [length] = ans.header("Content-Length")
    assert int(length) == len(ans.body)
    doc = json.loads(ans.body)
    assert doc["resourceType"] == "OperationOutcome"
    assert doc["issue"][0]["severity"] == "error"
    for forbidden in (b"aiohttp", b"Python", b"Traceback", b"llhttp"):
        assert forbidden not in ans.raw
    return doc


def req(first: bytes, *headers: bytes, body: bytes = b"") -> bytes:
    return first + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


POST = b"POST /r4/Patient HTTP/1.1"
GET = b"GET /r4/metadata HTTP/1.1"
HOST = b"Host: fhir.example.test"
JSON = b"Content-Type: application/fhir+json"

FRAMING = [
    (
        req(
            POST, HOST, JSON, b"Content-Length: 5", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"
        ),
        "cl-and-te",
    ),
    (
        req(
            POST, HOST, JSON, b"Transfer-Encoding: chunked", b"Content-Length: 5", body=b"0\r\n\r\n"
        ),
        "te-and-cl",
    ),
    (
        req(POST, HOST, JSON, b"Content-Length: 2", b"Content-Length: 3", body=b"{} "),
        "two-content-lengths",
    ),
    (
        req(POST, HOST, JSON, b"Content-Length: 2", b"Content-Length: 2", body=b"{}"),
        "same-content-length-twice",
    ),
    (req(POST, HOST, JSON, b"Content-Length: 2, 2", body=b"{}"), "content-length-list"),
    (req(POST, HOST, JSON, b"Content-Length: -1", body=b"{}"), "negative-content-length"),
    (req(POST, HOST, JSON, b"Content-Length: +2", body=b"{}"), "signed-content-length"),
    (req(POST, HOST, JSON, b"Content-Length: 0x2", body=b"{}"), "hex-content-length"),
    (req(GET, HOST, b"X-Note: a", b" " + MARKER), "obs-fold-space"),
    (req(GET, HOST, b"X-Note: a", b"\t" + MARKER), "obs-fold-tab"),
    (req(GET, HOST, b"X-Note: a\r" + MARKER), "bare-cr-in-value"),
    (req(GET, HOST, b"X-Note: a\x00" + MARKER), "nul-in-value"),
    (req(GET, HOST, b"X-" + MARKER + b" : a"), "space-before-colon"),
    (
        req(POST, HOST, JSON, b"Transfer-Encoding : chunked", body=b"0\r\n\r\n"),
        "te-space-before-colon",
    ),
    (
        req(
            POST,
            HOST,
            JSON,
            b"Transfer-Encoding: chunked",
            body=b"zz" + MARKER + b"\r\n{}\r\n0\r\n\r\n",
        ),
        "malformed-chunk-size",
    ),
    (
        req(POST, HOST, JSON, b"Transfer-Encoding: chunked", body=b"-2\r\n{}\r\n0\r\n\r\n"),
        "negative-chunk-size",
    ),
    (
        req(
            POST,
            HOST,
            JSON,
            b"Transfer-Encoding: chunked",
            body=b"FFFFFFFFFFFFFFFFFFFF\r\n{}\r\n0\r\n\r\n",
        ),
        "overflowing-chunk-size",
    ),
    (req(POST, HOST, JSON, b"Transfer-Encoding: chunked", body=b"2\n{}\n0\n\n"), "chunk-bare-lf"),
    (
        req(POST, HOST, JSON, b"Transfer-Encoding: chunked, identity", body=b"0\r\n\r\n"),
        "te-chunked-identity",
    ),
    (req(POST, HOST, JSON, b"Transfer-Encoding: xchunked", body=b"0\r\n\r\n"), "te-xchunked"),
    (req(POST, HOST, JSON, b"Transfer-Encoding: identity", body=b"0\r\n\r\n"), "te-identity"),
    (
        req(
            POST,
            HOST,
            JSON,
            b"Transfer-Encoding: chunked",
            b"Transfer-Encoding: chunked",
            body=b"0\r\n\r\n",
        ),
        "te-twice",
    ),
    (req(GET, HOST, b"Host: other.example"), "two-hosts"),
    (req(GET), "no-host"),
    (b"GET /r4/metadata HTTP/1.1\nHost: x\nX-Note: " + MARKER + b"\n\n", "bare-lf-lines"),
    (req(b"GET /r4/Patient/" + MARKER + b" x HTTP/1.1", HOST), "space-in-target"),
    (req(b"GET /r4/metadata HTTP/9.9", HOST), "bad-version"),
    (req(GET, HOST, b"X-Big: " + b"A" * 9000 + MARKER), "header-too-long"),
    (req(GET, HOST, b"Bad\x01Name: " + MARKER), "control-in-name"),
    (
        req(GET, HOST, body=b"")
        + req(POST, HOST, b"Content-Length: 5", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
        "pipelined-smuggle-after-valid",
    ),
]


@pytest.mark.parametrize("raw", [f[0] for f in FRAMING], ids=[f[1] for f in FRAMING])
async def test_framing_ambiguity_refused(env: Env, raw: bytes) -> None:
    ans = await send_raw(env.gw.port, raw)  # returns only once the server closed the connection
    doc = assert_outcome(ans, (400, 431))
    assert doc["issue"][0]["code"] in ("invalid", "too-costly")
    assert env.fake.requests == []


@pytest.mark.parametrize(
    "target",
    [
        b"http://evil.example/r4/Patient/" + MARKER,
        b"https://fhir.example.test/r4/metadata?x=" + MARKER,
    ],
    ids=["foreign-host", "own-host"],
)
async def test_absolute_form_refused(env: Env, target: bytes) -> None:
    ans = await send_raw(
        env.gw.port, req(b"GET " + target + b" HTTP/1.1", HOST, b"Connection: close")
    )
    doc = assert_outcome(ans, 400)
    assert doc["issue"][0]["code"] == "invalid"
    assert env.fake.requests == []


@pytest.mark.parametrize(
    "first",
    [b"CONNECT evil.example:443 HTTP/1.1", b"OPTIONS * HTTP/1.1"],
    ids=["authority-form", "asterisk-form"],
)
async def test_other_target_forms_refused(env: Env, first: bytes) -> None:
    ans = await send_raw(env.gw.port, req(first, HOST, b"Connection: close"))
    assert_outcome(ans, (400, 404))
    assert env.fake.requests == []


@pytest.mark.parametrize(
    "path",
    [
        b"/r4/../r4/metadata",
        b"/r4/%2e%2e/r4/metadata",
        b"/r4//metadata",
        b"/r4/Patient%2F1",
        b"/r4/Patient/1%00",
        b"/r4/Patient/1#" + MARKER,
    ],
    ids=["dot-dot", "encoded-dot-dot", "double-slash", "encoded-slash", "encoded-nul", "fragment"],
)
async def test_path_tricks_refused_on_the_wire(env: Env, path: bytes) -> None:
    ans = await send_raw(
        env.gw.port, req(b"GET " + path + b" HTTP/1.1", HOST, b"Connection: close")
    )
    assert_outcome(ans, 400)
    assert env.fake.requests == []


async def test_valid_request_reaches_upstream(env: Env) -> None:
    """Control: the same socket helper does reach the upstream with a clean request."""
    ans = await send_raw(env.gw.port, req(GET, HOST, b"Connection: close"))
    assert ans.status == 200
    assert ans.header("Server") == ["fhir-gateway"]
    assert [r.raw_target for r in env.fake.requests] == ["/fhir/metadata"]


async def test_duplicated_content_encoding_refused(env: Env) -> None:
    """aiohttp decompresses with the last Content-Encoding; the check must see every value."""
    ans = await send_raw(
        env.gw.port,
        req(
            POST,
            HOST,
            JSON,
            b"Content-Encoding: identity",
            b"Content-Encoding: gzip",
            b"Content-Length: %d" % len(GZ),
            b"Connection: close",
            body=GZ,
        ),
    )
    assert_outcome(ans, 415)
    assert env.fake.requests == []


async def test_invalid_utf8_json_body_is_a_client_error(env: Env) -> None:
    body = b'{"name": "\xff' + MARKER + b'"}'
    ans = await send_raw(
        env.gw.port,
        req(POST, HOST, JSON, b"Content-Length: %d" % len(body), b"Connection: close", body=body),
    )
    assert_outcome(ans, (400, 401))
    assert env.fake.requests == []


# --------------------------------------------------------------------------- the C parser


def test_server_runs_on_the_c_parser() -> None:
    assert aiohttp.http_parser.HttpRequestParser.__module__ == "aiohttp._http_parser"
    server.require_c_parser()  # does not raise here


def test_pure_python_parser_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOHTTP_NO_EXTENSIONS", "1")
    with pytest.raises(SystemExit) as info:
        server.require_c_parser()
    assert "C HTTP parser" in str(info.value.code)


def test_python_parser_class_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIOHTTP_NO_EXTENSIONS", raising=False)
    monkeypatch.setattr(
        aiohttp.http_parser, "HttpRequestParser", aiohttp.http_parser.HttpRequestParserPy
    )
    with pytest.raises(SystemExit):
        server.require_c_parser()
