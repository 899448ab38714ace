"""Rate limits and the upstream concurrency cap, over real sockets (issue 8)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from tests.support.fake_upstream import FakeUpstream, Recorded, default_answer
from tests.support.gateway import RunningGateway
from tests.support.issuer import TestIssuer

GatewayFactory = Callable[..., Awaitable[RunningGateway]]


async def test_burst_beyond_bucket_gets_429_others_unaffected(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    gw = await gateway_factory(
        limits={"clients": {"user": {"rate_per_s": 0.5, "burst": 3}}},
    )
    greedy = issuer.mint(scope="user/*.rs", patient=None, client_id="greedy-app")
    polite = issuer.mint(scope="user/*.rs", patient=None, client_id="polite-app")

    async def get(token: str) -> tuple[int, dict[str, str], bytes]:
        async with gw.session.get(
            f"{gw.base}/Patient/p1", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            return resp.status, dict(resp.headers), await resp.read()

    results = [await get(greedy) for _ in range(6)]
    assert [r[0] for r in results] == [200, 200, 200, 429, 429, 429]
    _, headers, body = results[-1]
    assert int(headers["Retry-After"]) >= 1
    outcome = json.loads(body)
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "throttled"
    assert len(fake_upstream.requests) == 3  # refused requests never reach the upstream
    # another client of the same level has its own bucket
    assert [(await get(polite))[0] for _ in range(3)] == [200, 200, 200]


async def test_anonymous_requests_limited_per_address(
    gateway_factory: GatewayFactory, issuer: TestIssuer
) -> None:
    gw = await gateway_factory(limits={"anonymous": {"rate_per_s": 0.1, "burst": 2}})
    statuses = []
    for _ in range(4):
        async with gw.session.get(f"{gw.base}/Patient/p1") as resp:
            statuses.append(resp.status)
            if resp.status == 429:
                assert "Retry-After" in resp.headers
    assert statuses == [401, 401, 429, 429]
    token = issuer.mint(scope="user/*.rs", patient=None)
    async with gw.session.get(
        f"{gw.base}/Patient/p1", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        assert resp.status == 200  # a token-bearing client is judged by its own bucket
    async with gw.session.get(f"{gw.origin}/healthz") as resp:
        assert resp.status == 200  # probes are never limited


async def test_concurrency_cap_excess_gets_503(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request, rec: Recorded) -> web.StreamResponse:
        await release.wait()
        return default_answer(fake_upstream.base_url, rec)

    fake_upstream.reply(slow)
    gw = await gateway_factory(
        limits={"upstream_concurrency": 2, "upstream_queue": 1, "retry_after_s": 3}
    )
    token = issuer.mint(scope="user/*.rs", patient=None)

    async def get(i: int) -> tuple[int, str | None]:
        async with gw.session.get(
            f"{gw.base}/Patient/p{i}", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            await resp.read()
            return resp.status, resp.headers.get("Retry-After")

    tasks = [asyncio.create_task(get(i)) for i in range(5)]
    for _ in range(200):  # two in flight upstream, one waiting, two refused
        if len(fake_upstream.requests) == 2 and sum(t.done() for t in tasks) == 2:
            break
        await asyncio.sleep(0.01)
    assert len(fake_upstream.requests) == 2
    release.set()
    results = await asyncio.gather(*tasks)
    assert sorted(r[0] for r in results) == [200, 200, 200, 503, 503]
    assert all(r[1] == "3" for r in results if r[0] == 503)
    assert len(fake_upstream.requests) == 3
