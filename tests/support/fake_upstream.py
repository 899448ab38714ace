"""A small FHIR upstream for tests that must see raw requests or inject faults.

It records every request exactly as it arrived (method, raw target, headers, body) and answers
from a programmable script. Real-data tests use the real sekmet-fhir server instead
(tests/support/sekmet.py); this one exists only where a real server cannot show what the
gateway forwarded, or cannot be made to fail on purpose.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict


@dataclass
class Recorded:
    method: str
    raw_target: str
    headers: CIMultiDict[str]
    body: bytes

    @property
    def path(self) -> str:
        return self.raw_target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.raw_target.partition("?")[2]


Responder = Callable[[web.Request, Recorded], Awaitable[web.StreamResponse]]


@dataclass
class FakeUpstream:
    """Start with ``await FakeUpstream.start()``; ``base_url`` ends in ``/fhir``."""

    server: TestServer | None = None
    requests: list[Recorded] = field(default_factory=list)
    responder: Responder | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}/fhir"

    @classmethod
    async def start(cls) -> FakeUpstream:
        fake = cls()
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", fake._handle)
        fake.server = TestServer(app, host="127.0.0.1")
        await fake.server.start_server()
        return fake

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rec = Recorded(
            method=request.method,
            raw_target=request.raw_path,
            headers=CIMultiDict(request.headers),
            body=await request.read(),
        )
        self.requests.append(rec)
        if self.responder is not None:
            return await self.responder(request, rec)
        return default_answer(self.base_url, rec)

    def reply(self, responder: Responder) -> None:
        self.responder = responder

    def reply_json(
        self, doc: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        body = json.dumps(doc).encode() if not isinstance(doc, bytes) else doc

        async def answer(_: web.Request, __: Recorded) -> web.StreamResponse:
            return web.Response(
                status=status,
                body=body,
                content_type="application/fhir+json",
                headers=headers or {},
            )

        self.responder = answer

    def reset(self) -> None:
        self.requests.clear()
        self.responder = None


def default_answer(base_url: str, rec: Recorded) -> web.Response:
    """A plausible FHIR answer: a resource for reads, a searchset for searches."""
    parts = [p for p in rec.path.split("/") if p][1:]  # drop "fhir"
    searching = bool(parts) and (parts[-1] == "_search" or parts[-1].startswith("$"))
    if rec.method == "GET" and parts == ["metadata"]:  # what the gateway's discovery fetches
        doc: dict[str, Any] = {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": "2026-01-01",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "rest": [{"mode": "server"}],
        }
    elif rec.method == "GET" and len(parts) == 2 and not searching:
        doc = {"resourceType": parts[0], "id": parts[1]}
    elif rec.method in ("POST", "PUT") and rec.body and len(parts) <= 2 and parts and not searching:
        doc = json.loads(rec.body) if rec.body.startswith(b"{") else {"resourceType": parts[0]}
        doc.setdefault("id", "new-1")
        return web.Response(
            status=201,
            body=json.dumps(doc).encode(),
            content_type="application/fhir+json",
            headers={"Location": f"{base_url}/{parts[0]}/new-1/_history/1", "ETag": 'W/"1"'},
        )
    else:
        doc = {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": [{"relation": "self", "url": self_link(base_url, rec)}],
            "entry": [],
        }
    return web.Response(body=json.dumps(doc).encode(), content_type="application/fhir+json")


def self_link(base_url: str, rec: Recorded) -> str:
    """The searchset's ``self`` link as a real server builds it: the parameters it used (the
    query, or a POST ``_search`` form body) on the search's URL (FHIR R4 search, "self link")."""
    parts = [p for p in rec.path.split("/") if p][1:]  # drop "fhir"
    query = rec.query
    if rec.method == "POST" and parts and parts[-1] == "_search":
        parts = parts[:-1]
        form = rec.body.decode("ascii", "replace") if rec.body else ""
        query = "&".join(q for q in (query, form) if q)
    url = f"{base_url}/{'/'.join(parts)}"
    return f"{url}?{query}" if query else url


async def slow(seconds: float) -> None:
    await asyncio.sleep(seconds)
