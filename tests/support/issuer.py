"""A small, real OAuth 2.0 / OpenID issuer on 127.0.0.1 for the whole test suite.

It serves, from an aiohttp app on a random loopback port:

* ``/.well-known/openid-configuration`` (OpenID Connect Discovery 1.0 §4),
* ``/jwks`` (RFC 7517 JWK Set of its current, and optionally previous, public keys),
* ``/introspect`` (RFC 7662, ``client_secret_basic``) for the opaque tokens it issued,

counts the requests per path (``issuer.requests["/jwks"]``), and mints RS256 (or ES256)
``at+jwt`` access tokens (RFC 9068) with sensible SMART defaults. Knobs make it misbehave on
purpose: ``available=False`` (503 everywhere), ``jwks_delay_s``, ``jwks_redirect_to``,
``jwks_cache_control``, ``jwks_extra_keys`` (raw, possibly malformed JWKs),
``introspection_status`` / ``introspection_body`` / ``introspection_delay_s`` /
``introspection_disconnects``.

Use::

    issuer = await start_issuer("https://gw.example/fhir")
    token = issuer.mint(patient="p1", scope="patient/Observation.rs")
    ...
    await issuer.stop()

or, in a test module or conftest, the ``issuer_factory`` fixture (imported from here):
``issuer = await issuer_factory(audience)``; every issuer it made is stopped at teardown.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from gateway.config import Introspection, JwtIssuer

DEFAULT_AUDIENCE = "https://gateway.example/fhir"
DEFAULT_SCOPE = "patient/*.rs"
DEFAULT_PATIENT = "pat-1"
DEFAULT_SUBJECT = "user-1"
DEFAULT_CLIENT_ID = "test-client"
INTROSPECTION_CLIENT_ID = "gateway"
INTROSPECTION_SECRET = "gateway-secret"

KeyKind = Literal["rsa", "ec"]


class FakeClock:
    """An injectable clock (``clock=`` of the gateway's components) that moves only when told."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class SigningKey:
    kid: str
    kind: KeyKind
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @property
    def alg(self) -> str:
        return "RS256" if self.kind == "rsa" else "ES256"

    def public_jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.alg}


# RSA key generation costs ~60 ms; the suite makes hundreds of issuers. RSA key material is
# therefore drawn round-robin from a pool, so any RSA_POOL_SIZE consecutive keys are distinct
# (a test never needs more), while every key gets its own kid.
RSA_POOL_SIZE = 12
_rsa_pool: list[rsa.RSAPrivateKey] = []
_rsa_next = 0


def _rsa_private() -> rsa.RSAPrivateKey:
    global _rsa_next
    if len(_rsa_pool) < RSA_POOL_SIZE:
        _rsa_pool.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return _rsa_pool[-1]
    _rsa_next = (_rsa_next + 1) % RSA_POOL_SIZE
    return _rsa_pool[_rsa_next]


def new_key(kind: KeyKind = "rsa") -> SigningKey:
    """A signing key with a unique kid (RSA material from a pool: see ``RSA_POOL_SIZE``)."""
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    private = _rsa_private() if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())
    return SigningKey(kid=f"{kind}-{uuid.uuid4().hex[:12]}", kind=kind, private=private)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign(
    header: Mapping[str, Any],
    payload: Mapping[str, Any] | str | bytes,
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey,
) -> str:
    """A compact JWS over exactly this header and payload, signed with ``header["alg"]``.

    No library checks in the way: the header may hold anything (a numeric ``kid``, ``crit``,
    ``jku``); a ``str``/``bytes`` payload is used verbatim (e.g. JSON with ``NaN``).
    """
    body = payload if isinstance(payload, str | bytes) else json.dumps(dict(payload))
    raw = body.encode() if isinstance(body, str) else body
    signing_input = f"{b64url(json.dumps(dict(header)).encode())}.{b64url(raw)}"
    algorithm = jwt.get_algorithm_by_name(str(header["alg"]))
    return f"{signing_input}.{b64url(algorithm.sign(signing_input.encode(), private))}"


