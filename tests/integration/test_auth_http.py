"""Token validation as an app sees it: RFC 6750 answers over HTTP, and nothing reaches the
upstream unless the token is good."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from tests.conftest import GatewayFactory
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import PUBLIC_BASE, RunningGateway
from tests.support.issuer import TestIssuer


def b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def hostile_tokens(issuer: TestIssuer) -> dict[str, str]:
    good = issuer.mint()
    head, payload, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    return {
        "alg-none": f"{b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "tampered-payload": f"{head}.{b64({**claims, 'patient': 'someone-else'})}.{sig}",
        "tampered-signature": f"{head}.{payload}.{sig[:-4]}AAAA",
        "expired": issuer.mint(exp=1_000_000, iat=999_000),
        "wrong-audience": issuer.mint(aud="https://other.example/fhir"),
        "no-audience": issuer.mint(aud=None),
        "wrong-issuer": issuer.mint(iss="https://evil.example"),
        "no-exp": issuer.mint(exp=None),
        "bad-patient": issuer.mint(patient="../Patient/x"),
        "id-token": issuer.mint(nonce="n-1", scope=None),
        "foreign-jku": issuer.mint(headers={"jku": "http://127.0.0.1:9/jwks", "kid": "nope"}),
        "garbage": "not.a.token",
    }


@pytest.mark.parametrize(
    "name",
    [
        "alg-none",
        "tampered-payload",
        "tampered-signature",
        "expired",
        "wrong-audience",
        "no-audience",
        "wrong-issuer",
        "no-exp",
        "bad-patient",
        "id-token",
        "foreign-jku",
        "garbage",
    ],
)
async def test_hostile_token_is_401_invalid_token_and_nothing_forwarded(
    gateway: RunningGateway, fake_upstream: FakeUpstream, issuer: TestIssuer, name: str
) -> None:
    token = hostile_tokens(issuer)[name]
    async with gateway.session.get(
        f"{gateway.base}/Observation?patient=pat-1", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        assert resp.status == 401
        challenge = resp.headers["WWW-Authenticate"]
        assert challenge.startswith(f'Bearer realm="{PUBLIC_BASE}"')
        assert 'error="invalid_token"' in challenge
        body = await resp.text()
    assert token not in body and token not in challenge
    assert fake_upstream.requests == []


async def test_missing_token_has_no_error_code(gateway: RunningGateway) -> None:
    async with gateway.session.get(f"{gateway.base}/Patient/pat-1") as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == f'Bearer realm="{PUBLIC_BASE}"'


async def test_token_only_in_query_is_never_accepted(
    gateway: RunningGateway, fake_upstream: FakeUpstream, token: str
) -> None:
    async with gateway.session.get(f"{gateway.base}/Patient/pat-1?access_token={token}") as resp:
        assert resp.status == 401
        assert "error=" not in resp.headers["WWW-Authenticate"]
    assert fake_upstream.requests == []


async def test_token_in_header_and_query_is_400_invalid_request(
    gateway: RunningGateway, fake_upstream: FakeUpstream, token: str, auth: dict[str, str]
) -> None:
    async with gateway.session.get(
        f"{gateway.base}/Patient/pat-1?access_token={token}", headers=auth
    ) as resp:
        assert resp.status == 400
        assert 'error="invalid_request"' in resp.headers["WWW-Authenticate"]
    assert fake_upstream.requests == []


async def test_token_in_header_and_form_body_is_400_invalid_request(
    gateway: RunningGateway, fake_upstream: FakeUpstream, token: str, auth: dict[str, str]
) -> None:
    async with gateway.session.post(
        f"{gateway.base}/Observation/_search",
        data={"patient": "pat-1", "access_token": token},
        headers=auth,
    ) as resp:
        assert resp.status == 400
        assert 'error="invalid_request"' in resp.headers["WWW-Authenticate"]
    assert fake_upstream.requests == []


async def test_oversized_authorization_header_is_refused(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    async with gateway.session.get(
        f"{gateway.base}/Patient/pat-1", headers={"Authorization": "Bearer " + "a" * 9000}
    ) as resp:
        assert resp.status in (400, 401, 431)
        assert resp.headers["Content-Type"].startswith("application/fhir+json")
    assert fake_upstream.requests == []


async def test_valid_token_reaches_upstream_without_the_token(
    gateway: RunningGateway, fake_upstream: FakeUpstream, token: str, auth: dict[str, str]
) -> None:
    async with gateway.session.get(f"{gateway.base}/Patient/pat-1", headers=auth) as resp:
        assert resp.status == 200
    [rec] = fake_upstream.requests
    assert "Authorization" not in rec.headers
    assert token not in rec.raw_target and token.encode() not in rec.body


async def test_issuer_down_at_start_503_then_recovers(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream, issuer: TestIssuer, token: str
) -> None:
    """Cold start with the issuer down: not ready, protected requests 503, public ones work."""
    await issuer.stop()
    gw = await gateway_factory()
    async with gw.session.get(f"{gw.origin}/readyz") as resp:
        assert resp.status == 503
        assert (await resp.json())["checks"]["token_keys"] is False
    async with gw.session.get(
        f"{gw.base}/Patient/pat-1", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        assert resp.status == 503
        assert "Retry-After" in resp.headers
    async with gw.session.get(f"{gw.base}/metadata") as resp:
        assert resp.status == 200
    assert [r.path for r in fake_upstream.requests] == ["/fhir/metadata"]

    await issuer.start()  # same port: the background fetch retries with backoff
    for _ in range(100):
        async with gw.session.get(f"{gw.origin}/readyz") as resp:
            if resp.status == 200:
                break
        await asyncio.sleep(0.1)
    async with gw.session.get(
        f"{gw.base}/Patient/pat-1", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        assert resp.status == 200
