"""Attack review: opaque tokens (RFC 7662), JWKS edge cases, the admin listener, CORS on
errors and rate-limit bypasses, over real sockets.

Failing tests document gaps found in review (docstring ``Found in review:``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from gateway.config import parse_config
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import PUBLIC_BASE, RunningGateway
from tests.support.issuer import IssuerFactory, TestIssuer, b64url, new_key, sign

GatewayFactory = Callable[..., Awaitable[RunningGateway]]
APP = "https://app.example.test"


def with_introspection(issuer: TestIssuer, **overrides: Any) -> dict[str, Any]:
    return {
        "auth": {
            "jwt": [{"issuer": issuer.url, "jwks_uri": issuer.jwks_uri}],
            "introspection": issuer.introspection(**overrides).model_dump(),
        }
    }


async def get(
    gw: RunningGateway, path: str, token: str | None = None, **headers: str
) -> tuple[int, Any, bytes]:
    hdrs = dict(headers)
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    async with gw.session.get(f"{gw.base}/{path}", headers=hdrs) as resp:
        return resp.status, resp.headers.copy(), await resp.read()


# ---------------------------------------------------------------- opaque tokens


@pytest.mark.parametrize(
    ("answer", "path", "status"),
    [
        ({"aud": "https://other.example/fhir"}, "Patient/pat-1", 401),
        ({"exp": "past"}, "Patient/pat-1", 401),
        ({"token_type": "refresh_token"}, "Patient/pat-1", 401),
        ({"patient": ["pat-1", "pat-2"]}, "Patient/pat-1", 401),
        ({"patient": {"id": "pat-1"}}, "Patient/pat-1", 401),
        ({"patient": "pat-1/../pat-2"}, "Patient/pat-1", 401),
        ({"active": "true"}, "Patient/pat-1", 401),
        # patient/ scope but no patient in context: grants nothing, nothing goes upstream
        ({"patient": None}, "Observation", 403),
    ],
)
async def test_opaque_token_bad_answers_are_refused_end_to_end(
    gateway_factory: GatewayFactory,
    fake_upstream: FakeUpstream,
    issuer: TestIssuer,
    answer: dict[str, Any],
    path: str,
    status: int,
) -> None:
    gw = await gateway_factory(**with_introspection(issuer))
    token = issuer.issue_opaque()
    resolved = dict(answer)
    if resolved.get("exp") == "past":
        resolved["exp"] = int(time.time()) - 3600
    issuer.opaque_tokens[token].update(resolved)
    issuer.opaque_tokens[token] = {
        k: v for k, v in issuer.opaque_tokens[token].items() if v is not None
    }
    got, _, _ = await get(gw, path, token)
    assert got == status
    assert fake_upstream.requests == []


async def test_opaque_answer_for_another_client_is_accepted_as_is(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    """Documented behaviour pinned: the gateway has no expected ``client_id`` for opaque
    tokens; the answer's ``client_id`` only selects the rate-limit bucket and the audit field.
    Without ``aud`` in the answer the token is accepted (the AS is trusted on audience)."""
    gw = await gateway_factory(**with_introspection(issuer))
    token = issuer.issue_opaque(client_id="some-other-app", aud=None)
    status, _, _ = await get(gw, "Patient/pat-1", token)
    assert status == 200


async def test_html_200_from_introspection_is_503_and_not_cached(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    gw = await gateway_factory(**with_introspection(issuer))
    token = issuer.issue_opaque()
    issuer.introspection_body = b"<html><body>Login</body></html>"
    status, headers, _ = await get(gw, "Patient/pat-1", token, Origin=APP)
    assert status == 503
    assert headers.get("Access-Control-Allow-Origin") == APP
    issuer.introspection_body = None
    assert (await get(gw, "Patient/pat-1", token))[0] == 200
    assert len(fake_upstream.requests) == 1


async def test_introspection_redirect_is_not_followed(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    """A 307 to the real endpoint (which would say active) must not be followed."""

    async def redirect(_: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(issuer.introspection_endpoint)

    app = web.Application()
    app.router.add_post("/introspect", redirect)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        gw = await gateway_factory(
            **with_introspection(issuer, endpoint=f"http://127.0.0.1:{port}/introspect")
        )
        token = issuer.issue_opaque()
        status, _, _ = await get(gw, "Patient/pat-1", token)
        assert status == 503
        assert issuer.requests["/introspect"] == 0
        assert fake_upstream.requests == []
    finally:
        await runner.cleanup()


async def test_slow_introspection_is_503_and_not_cached_as_valid_or_invalid(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    gw = await gateway_factory(**with_introspection(issuer, timeout_s=0.3))
    token = issuer.issue_opaque()
    issuer.introspection_delay_s = 1.0
    status, headers, _ = await get(gw, "Patient/pat-1", token)
    assert status == 503
    assert "Retry-After" in headers
    # revoked meanwhile: the failed look-up must not have left a positive entry behind
    issuer.revoke(token)
    issuer.introspection_delay_s = 0.0
    await asyncio.sleep(0.8)  # let the late answer of the first request arrive, if any
    assert (await get(gw, "Patient/pat-1", token))[0] == 401
    assert fake_upstream.requests == []


async def test_tokens_with_a_shared_prefix_do_not_share_a_cache_entry(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    gw = await gateway_factory(**with_introspection(issuer))
    good = issuer.issue_opaque()
    assert (await get(gw, "Patient/pat-1", good))[0] == 200
    for suffix in ("x", "A", good[-1]):
        variant = good + suffix
        assert (await get(gw, "Patient/pat-1", variant))[0] == 401
    assert (await get(gw, "Patient/pat-1", good[:-1]))[0] == 401
    # another valid token with the same prefix gets its own patient, never the first one's
    other = good[:20] + "Z" * (len(good) - 20)
    issuer.opaque_tokens[other] = {**issuer.opaque_tokens[good], "patient": "pat-2"}
    assert (await get(gw, "Patient/pat-1", other))[0] == 404
    assert issuer.introspection_forms[-1]["token"] == other


# ---------------------------------------------------------------- JWTs and key sets


async def test_kidless_jwt_with_several_keys_signed_by_a_foreign_key_is_refused(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    issuer.rotate(keep_previous=True)
    issuer.ec_key = new_key("ec")  # three keys in the set, none of them signs the token
    gw = await gateway_factory()
    foreign = new_key("rsa")
    for _ in range(3):
        foreign = new_key("rsa")  # a different pool slot from the issuer's two
        if foreign.private not in {k.private for k in (*issuer.keys, *issuer.previous_keys)}:
            break
    token = issuer.mint(key=foreign, headers={"kid": None})
    assert (await get(gw, "Patient/pat-1", token))[0] == 401
    # the previous key without kid still verifies (every key is tried)
    old = issuer.previous_keys[0]
    assert (await get(gw, "Patient/pat-1", issuer.mint(key=old, headers={"kid": None})))[0] == 200


async def test_symmetric_oct_key_in_jwks_cannot_verify_an_hs256_token(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    secret = b"s" * 32
    issuer.jwks_extra_keys = [{"kty": "oct", "k": b64url(secret), "kid": "sym"}]
    gw = await gateway_factory()
    for kid in ("sym", None):
        header = {"alg": "HS256", "typ": "at+jwt", **({"kid": kid} if kid else {})}
        token = sign(header, issuer.claims(), secret)  # type: ignore[arg-type]
        assert (await get(gw, "Patient/pat-1", token))[0] == 401
    # RSA public key material used as an HMAC secret (the classic confusion) is refused too
    pem = issuer.current_key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = json.dumps({"alg": "HS256", "typ": "at+jwt"}).encode()
    signing_input = f"{b64url(header)}.{b64url(json.dumps(issuer.claims()).encode())}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    assert (await get(gw, "Patient/pat-1", f"{signing_input}.{b64url(mac)}"))[0] == 401
    assert fake_upstream.requests == []


async def test_jwt_signed_with_another_configured_issuers_key_is_refused(
    gateway_factory: GatewayFactory,
    fake_upstream: FakeUpstream,
    issuer: TestIssuer,
    issuer_factory: IssuerFactory,
) -> None:
    other = await issuer_factory(PUBLIC_BASE)
    gw = await gateway_factory(
        auth={
            "jwt": [
                {"issuer": issuer.url, "jwks_uri": issuer.jwks_uri},
                {"issuer": other.url, "jwks_uri": other.jwks_uri},
            ]
        }
    )
    # sanity: both issuers work with their own keys
    assert (await get(gw, "Patient/pat-1", issuer.mint()))[0] == 200
    assert (await get(gw, "Patient/pat-1", other.mint()))[0] == 200
    # iss = issuer, signed by other's key, with other's kid and without kid
    forged = issuer.mint(key=other.current_key)
    forged_no_kid = issuer.mint(key=other.current_key, headers={"kid": None})
    for token in (forged, forged_no_kid):
        assert (await get(gw, "Patient/pat-1", token))[0] == 401
    assert len(fake_upstream.requests) == 2


# ---------------------------------------------------------------- admin listener


@pytest.mark.parametrize("path", ["/metrics", "/r4/metrics", "/admin/metrics", "/metrics/"])
async def test_metrics_are_not_served_on_the_public_port(
    gateway: RunningGateway, fake_upstream: FakeUpstream, path: str
) -> None:
    async with gateway.session.get(gateway.origin + path) as resp:
        body = await resp.text()
        assert resp.status == 404 if path == "/metrics" else resp.status in (400, 401, 404)
        assert "fhir_gateway_" not in body
    assert fake_upstream.requests == []


async def test_public_healthz_leaks_nothing(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    async with gateway.session.get(gateway.origin + "/healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}
        assert resp.headers["Server"] == "fhir-gateway"
        assert "Access-Control-Allow-Origin" not in resp.headers


def test_admin_listener_binds_to_loopback_by_default(tmp_path: Path) -> None:
    """Found in review: with the defaults (`server.host: 0.0.0.0`, `admin_host: null`) the
    unauthenticated admin listener (`/metrics`, `/readyz`) binds to every interface on 9090.
    operations.md asks operators to set `admin_host: 127.0.0.1` or a NetworkPolicy, but the
    default is not loopback and no `config.risky` warning is emitted, so a plain deployment
    exposes metrics (issuer URLs, policy ids, traffic shape) to the network."""
    cfg = parse_config(
        {"server": {"public_base_url": PUBLIC_BASE}, "upstream": {"url": "https://fhir.test/r4"}},
        base_dir=tmp_path,
    )
    host = cfg.server.admin_host or cfg.server.host
    assert cfg.server.admin_port is not None
    assert ipaddress.ip_address(host).is_loopback, host


# ---------------------------------------------------------------- CORS on errors


async def test_cors_headers_on_403_404_429_for_allowed_origin_only(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    gw = await gateway_factory(limits={"clients": {"patient": {"rate_per_s": 0.01, "burst": 3}}})
    cases = [("Condition", 403), ("Patient/pat-2", 404)]
    for origin in (APP, "https://evil.example"):
        issuer_token = issuer.mint(
            scope="patient/Observation.rs patient/Patient.rs", client_id=f"c-{origin}"
        )
        for path, status in cases:
            got, headers, _ = await get(gw, path, issuer_token, Origin=origin)
            assert got == status, path
            if origin == APP:
                assert headers.get("Access-Control-Allow-Origin") == APP
                exposed = {
                    h.strip().lower()
                    for h in headers.get("Access-Control-Expose-Headers", "").split(",")
                }
                assert "authorization" not in exposed
                assert "www-authenticate" in exposed
            else:
                for name in headers:
                    assert not name.lower().startswith("access-control-"), name
        # third request of the bucket passes, the fourth is 429
        await get(gw, "Observation", issuer_token, Origin=origin)
        got, headers, _ = await get(gw, "Observation", issuer_token, Origin=origin)
        assert got == 429
        assert "Retry-After" in headers
        if origin == APP:
            assert headers.get("Access-Control-Allow-Origin") == APP
            assert "retry-after" in headers.get("Access-Control-Expose-Headers", "").lower()
        else:
            assert "Access-Control-Allow-Origin" not in headers


async def test_cors_on_401_for_disallowed_origin_is_absent(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    got, headers, _ = await get(gateway, "Patient/p1", "garbage", Origin="https://evil.example")
    assert got == 401
    assert "WWW-Authenticate" in headers
    assert not [h for h in headers if h.lower().startswith("access-control-")]


# ---------------------------------------------------------------- rate limits


async def test_client_bucket_not_bypassed_by_xff_or_many_tokens(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    gw = await gateway_factory(limits={"clients": {"user": {"rate_per_s": 0.01, "burst": 3}}})
    statuses = []
    for i in range(6):
        token = issuer.mint(scope="user/*.rs", patient=None, client_id="greedy", sub=f"u{i}")
        got, _, _ = await get(
            gw,
            "Patient/p1",
            token,
            **{"X-Forwarded-For": f"10.0.0.{i}", "X-Real-IP": f"10.1.0.{i}"},
        )
        statuses.append(got)
    assert statuses == [200, 200, 200, 429, 429, 429]
    assert len(fake_upstream.requests) == 3


async def test_anonymous_bucket_not_bypassed_by_xff_from_untrusted_peer(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    gw = await gateway_factory(limits={"anonymous": {"rate_per_s": 0.01, "burst": 2}})
    statuses = []
    for i in range(5):
        async with gw.session.get(
            f"{gw.base}/Patient/p1",
            headers={"X-Forwarded-For": f"203.0.113.{i}", "Forwarded": f"for=198.51.100.{i}"},
        ) as resp:
            statuses.append(resp.status)
    assert statuses == [401, 401, 429, 429, 429]


async def test_opaque_tokens_of_one_client_share_the_bucket(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    gw = await gateway_factory(
        limits={"clients": {"user": {"rate_per_s": 0.01, "burst": 2}}},
        **with_introspection(issuer),
    )
    statuses = []
    for i in range(4):
        token = issuer.issue_opaque(scope="user/*.rs", patient=None, client_id="opq", sub=f"s{i}")
        statuses.append((await get(gw, "Patient/p1", token))[0])
    assert statuses == [200, 200, 429, 429]
