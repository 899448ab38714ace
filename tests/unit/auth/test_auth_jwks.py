"""The async JWK Set cache: rotation, TTL, outages, hostile key sets, and fetch limits."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from gateway.auth import Authenticator
from gateway.auth.jwks import COLD_RETRY_INTERVAL_S, IssuerKeys, parse_jwks, secure_url
from gateway.config import JwtIssuer
from gateway.errors import ServiceUnavailable, Unauthorized
from tests.support.issuer import DEFAULT_AUDIENCE as AUDIENCE
from tests.support.issuer import FakeClock, IssuerFactory, TestIssuer

AuthFactory = Callable[..., Awaitable[Authenticator]]
TTL = 600.0
MIN_INTERVAL = 60.0


async def ok(auth: Authenticator, token: str) -> None:
    principal = await auth.authenticate(f"Bearer {token}", token_elsewhere=False)
    assert principal.token_kind == "jwt"


async def refused(auth: Authenticator, token: str) -> Unauthorized:
    with pytest.raises(Unauthorized) as info:
        await auth.authenticate(f"Bearer {token}", token_elsewhere=False)
    assert 'error="invalid_token"' in info.value.headers["WWW-Authenticate"]
    return info.value


async def unavailable(auth: Authenticator, token: str) -> ServiceUnavailable:
    with pytest.raises(ServiceUnavailable) as info:
        await auth.authenticate(f"Bearer {token}", token_elsewhere=False)
    assert info.value.status == 503
    assert info.value.reason == "token.issuer-unavailable"
    assert info.value.headers.get("Retry-After")
    return info.value


def jwks_fetches(issuer: TestIssuer) -> int:
    return issuer.requests["/jwks"]


# --------------------------------------------------------------------------- rotation and TTL


async def test_rotation_without_restart(
    auth: Authenticator, issuer: TestIssuer, clock: FakeClock
) -> None:
    old_token = issuer.mint()
    await ok(auth, old_token)
    assert jwks_fetches(issuer) == 1
    issuer.rotate()
    clock.advance(MIN_INTERVAL)
    await ok(auth, issuer.mint())  # unknown kid → one refetch → the new key is known
    assert jwks_fetches(issuer) == 2
    await ok(auth, old_token)  # served from the verified-token cache
    await ok(auth, issuer.mint())
    assert jwks_fetches(issuer) == 2


async def test_rotation_with_overlap(
    auth: Authenticator, issuer: TestIssuer, clock: FakeClock
) -> None:
    old_key = issuer.current_key
    issuer.rotate(keep_previous=True)
    clock.advance(MIN_INTERVAL)
    await ok(auth, issuer.mint())
    await ok(auth, issuer.mint(key=old_key))
    assert jwks_fetches(issuer) == 2


async def test_removed_key_is_refused_after_the_ttl(
    auth: Authenticator, issuer: TestIssuer, clock: FakeClock
) -> None:
    old_key = issuer.current_key
    issuer.rotate(keep_previous=False)
    # Our cached set still holds the old key until its TTL runs out.
    await ok(auth, issuer.mint(key=old_key))
    assert jwks_fetches(issuer) == 1
    clock.advance(TTL + 1)
    await refused(auth, issuer.mint(key=old_key))
    assert jwks_fetches(issuer) == 2
    await ok(auth, issuer.mint())  # the new key came with that refresh
    assert jwks_fetches(issuer) == 2


async def test_unknown_kid_refetch_is_rate_limited(
    auth: Authenticator, issuer: TestIssuer, clock: FakeClock
) -> None:
    await refused(auth, issuer.mint(headers={"kid": "nope-0"}))
    assert jwks_fetches(issuer) == 1  # the set was fetched just now
    clock.advance(MIN_INTERVAL)
    await refused(auth, issuer.mint(headers={"kid": "nope-1"}))
    assert jwks_fetches(issuer) == 2
    await refused(auth, issuer.mint(headers={"kid": "nope-2"}))
    assert jwks_fetches(issuer) == 2
    clock.advance(MIN_INTERVAL - 1)
    issuer.rotate()
    await refused(auth, issuer.mint())  # still within the interval: the new kid is unknown
    assert jwks_fetches(issuer) == 2
    clock.advance(2)
    await ok(auth, issuer.mint())
    assert jwks_fetches(issuer) == 3


async def test_burst_of_random_kids_costs_one_fetch(
    auth: Authenticator, issuer: TestIssuer, clock: FakeClock
) -> None:
    before = jwks_fetches(issuer)
    clock.advance(MIN_INTERVAL)

    async def attempt() -> BaseException | None:
        try:
            await auth.authenticate(
                f"Bearer {issuer.mint(headers={'kid': secrets.token_hex(8)})}",
                token_elsewhere=False,
            )
        except Unauthorized as exc:
            return exc
        return None

    results = await asyncio.gather(*(attempt() for _ in range(200)))
    assert all(isinstance(r, Unauthorized) for r in results)
    assert jwks_fetches(issuer) - before == 1
    await asyncio.gather(*(attempt() for _ in range(200)))
    assert jwks_fetches(issuer) - before == 1
    clock.advance(MIN_INTERVAL)
    await asyncio.gather(*(attempt() for _ in range(200)))
    assert jwks_fetches(issuer) - before == 2


@pytest.mark.parametrize(
    ("cache_control", "expected_ttl"),
    [
        (None, TTL),
        ("public, max-age=120", 120.0),
        ("max-age=0", MIN_INTERVAL),
        ("no-store", MIN_INTERVAL),
        ("max-age=86400", TTL),
        ("max-age=abc", TTL),
    ],
)
async def test_cache_control_shortens_but_never_extends_the_ttl(
    make_auth: AuthFactory,
    issuer: TestIssuer,
    clock: FakeClock,
    cache_control: str | None,
    expected_ttl: float,
) -> None:
    issuer.jwks_cache_control = cache_control
    auth = await make_auth(jwt=[issuer.jwt_issuer()], start=False)
    await ok(auth, issuer.mint())
    assert jwks_fetches(issuer) == 1
    clock.advance(expected_ttl - 1)
    await ok(auth, issuer.mint())
    assert jwks_fetches(issuer) == 1
    clock.advance(1)
    await ok(auth, issuer.mint())
    assert jwks_fetches(issuer) == 2


# --------------------------------------------------------------------------- outages


async def test_issuer_down_with_a_warm_cache(
    auth: Authenticator, issuer: TestIssuer, clock: FakeClock
) -> None:
    await ok(auth, issuer.mint())
    await issuer.stop()
    clock.advance(TTL + 1)
    await ok(auth, issuer.mint())  # stale keys keep being served
    clock.advance(1)
    await ok(auth, issuer.mint())
    assert auth.ready
    await issuer.start()
    issuer.available = False  # now answering 503
    clock.advance(MIN_INTERVAL)
    await ok(auth, issuer.mint())
    assert jwks_fetches(issuer) == 2  # one refresh attempt per interval, not per request
    await ok(auth, issuer.mint())
    assert jwks_fetches(issuer) == 2


async def test_cold_start_with_the_issuer_down(
    make_auth: AuthFactory, issuer: TestIssuer, clock: FakeClock
) -> None:
    token = issuer.mint()
    await issuer.stop()
    auth = await make_auth(jwt=[issuer.jwt_issuer()])
    assert not auth.ready
    await unavailable(auth, token)
    assert not auth.ready
    await unavailable(auth, token)  # within the cold retry interval: no new attempt
    await issuer.start()
    clock.advance(COLD_RETRY_INTERVAL_S)
    await ok(auth, token)
    assert auth.ready


async def test_cold_start_with_the_issuer_answering_errors(
    make_auth: AuthFactory, issuer: TestIssuer, clock: FakeClock
) -> None:
    issuer.available = False
    auth = await make_auth(jwt=[issuer.jwt_issuer()], start=False)
    await auth.start()
    await asyncio.sleep(0.05)
    assert not auth.ready
    await unavailable(auth, issuer.mint())
    issuer.available = True
    clock.advance(COLD_RETRY_INTERVAL_S)
    await ok(auth, issuer.mint())
    assert auth.ready


async def test_start_fetches_in_the_background_and_retries(
    make_auth: AuthFactory, issuer: TestIssuer
) -> None:
    issuer.available = False
    auth = await make_auth(jwt=[issuer.jwt_issuer()])
    for _ in range(100):
        if issuer.requests["/jwks"]:
            break
        await asyncio.sleep(0.01)
    assert not auth.ready
    issuer.available = True
    for _ in range(300):  # the first retry comes after about one second
        if auth.ready:
            break
        await asyncio.sleep(0.01)
    assert auth.ready


async def test_cold_misses_share_one_fetch(make_auth: AuthFactory, issuer: TestIssuer) -> None:
    issuer.jwks_delay_s = 0.05
    auth = await make_auth(jwt=[issuer.jwt_issuer()], start=False)
    tokens = [issuer.mint() for _ in range(50)]
    await asyncio.gather(*(ok(auth, t) for t in tokens))
    assert jwks_fetches(issuer) == 1


async def test_a_cancelled_caller_does_not_cancel_the_shared_fetch(
    make_auth: AuthFactory, issuer: TestIssuer
) -> None:
    issuer.jwks_delay_s = 0.1
    auth = await make_auth(jwt=[issuer.jwt_issuer()], start=False)
    first = asyncio.create_task(ok(auth, issuer.mint()))
    await asyncio.sleep(0.02)
    first.cancel()
    await ok(auth, issuer.mint())
    assert jwks_fetches(issuer) == 1


async def test_slow_jwks_times_out(
    session: aiohttp.ClientSession, issuer: TestIssuer, clock: FakeClock
) -> None:
    issuer.jwks_delay_s = 0.4
    keys = IssuerKeys(
        issuer.jwt_issuer(),
        session=session,
        clock=clock,
        ttl_s=TTL,
        min_refetch_interval_s=MIN_INTERVAL,
        fetch_timeout_s=0.1,
    )
    assert not await keys.refresh()
    assert not keys.ready
    await keys.close()


# --------------------------------------------------------------------------- hostile key sets


async def test_redirecting_jwks_endpoint_is_not_followed(
    make_auth: AuthFactory, issuer: TestIssuer, issuer_factory: IssuerFactory
) -> None:
    elsewhere = await issuer_factory(AUDIENCE)
    issuer.jwks_redirect_to = elsewhere.jwks_uri
    auth = await make_auth(jwt=[issuer.jwt_issuer()], start=False)
    await unavailable(auth, issuer.mint())
    assert jwks_fetches(issuer) == 1
    assert sum(elsewhere.requests.values()) == 0


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"keys": {}}', b'{"keys": []}', b'{"keys": [1, "x"]}', b"{"],
)
async def test_unusable_documents(make_auth: AuthFactory, issuer: TestIssuer, body: bytes) -> None:
    issuer.jwks_body = body
    auth = await make_auth(jwt=[issuer.jwt_issuer()], start=False)
    await unavailable(auth, issuer.mint())


def _rsa_jwk(bits: int = 2048, **extra: Any) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), **extra}


def _ec_jwk(curve: ec.EllipticCurve, **extra: Any) -> dict[str, Any]:
    key = ec.generate_private_key(curve)
    return {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), **extra}


def _private_rsa_jwk() -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {**RSAAlgorithm.to_jwk(key, as_dict=True), "kid": "private"}


BAD_KEYS: list[tuple[str, Any]] = [
    ("not-an-object", "x"),
    ("no-kty", {"kid": "a", "n": "AQAB", "e": "AQAB"}),
    ("oct", {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}),
    ("bad-n", {"kty": "RSA", "kid": "bad", "n": "!!!", "e": "AQAB"}),
    ("missing-e", {"kty": "RSA", "kid": "bad", "n": "AQAB"}),
    ("enc-use", _rsa_jwk(kid="enc", use="enc")),
    ("ops-without-verify", _rsa_jwk(kid="ops", key_ops=["encrypt"])),
    ("ops-not-a-list", _rsa_jwk(kid="ops2", key_ops="verify")),
    ("ops-wrap-only", _rsa_jwk(kid="ops3", key_ops=["wrapKey", "unwrapKey"])),
    ("small-rsa", _rsa_jwk(1024, kid="small")),
    ("private-members", _private_rsa_jwk()),
    ("alg-for-other-kty", _rsa_jwk(kid="rsa-es", alg="ES256")),
    ("hmac-alg", _rsa_jwk(kid="rsa-hs", alg="HS256")),
    ("numeric-kid", _rsa_jwk(kid=7)),
    ("long-kid", _rsa_jwk(kid="k" * 300)),
    ("secp256k1", _ec_jwk(ec.SECP256K1(), kid="k1")),
    ("ec-off-curve", {**_ec_jwk(ec.SECP256R1(), kid="off"), "y": _ec_jwk(ec.SECP256R1())["y"]}),
    ("ec-no-crv", {k: v for k, v in _ec_jwk(ec.SECP256R1(), kid="nocrv").items() if k != "crv"}),
    ("okp-x25519", {"kty": "OKP", "crv": "X25519", "kid": "x", "x": "AAAA"}),
    ("okp-bad", {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "!!"}),
]


@pytest.mark.parametrize(("name", "jwk"), BAD_KEYS, ids=[n for n, _ in BAD_KEYS])
def test_unusable_keys_are_skipped(name: str, jwk: Any) -> None:
    good = _rsa_jwk(kid="good", alg="RS256", use="sig")
    keys = parse_jwks({"keys": [jwk, good]})
    assert [k.kid for k in keys] == ["good"]


async def test_a_set_with_malformed_keys_still_works(
    make_auth: AuthFactory, issuer: TestIssuer
) -> None:
    issuer.jwks_extra_keys = [jwk for _, jwk in BAD_KEYS]
    auth = await make_auth(jwt=[issuer.jwt_issuer()], start=False)
    await ok(auth, issuer.mint())
    await ok(auth, issuer.mint(key="ec"))
    await refused(auth, issuer.mint(headers={"kid": "hmac"}))
    await refused(auth, issuer.mint(headers={"kid": "small"}))


@pytest.mark.parametrize("ops", [["verify"], ["sign"], ["sign", "verify"]])
def test_signature_key_ops_are_usable(ops: list[str]) -> None:
    """oidc-provider publishes its public keys with ``key_ops: ["sign"]``."""
    assert len(parse_jwks({"keys": [_rsa_jwk(kid="k", key_ops=ops)]})) == 1


def test_duplicate_kids_and_many_keys() -> None:
    keys = parse_jwks({"keys": [_rsa_jwk(kid="same"), _ec_jwk(ec.SECP256R1(), kid="same")]})
    assert len(keys) == 2
    many = parse_jwks({"keys": [_ec_jwk(ec.SECP256R1(), kid=f"k{i}") for i in range(100)]})
    assert len(many) == 64


# --------------------------------------------------------------------------- discovery


async def test_discovery(make_auth: AuthFactory, issuer: TestIssuer) -> None:
    auth = await make_auth(jwt=[issuer.jwt_issuer(discovery=True)], start=False)
    await ok(auth, issuer.mint())
    assert issuer.requests["/.well-known/openid-configuration"] == 1
    assert jwks_fetches(issuer) == 1


@pytest.mark.parametrize(
    "overrides",
    [
        {"issuer": "https://evil.example"},
        {"issuer": None},
        {"jwks_uri": "http://evil.example/jwks"},
        {"jwks_uri": "ftp://127.0.0.1/jwks"},
        {"jwks_uri": None},
        {"jwks_uri": 5},
    ],
)
async def test_discovery_refusals(
    make_auth: AuthFactory, issuer: TestIssuer, overrides: dict[str, Any]
) -> None:
    issuer.discovery_overrides = overrides
    auth = await make_auth(jwt=[issuer.jwt_issuer(discovery=True)], start=False)
    await unavailable(auth, issuer.mint())
    assert jwks_fetches(issuer) == 0


async def test_rediscovery_after_a_failed_fetch(
    make_auth: AuthFactory, issuer: TestIssuer, clock: FakeClock
) -> None:
    auth = await make_auth(jwt=[issuer.jwt_issuer(discovery=True)], start=False)
    issuer.jwks_body = b"broken"
    await unavailable(auth, issuer.mint())
    issuer.jwks_body = None
    clock.advance(COLD_RETRY_INTERVAL_S)
    await ok(auth, issuer.mint())
    assert issuer.requests["/.well-known/openid-configuration"] == 2


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://as.example/jwks", True),
        ("http://127.0.0.1:9/jwks", True),
        ("http://localhost/jwks", True),
        ("http://[::1]:8/jwks", True),
        ("http://as.example/jwks", False),
        ("https://user:pw@as.example/jwks", False),
        ("https:///jwks", False),
        ("file:///etc/passwd", False),
        (None, False),
    ],
)
def test_secure_url(url: Any, expected: bool) -> None:
    assert secure_url(url) is expected


def test_jwt_issuer_model_is_used_as_is() -> None:
    assert JwtIssuer(issuer="https://as.example").jwks_uri is None
