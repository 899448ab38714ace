"""CORS for browser SMART apps, and the health/readiness probes."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from gateway.app import LIFECYCLE
from tests.support.fake_upstream import FakeUpstream, Recorded
from tests.support.gateway import RunningGateway

APP = "https://app.example.test"  # the allowed origin of tests.support.gateway.make_config
EXPOSED = ("Location", "Content-Location", "ETag", "Last-Modified", "WWW-Authenticate")
NEEDED_REQUEST_HEADERS = ("Authorization", "Content-Type", "Prefer", "If-Match", "If-None-Exist")


def names(value: str) -> set[str]:
    return {v.strip().lower() for v in value.split(",") if v.strip()}


def preflight_headers(origin: str, method: str = "GET") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type, prefer, if-match",
    }


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/Patient/p1", "GET"),
        ("/Patient", "POST"),
        ("/Patient/p1", "PUT"),
        ("/Patient/p1", "PATCH"),
        ("/Patient/p1", "DELETE"),
        ("", "POST"),
    ],
)
async def test_preflight_from_allowed_origin(
    gateway: RunningGateway, fake_upstream: FakeUpstream, path: str, method: str
) -> None:
    async with gateway.session.options(
        gateway.base + path, headers=preflight_headers(APP, method)
    ) as resp:
        assert resp.status == 204
        assert resp.headers.getall("Access-Control-Allow-Origin") == [APP]
        allowed = names(resp.headers["Access-Control-Allow-Headers"])
        assert {h.lower() for h in NEEDED_REQUEST_HEADERS} <= allowed
        assert method in names(resp.headers["Access-Control-Allow-Methods"]) | {
            m.upper() for m in names(resp.headers["Access-Control-Allow-Methods"])
        }
        assert "origin" in names(",".join(resp.headers.getall("Vary")))
        assert "Access-Control-Allow-Credentials" not in resp.headers
        assert resp.headers["Server"] == "fhir-gateway"
    assert fake_upstream.requests == []


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "http://app.example.test",
        "https://app.example.test:8443",
        "https://app.example.test.evil.example",
        "https://APP.example.test",
        "null",
        "https://app.example.test/",
    ],
)
async def test_preflight_from_other_origin_is_refused(
    gateway: RunningGateway, fake_upstream: FakeUpstream, origin: str
) -> None:
    async with gateway.session.options(
        f"{gateway.base}/Patient/p1", headers=preflight_headers(origin)
    ) as resp:
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers
        assert "Access-Control-Allow-Headers" not in resp.headers
        doc = await resp.json(content_type=None)
        assert doc["resourceType"] == "OperationOutcome"
    assert fake_upstream.requests == []


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "FOO"])
async def test_preflight_for_unsupported_method_is_refused(
    gateway: RunningGateway, fake_upstream: FakeUpstream, method: str
) -> None:
    async with gateway.session.options(
        f"{gateway.base}/Patient/p1", headers=preflight_headers(APP, method)
    ) as resp:
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers
    assert fake_upstream.requests == []


def assert_cors_allowed(headers, origin: str = APP) -> None:  # type: ignore[no-untyped-def]
    assert headers.getall("Access-Control-Allow-Origin") == [origin]
    assert {h.lower() for h in EXPOSED} <= names(headers["Access-Control-Expose-Headers"])
    assert "origin" in names(",".join(headers.getall("Vary")))


async def test_actual_request_from_allowed_origin_gets_cors_headers(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    fake_upstream.reply_json(
        {"resourceType": "Patient", "id": "p1"},
        headers={"ETag": 'W/"1"', "Access-Control-Allow-Origin": "*"},
    )
    async with gateway.session.get(
        f"{gateway.base}/Patient/p1", headers={**auth, "Origin": APP}
    ) as resp:
        assert resp.status == 200
        assert_cors_allowed(resp.headers)


@pytest.mark.parametrize(
    ("path", "with_token", "status"),
    [("/Patient/p1", False, 401), ("/Patient/%2e%2e", True, 400), ("/Unicorn", True, 400)],
)
async def test_error_responses_carry_cors_headers(
    gateway: RunningGateway, auth: dict[str, str], path: str, with_token: bool, status: int
) -> None:
    from yarl import URL

    headers = {"Origin": APP, **(auth if with_token else {})}
    async with gateway.session.get(URL(gateway.base + path, encoded=True), headers=headers) as resp:
        assert resp.status == status
        assert_cors_allowed(resp.headers)
        if status == 401:  # the browser app must be able to read the challenge
            assert "WWW-Authenticate" in resp.headers


async def test_upstream_error_responses_carry_cors_headers(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    fake_upstream.reply_json({"resourceType": "OperationOutcome"}, status=500)
    async with gateway.session.get(
        f"{gateway.base}/Patient/p1", headers={**auth, "Origin": APP}
    ) as resp:
        assert resp.status == 502
        assert_cors_allowed(resp.headers)


async def test_streamed_binary_response_carries_cors_headers(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    async def answer(_: web.Request, __: Recorded) -> web.StreamResponse:
        return web.Response(body=b"\x89PNG....", content_type="image/png")

    fake_upstream.reply(answer)
    headers = {**auth, "Origin": APP, "Accept": "image/png"}
    async with gateway.session.get(f"{gateway.base}/Binary/b1", headers=headers) as resp:
        assert resp.status == 200
        assert await resp.read() == b"\x89PNG...."
        assert_cors_allowed(resp.headers)


@pytest.mark.parametrize("origin", ["https://evil.example", None])
async def test_request_from_other_origin_gets_no_cors_headers(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str], origin: str | None
) -> None:
    fake_upstream.reply_json(
        {"resourceType": "Patient", "id": "p1"},
        headers={"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Credentials": "true"},
    )
    headers = {**auth, **({"Origin": origin} if origin else {})}
    async with gateway.session.get(f"{gateway.base}/Patient/p1", headers=headers) as resp:
        assert resp.status == 200
        for name in (
            "Access-Control-Allow-Origin",
            "Access-Control-Expose-Headers",
            "Access-Control-Allow-Credentials",
        ):
            assert name not in resp.headers, name


@pytest.mark.parametrize("origin", ["https://evil.example", APP, None])
async def test_metadata_is_readable_from_any_origin(
    gateway: RunningGateway, fake_upstream: FakeUpstream, origin: str | None
) -> None:
    fake_upstream.reply_json({"resourceType": "CapabilityStatement", "status": "active"})
    headers = {"Origin": origin} if origin else {}
    async with gateway.session.get(f"{gateway.base}/metadata", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers.getall("Access-Control-Allow-Origin") == ["*"]
    async with gateway.session.options(
        f"{gateway.base}/metadata", headers=preflight_headers(origin or "https://x.example")
    ) as resp:
        assert resp.status == 204
        assert resp.headers.getall("Access-Control-Allow-Origin") == ["*"]
    assert len(fake_upstream.requests) == 1


# ----------------------------------------------------------------- probes


async def wait_ready(gw: RunningGateway) -> None:
    for _ in range(60):
        async with gw.session.get(f"{gw.origin}/readyz") as resp:
            if resp.status == 200:
                return
        await asyncio.sleep(0.05)
    raise AssertionError("gateway never became ready")


async def test_healthz_without_token(gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    for method in ("GET", "HEAD"):
        async with gateway.session.request(method, f"{gateway.origin}/healthz") as resp:
            assert resp.status == 200
            assert resp.headers["Server"] == "fhir-gateway"
    async with gateway.session.get(f"{gateway.origin}/healthz") as resp:
        assert (await resp.json())["status"] == "ok"
    assert fake_upstream.requests == []


async def test_readyz_ready_then_503_while_draining(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    await wait_ready(gateway)
    async with gateway.session.get(f"{gateway.origin}/readyz") as resp:
        doc = await resp.json()
        assert doc["status"] == "ready"
        assert doc["checks"]["draining"] is False
    gateway.app[LIFECYCLE].draining = True
    async with gateway.session.get(f"{gateway.origin}/readyz") as resp:
        assert resp.status == 503
        doc = await resp.json()
        assert doc["status"] == "not-ready"
        assert doc["checks"]["draining"] is True
    async with gateway.session.get(f"{gateway.origin}/healthz") as resp:
        assert resp.status == 200  # liveness is not readiness
    assert fake_upstream.requests == []
