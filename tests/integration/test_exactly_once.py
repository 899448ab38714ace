"""Writes are forwarded exactly once, even when the pooled upstream connection turns out dead.

aiohttp's client silently repeats an "idempotent" request (GET, PUT, DELETE) once on a fresh
connection when a reused keep-alive connection is closed under it. For FHIR a repeated PUT or
DELETE is a second write, so the gateway turns that off: the client gets a 502 and the upstream
saw the write once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.conftest import GatewayFactory

OK = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: 38\r\n"
    b'Connection: keep-alive\r\n\r\n{"resourceType":"Patient","id":"p1"}  '
)


class DroppingUpstream:
    """Answers the first request on a connection, then drops it when the next one arrives."""

    def __init__(self) -> None:
        self.request_lines: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answered = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.request_lines.append(head.split(b"\r\n", 1)[0])
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                if answered:
                    break  # the pooled connection "dies" under the second request
                writer.write(OK)
                await writer.drain()
                answered += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/fhir"


@pytest.fixture
async def dropping() -> AsyncIterator[DroppingUpstream]:
    up = DroppingUpstream()
    up.server = await asyncio.start_server(up.handle, "127.0.0.1", 0)
    yield up
    up.server.close()
    await up.server.wait_closed()


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("PUT", b'{"resourceType":"Patient","id":"p1"}'),
        ("DELETE", None),
    ],
)
async def test_write_on_a_dead_pooled_connection_is_not_repeated(
    gateway_factory: GatewayFactory,
    dropping: DroppingUpstream,
    auth: dict[str, str],
    method: str,
    body: bytes | None,
) -> None:
    gw = await gateway_factory(dropping.url)
    async with gw.session.get(f"{gw.base}/Patient/p1", headers=auth) as resp:
        assert resp.status == 200  # warms the pooled connection
    headers = {**auth, "Content-Type": "application/fhir+json"}
    async with gw.session.request(
        method, f"{gw.base}/Patient/p1", data=body, headers=headers
    ) as resp:
        assert resp.status == 502  # a definite answer; the write may or may not have happened
    writes = [line for line in dropping.request_lines if line.startswith(method.encode())]
    assert len(writes) == 1, dropping.request_lines
