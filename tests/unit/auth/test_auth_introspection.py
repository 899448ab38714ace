"""RFC 7662 introspection of opaque tokens: answers, failures, and the fingerprint cache."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway.auth import Authenticator, Principal
from gateway.errors import ServiceUnavailable, Unauthorized
from tests.support.issuer import FakeClock, TestIssuer

AuthFactory = Callable[..., Awaitable[Authenticator]]
MAX_TTL = 60.0
NEGATIVE_TTL = 5.0


@pytest.fixture
async def auth(make_auth: AuthFactory, issuer: TestIssuer) -> Authenticator:
    """Introspection only (no JWT issuer configured)."""
    return await make_auth(introspection=issuer.introspection(timeout_s=0.5))


def asked(issuer: TestIssuer) -> int:
    return issuer.requests["/introspect"]


async def ok(auth: Authenticator, token: str) -> Principal:
    return await auth.authenticate(f"Bearer {token}", token_elsewhere=False)


async def refused(auth: Authenticator, token: str, reason: str = "token.invalid") -> None:
    with pytest.raises(Unauthorized) as info:
        await ok(auth, token)
    assert info.value.reason == reason
    assert 'error="invalid_token"' in info.value.headers["WWW-Authenticate"]
    assert token not in str(info.value.headers) + info.value.diagnostics


async def unavailable(auth: Authenticator, token: str) -> None:
    with pytest.raises(ServiceUnavailable) as info:
        await ok(auth, token)
    assert info.value.reason == "token.introspection-unavailable"
    assert token not in info.value.diagnostics


async def test_active_token(auth: Authenticator, issuer: TestIssuer) -> None:
    token = issuer.issue_opaque(fhirUser="Practitioner/7", patient=None)
    p = await ok(auth, token)
    assert p.token_kind == "opaque"
    assert p.scopes == ("patient/*.rs",)
    assert p.client_id == "test-client"
    assert p.fhir_user == "Practitioner/7"
    assert p.patient is None
    assert p.fingerprint == hashlib.sha256(token.encode()).hexdigest()
    assert issuer.introspection_forms == [{"token": token, "token_type_hint": "access_token"}]


async def test_inactive_token_and_negative_cache(
    auth: Authenticator, issuer: TestIssuer, clock: FakeClock
) -> None:
    await refused(auth, "unknown-token", "token.revoked")
    await refused(auth, "unknown-token", "token.revoked")
    assert asked(issuer) == 1
    clock.advance(NEGATIVE_TTL)
    await refused(auth, "unknown-token", "token.revoked")
    assert asked(issuer) == 2


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({"active": "true"}, "token.revoked"),
        ({"active": 1}, "token.revoked"),
        ({"active": "yes"}, "token.revoked"),
        ({"active": None}, "token.revoked"),
        ({"active": False}, "token.revoked"),
        ({"exp": None}, "token.invalid"),
        ({"exp": "9999999999"}, "token.invalid"),
        ({"scope": None}, "token.invalid"),
        ({"exp": "past"}, "token.expired"),
        ({"nbf": "future"}, "token.invalid"),
        ({"aud": "https://other.example"}, "token.invalid"),
        ({"aud": []}, "token.invalid"),
        ({"token_type": "refresh_token"}, "token.invalid"),
        ({"token_type": "DPoP"}, "token.invalid"),
        ({"cnf": {"x5t#S256": "abc"}}, "token.invalid"),
        ({"patient": "../etc"}, "token.invalid"),
        ({"fhirUser": "Practitioner"}, "token.invalid"),
        ({"scope": 42}, "token.invalid"),
    ],
)
async def test_refused_answers(
    auth: Authenticator,
    issuer: TestIssuer,
    clock: FakeClock,
    answer: dict[str, Any],
    reason: str,
) -> None:
    resolved = dict(answer)
    if resolved.get("exp") == "past":
        resolved["exp"] = int(clock()) - 31
    if resolved.get("nbf") == "future":
        resolved["nbf"] = int(clock()) + 60
    token = issuer.issue_opaque()
    issuer.opaque_tokens[token].update(resolved)
    issuer.opaque_tokens[token] = {
        k: v for k, v in issuer.opaque_tokens[token].items() if v is not None
    }
    await refused(auth, token, reason)


@pytest.mark.parametrize(
    "answer",
    [
        {"aud": "https://gateway.example/fhir"},
        {"aud": ["x", "https://gateway.example/fhir"]},
        {"token_type": "access_token"},
        {"token_type": None},
        {"scope": None, "scp": ["a", "b"]},
    ],
)
async def test_accepted_answer_variants(
    auth: Authenticator, issuer: TestIssuer, answer: dict[str, Any]
) -> None:
    token = issuer.issue_opaque()
    issuer.opaque_tokens[token].update(answer)
    issuer.opaque_tokens[token] = {
        k: v for k, v in issuer.opaque_tokens[token].items() if v is not None
    }
    await ok(auth, token)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, b"{}"),
        (502, b"oops"),
        (401, b'{"error": "invalid_client"}'),
        (302, b""),
        (200, b"not json"),
        (200, b"[]"),
        (200, b'"active"'),
        (200, b'{"active": true, "exp": NaN}'),
        (200, b"x" * 70000),
    ],
)
async def test_endpoint_failures_are_503(
    auth: Authenticator, issuer: TestIssuer, status: int, body: bytes
) -> None:
    token = issuer.issue_opaque()
    issuer.introspection_status = status
    issuer.introspection_body = body
    await unavailable(auth, token)
    # Failures are not cached: the next request asks again, and succeeds once it can.
    issuer.introspection_status, issuer.introspection_body = 200, None
    await ok(auth, token)


async def test_endpoint_timeout_is_503(auth: Authenticator, issuer: TestIssuer) -> None:
    issuer.introspection_delay_s = 0.7
    await unavailable(auth, issuer.issue_opaque())


async def test_one_dropped_connection_is_retried(auth: Authenticator, issuer: TestIssuer) -> None:
    issuer.introspection_disconnects = 1
    await ok(auth, issuer.issue_opaque())
    assert asked(issuer) == 2


async def test_two_dropped_connections_are_503(auth: Authenticator, issuer: TestIssuer) -> None:
    issuer.introspection_disconnects = 2
    await unavailable(auth, issuer.issue_opaque())
    assert asked(issuer) == 2


async def test_endpoint_down_is_503(auth: Authenticator, issuer: TestIssuer) -> None:
    token = issuer.issue_opaque()
    await issuer.stop()
    await unavailable(auth, token)


async def test_wrong_client_credentials_are_503(make_auth: AuthFactory, issuer: TestIssuer) -> None:
    auth = await make_auth(introspection=issuer.introspection(client_secret="wrong"))
    await unavailable(auth, issuer.issue_opaque())


async def test_revocation_is_honoured_within_the_cache_ttl(
    auth: Authenticator, issuer: TestIssuer, clock: FakeClock
) -> None:
    token = issuer.issue_opaque()
    await ok(auth, token)
    issuer.revoke(token)
    clock.advance(MAX_TTL - 1)
    await ok(auth, token)  # cached
    assert asked(issuer) == 1
    clock.advance(1)
    await refused(auth, token, "token.revoked")
    assert asked(issuer) == 2


async def test_cache_never_outlives_exp(
    auth: Authenticator, issuer: TestIssuer, clock: FakeClock
) -> None:
    token = issuer.issue_opaque(exp=int(clock()) + 10)
    await ok(auth, token)
    clock.advance(9)
    await ok(auth, token)
    assert asked(issuer) == 1
    clock.advance(1)  # exp reached: the cached answer is gone, the server is asked again
    await ok(auth, token)  # still inside the leeway, and the server says active
    assert asked(issuer) == 2
    clock.advance(30)
    await refused(auth, token, "token.expired")


async def test_cache_is_keyed_by_fingerprint(auth: Authenticator, issuer: TestIssuer) -> None:
    tokens = [issuer.issue_opaque() for _ in range(3)]
    for token in tokens:
        await ok(auth, token)
    await refused(auth, "some-inactive-token", "token.revoked")
    introspector = auth.introspector
    assert introspector is not None
    keys = introspector.cache_keys()
    expected = {hashlib.sha256(t.encode()).hexdigest() for t in [*tokens, "some-inactive-token"]}
    assert set(keys) == expected
    dump = json.dumps(keys)
    for token in tokens:
        assert token not in dump


async def test_cache_is_bounded(make_auth: AuthFactory, issuer: TestIssuer) -> None:
    auth = await make_auth(introspection=issuer.introspection(cache_size=5))
    for _ in range(20):
        await ok(auth, issuer.issue_opaque())
    assert auth.introspector is not None
    assert len(auth.introspector.cache_keys()) <= 5


async def test_concurrent_lookups_share_one_request(
    auth: Authenticator, issuer: TestIssuer
) -> None:
    issuer.introspection_delay_s = 0.05
    token = issuer.issue_opaque()
    principals = await asyncio.gather(*(ok(auth, token) for _ in range(20)))
    assert {p.fingerprint for p in principals} == {principals[0].fingerprint}
    assert asked(issuer) == 1


async def test_concurrent_failures_share_one_request(
    auth: Authenticator, issuer: TestIssuer
) -> None:
    issuer.introspection_delay_s = 0.05
    issuer.introspection_status = 500
    token = issuer.issue_opaque()
    results = await asyncio.gather(*(ok(auth, token) for _ in range(10)), return_exceptions=True)
    assert all(isinstance(r, ServiceUnavailable) for r in results)
    assert asked(issuer) == 1


async def test_jwt_of_a_configured_issuer_is_never_introspected(
    make_auth: AuthFactory, issuer: TestIssuer
) -> None:
    auth = await make_auth(jwt=[issuer.jwt_issuer()], introspection=issuer.introspection())
    p = await ok(auth, issuer.mint())
    assert p.token_kind == "jwt"
    await refused(auth, issuer.mint(aud="https://other.example"))
    await refused(auth, issuer.mint(headers={"kid": "unknown"}))
    assert asked(issuer) == 0


async def test_jwt_of_another_issuer_goes_to_introspection(
    make_auth: AuthFactory, issuer: TestIssuer
) -> None:
    auth = await make_auth(jwt=[issuer.jwt_issuer()], introspection=issuer.introspection())
    foreign = issuer.mint(iss="https://other-as.example")
    await refused(auth, foreign, "token.revoked")
    assert asked(issuer) == 1
    # If that server vouches for it, it is accepted as introspected (not locally verified).
    issuer.opaque_tokens[foreign] = {
        "active": True,
        **issuer.claims(iss="https://other-as.example"),
    }
    auth2 = await make_auth(jwt=[issuer.jwt_issuer()], introspection=issuer.introspection())
    p = await ok(auth2, foreign)
    assert p.token_kind == "opaque"


async def test_opaque_token_without_introspection_is_refused(
    make_auth: AuthFactory, issuer: TestIssuer
) -> None:
    auth = await make_auth(jwt=[issuer.jwt_issuer()])
    await refused(auth, issuer.issue_opaque())
    assert asked(issuer) == 0


async def test_client_credentials_are_form_encoded(
    make_auth: AuthFactory, issuer: TestIssuer
) -> None:
    """RFC 6749 §2.3.1: id and secret are form-urlencoded before the Basic encoding."""
    auth = await make_auth(
        introspection=issuer.introspection(client_id="a b:c", client_secret="p@ss/w:rd")
    )
    assert auth.introspector is not None
    header = auth.introspector._authorization
    decoded = base64.b64decode(header.removeprefix("Basic ")).decode()
    assert decoded == "a+b%3Ac:p%40ss%2Fw%3Ard"
