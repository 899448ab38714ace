"""The Authenticator as the proxy calls it: header rules, the verified-token cache, lifetime."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import gateway.auth
import gateway.auth.jwt as auth_jwt
from gateway.auth import Authenticator, Principal
from gateway.errors import InvalidRequest, ServiceUnavailable, Unauthorized
from tests.support.issuer import FakeClock, TestIssuer

AuthFactory = Callable[..., Awaitable[Authenticator]]
REALM = "fhir-gateway"


def test_public_api() -> None:
    assert gateway.auth.__all__ == ["Authenticator", "Principal"]
    assert [f.name for f in dataclasses.fields(Principal)] == [
        "subject",
        "client_id",
        "issuer",
        "scopes",
        "patient",
        "encounter",
        "fhir_user",
        "claims",
        "fingerprint",
        "expires_at",
        "token_kind",
    ]


async def test_missing_token(auth: Authenticator) -> None:
    for elsewhere in (False, True):
        with pytest.raises(Unauthorized) as info:
            await auth.authenticate(None, token_elsewhere=elsewhere)
        assert info.value.reason == "token.missing"
        assert info.value.headers == {"WWW-Authenticate": f'Bearer realm="{REALM}"'}


async def test_token_in_two_places(auth: Authenticator, issuer: TestIssuer) -> None:
    with pytest.raises(InvalidRequest) as info:
        await auth.authenticate(f"Bearer {issuer.mint()}", token_elsewhere=True)
    assert info.value.status == 400
    assert 'error="invalid_request"' in info.value.headers["WWW-Authenticate"]


async def test_other_scheme_and_malformed_header(auth: Authenticator) -> None:
    with pytest.raises(Unauthorized) as info:
        await auth.authenticate("Basic dXNlcjpwYXNz", token_elsewhere=False)
    assert "error=" not in info.value.headers["WWW-Authenticate"]
    with pytest.raises(Unauthorized) as info:
        await auth.authenticate("Bearer a b", token_elsewhere=False)
    assert 'error="invalid_token"' in info.value.headers["WWW-Authenticate"]
    with pytest.raises(Unauthorized) as info:
        await auth.authenticate("Bearer " + "a" * 9000, token_elsewhere=False)
    assert 'error="invalid_token"' in info.value.headers["WWW-Authenticate"]


async def test_scheme_is_case_insensitive(auth: Authenticator, issuer: TestIssuer) -> None:
    await auth.authenticate(f"bEARER {issuer.mint()}", token_elsewhere=False)


# --------------------------------------------------------------------------- verified-token cache


@pytest.fixture
def signature_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = auth_jwt._jws_for

    def counting(alg: str) -> Any:
        calls.append(alg)
        return real(alg)

    monkeypatch.setattr(auth_jwt, "_jws_for", counting)
    return calls


async def test_verified_tokens_skip_the_signature_check(
    auth: Authenticator, issuer: TestIssuer, signature_checks: list[str]
) -> None:
    token = issuer.mint()
    first = await auth.authenticate(f"Bearer {token}", token_elsewhere=False)
    second = await auth.authenticate(f"Bearer {token}", token_elsewhere=False)
    assert first is second
    assert signature_checks == ["RS256"]


async def test_cache_honours_exp_with_leeway(
    auth: Authenticator, issuer: TestIssuer, clock: FakeClock, signature_checks: list[str]
) -> None:
    token = issuer.mint(exp=int(clock()) + 100)
    await auth.authenticate(f"Bearer {token}", token_elsewhere=False)
    clock.advance(100 + 29)
    await auth.authenticate(f"Bearer {token}", token_elsewhere=False)
    assert len(signature_checks) == 1
    clock.advance(1)
    with pytest.raises(Unauthorized) as info:
        await auth.authenticate(f"Bearer {token}", token_elsewhere=False)
    assert info.value.reason == "token.expired"


async def test_cache_entries_live_at_most_the_configured_ttl(
    make_auth: AuthFactory, issuer: TestIssuer, clock: FakeClock, signature_checks: list[str]
) -> None:
    auth = await make_auth(jwt=[issuer.jwt_issuer()], token_cache_max_ttl_s=100)
    token = issuer.mint(exp=int(clock()) + 3600)
    await auth.authenticate(f"Bearer {token}", token_elsewhere=False)
    clock.advance(99)
    await auth.authenticate(f"Bearer {token}", token_elsewhere=False)
    assert len(signature_checks) == 1
    clock.advance(1)
    await auth.authenticate(f"Bearer {token}", token_elsewhere=False)
    assert len(signature_checks) == 2


async def test_cache_is_bounded(
    make_auth: AuthFactory, issuer: TestIssuer, signature_checks: list[str]
) -> None:
    auth = await make_auth(jwt=[issuer.jwt_issuer()], token_cache_size=2)
    tokens = [issuer.mint() for _ in range(3)]
    for token in tokens:
        await auth.authenticate(f"Bearer {token}", token_elsewhere=False)
    await auth.authenticate(f"Bearer {tokens[0]}", token_elsewhere=False)  # evicted: again
    assert len(signature_checks) == 4


async def test_refused_tokens_are_not_cached(
    auth: Authenticator, issuer: TestIssuer, signature_checks: list[str]
) -> None:
    token = issuer.mint(patient="../x")
    for _ in range(2):
        with pytest.raises(Unauthorized):
            await auth.authenticate(f"Bearer {token}", token_elsewhere=False)
    assert len(signature_checks) == 2


# --------------------------------------------------------------------------- fail closed


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyError("x"), TypeError("t")])
async def test_unexpected_errors_fail_closed(
    auth: Authenticator,
    issuer: TestIssuer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
) -> None:
    def explode(alg: str) -> Any:
        raise error

    monkeypatch.setattr(auth_jwt, "_jws_for", explode)
    token = issuer.mint()
    with pytest.raises(Unauthorized) as info:
        await auth.authenticate(f"Bearer {token}", token_elsewhere=False)
    assert info.value.reason == "token.invalid"
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert token not in caplog.text
    assert type(error).__name__ in caplog.text


async def test_no_issuers_and_no_introspection(make_auth: AuthFactory, issuer: TestIssuer) -> None:
    auth = await make_auth()
    assert auth.ready
    with pytest.raises(Unauthorized):
        await auth.authenticate(f"Bearer {issuer.mint()}", token_elsewhere=False)


# --------------------------------------------------------------------------- lifetime


async def test_ready_needs_every_issuer(
    make_auth: AuthFactory, issuer: TestIssuer, issuer_factory: Any, clock: FakeClock
) -> None:
    second: TestIssuer = await issuer_factory("https://gateway.example/fhir", clock=clock)
    second.available = False
    auth = await make_auth(jwt=[issuer.jwt_issuer(), second.jwt_issuer()], start=False)
    assert not auth.ready
    await auth.authenticate(f"Bearer {issuer.mint()}", token_elsewhere=False)
    assert not auth.ready
    with pytest.raises(ServiceUnavailable) as info:
        await auth.authenticate(f"Bearer {second.mint()}", token_elsewhere=False)
    assert info.value.reason == "token.issuer-unavailable"
    second.available = True
    clock.advance(5)
    await auth.authenticate(f"Bearer {second.mint()}", token_elsewhere=False)
    assert auth.ready


async def test_start_never_raises_and_close_cancels(
    make_auth: AuthFactory, issuer: TestIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    await issuer.stop()
    auth = await make_auth(jwt=[issuer.jwt_issuer()])
    await auth.start()  # a second start is harmless too
    assert not auth.ready
    await auth.close()
    await auth.close()
    assert not auth.ready