class TestIssuer:
    """An issuer on 127.0.0.1. ``start()``/``stop()`` may be called repeatedly (same port)."""

    __test__ = False  # not a test class

    def __init__(
        self,
        audience: str,
        *,
        with_ec: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.audience = audience
        self.clock = clock
        self.keys: list[SigningKey] = [new_key("rsa")]
        self.ec_key: SigningKey | None = new_key("ec") if with_ec else None
        self.previous_keys: list[SigningKey] = []
        self.requests: Counter[str] = Counter()
        # misbehaviour knobs
        self.available = True
        self.jwks_delay_s = 0.0
        self.jwks_redirect_to: str | None = None
        self.jwks_cache_control: str | None = None
        self.jwks_extra_keys: list[Any] = []
        self.jwks_body: bytes | None = None
        self.discovery_overrides: dict[str, Any] = {}
        self.introspection_status = 200
        self.introspection_body: bytes | None = None
        self.introspection_delay_s = 0.0
        self.introspection_disconnects = 0  # drop the connection of the next N requests
        self.opaque_tokens: dict[str, dict[str, Any]] = {}
        self.introspection_forms: list[dict[str, str]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ lifetime

    @property
    def url(self) -> str:
        """The issuer identifier (``iss``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def jwks_uri(self) -> str:
        return f"{self.url}/jwks"

    @property
    def introspection_endpoint(self) -> str:
        return f"{self.url}/introspect"

    async def start(self) -> TestIssuer:
        app = web.Application(middlewares=[self._count])
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_post("/introspect", self._introspect)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        if self.port == 0:
            self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        """Stop listening (connections are refused until ``start()`` again)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ configuration helpers

    def jwt_issuer(self, *, discovery: bool = False, **overrides: Any) -> JwtIssuer:
        """The gateway's ``auth.jwt[]`` entry for this issuer."""
        data: dict[str, Any] = {"issuer": self.url, "algorithms": ["RS256", "ES256"]}
        if not discovery:
            data["jwks_uri"] = self.jwks_uri
        data.update(overrides)
        return JwtIssuer(**data)

    def introspection(self, **overrides: Any) -> Introspection:
        """The gateway's ``auth.introspection`` entry for this issuer."""
        data: dict[str, Any] = {
            "endpoint": self.introspection_endpoint,
            "client_id": INTROSPECTION_CLIENT_ID,
            "client_secret": INTROSPECTION_SECRET,
        }
        data.update(overrides)
        return Introspection(**data)

    # ------------------------------------------------------------------ keys and tokens

    @property
    def current_key(self) -> SigningKey:
        return self.keys[-1]

    def rotate(self, *, keep_previous: bool = False) -> SigningKey:
        """Replace the RSA signing key by a new one with a new kid."""
        old = self.keys
        self.keys = [new_key("rsa")]
        self.previous_keys = old if keep_previous else []
        return self.current_key

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """Default access-token claims; an override of ``None`` removes the claim."""
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": self.url,
            "aud": self.audience,
            "sub": DEFAULT_SUBJECT,
            "client_id": DEFAULT_CLIENT_ID,
            "scope": DEFAULT_SCOPE,
            "patient": DEFAULT_PATIENT,
            "iat": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(
        self,
        *,
        headers: Mapping[str, Any] | None = None,
        key: KeyKind | SigningKey = "rsa",
        **overrides: Any,
    ) -> str:
        """An RFC 9068 access token signed by this issuer (``typ: at+jwt``, with ``kid``).

        ``overrides`` change claims (``None`` removes one); ``headers`` change the JOSE
        header (``None`` removes one, e.g. ``headers={"typ": None}``).
        """
        signing = key if isinstance(key, SigningKey) else self._key(key)
        header: dict[str, Any] = {"alg": signing.alg, "typ": "at+jwt", "kid": signing.kid}
        header.update(headers or {})
        header = {k: v for k, v in header.items() if v is not None}
        return sign(header, self.claims(**overrides), signing.private)

    def _key(self, kind: KeyKind) -> SigningKey:
        if kind == "rsa":
            return self.current_key
        if self.ec_key is None:
            self.ec_key = new_key("ec")
        return self.ec_key

    def issue_opaque(self, **overrides: Any) -> str:
        """An opaque token whose introspection answer is ``{"active": true, ...claims}``."""
        token = secrets.token_urlsafe(32)
        answer = {"active": True, "token_type": "Bearer", **self.claims(**overrides)}
        self.opaque_tokens[token] = {k: v for k, v in answer.items() if v is not None}
        return token

    def revoke(self, token: str) -> None:
        self.opaque_tokens.pop(token, None)

    def jwks_document(self) -> dict[str, Any]:
        keys = [k.public_jwk() for k in (*self.keys, *self.previous_keys)]
        if self.ec_key is not None:
            keys.append(self.ec_key.public_jwk())
        return {"keys": [*keys, *self.jwks_extra_keys]}

    # ------------------------------------------------------------------ handlers

    @web.middleware
    async def _count(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.requests[request.path] += 1
        if not self.available:
            return web.Response(status=503, text="down")
        return await handler(request)

    async def _discovery(self, request: web.Request) -> web.Response:
        doc = {
            "issuer": self.url,
            "jwks_uri": self.jwks_uri,
            "introspection_endpoint": self.introspection_endpoint,
            "token_endpoint": f"{self.url}/token",
            "authorization_endpoint": f"{self.url}/authorize",
            **self.discovery_overrides,
        }
        return web.json_response(doc)

    async def _jwks(self, request: web.Request) -> web.StreamResponse:
        if self.jwks_delay_s:
            await asyncio.sleep(self.jwks_delay_s)
        if self.jwks_redirect_to is not None:
            raise web.HTTPFound(self.jwks_redirect_to)
        headers = {}
        if self.jwks_cache_control is not None:
            headers["Cache-Control"] = self.jwks_cache_control
        if self.jwks_body is not None:
            return web.Response(body=self.jwks_body, headers=headers)
        return web.json_response(self.jwks_document(), headers=headers)

    async def _introspect(self, request: web.Request) -> web.StreamResponse:
        if self.introspection_disconnects > 0:
            self.introspection_disconnects -= 1
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        if self.introspection_delay_s:
            await asyncio.sleep(self.introspection_delay_s)
        expected = "Basic " + base64.b64encode(
            f"{INTROSPECTION_CLIENT_ID}:{INTROSPECTION_SECRET}".encode()
        ).decode("ascii")
        if request.headers.get("Authorization") != expected:
            return web.json_response({"error": "invalid_client"}, status=401)
        form = await request.post()
        self.introspection_forms.append({k: str(v) for k, v in form.items()})
        if self.introspection_status != 200 or self.introspection_body is not None:
            return web.Response(
                status=self.introspection_status,
                body=self.introspection_body or b"{}",
                content_type="application/json",
            )
        answer = self.opaque_tokens.get(str(form.get("token", "")))
        return web.json_response(answer if answer is not None else {"active": False})


async def start_issuer(audience: str, **kwargs: Any) -> TestIssuer:
    """Create and start a :class:`TestIssuer` (the caller stops it)."""
    return await TestIssuer(audience, **kwargs).start()


IssuerFactory = Callable[..., Awaitable[TestIssuer]]


@pytest.fixture
async def issuer_factory() -> AsyncIterator[IssuerFactory]:
    """``issuer = await issuer_factory(audience, with_ec=..., clock=...)``; stopped at teardown."""
    started: list[TestIssuer] = []

    async def make(audience: str, **kwargs: Any) -> TestIssuer:
        issuer = await start_issuer(audience, **kwargs)
        started.append(issuer)
        return issuer

    yield make
    for issuer in started:
        await issuer.stop()
