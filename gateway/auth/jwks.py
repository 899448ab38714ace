"""An asynchronous JWK Set cache per issuer (RFC 7517 §5, RFC 8414 / OpenID Discovery 1.0).

Why our own: pyjwt's ``PyJWKClient`` does blocking I/O and refetches on every unknown ``kid``
without a limit, which lets anyone make the gateway hammer its authorization server.

Behaviour, per issuer:

* the key set is fetched with the shared aiohttp session, ``allow_redirects=False`` (a redirect
  is a failure), a total timeout and a body size limit;
* concurrent misses share one fetch (single flight; a cancelled caller does not cancel it);
* the set is refreshed when its TTL runs out. The TTL is the configured ``jwks_cache_ttl_s``;
  a ``Cache-Control: max-age`` from the issuer may shorten it but never below
  ``jwks_min_refetch_interval_s`` (so ``max-age=0`` cannot turn every request into a fetch),
  and ``no-store``/``no-cache`` count as that floor;
* an unknown ``kid`` triggers a refetch at most once per ``jwks_min_refetch_interval_s``
  (key rotation works without a restart, a flood of random kids costs one fetch);
* while the issuer is unreachable the last good key set keeps being served (a failed refresh is
  retried at most once per ``jwks_min_refetch_interval_s``);
* malformed keys, keys whose ``use`` is not ``sig`` or whose ``key_ops`` name no signature
  operation (``verify``, or ``sign`` as oidc-provider publishes it),
  symmetric (``oct``) keys, keys carrying private members, RSA keys under 2048 bits and curves
  we do not support are skipped one by one instead of failing the whole set;
* without a configured ``jwks_uri`` the issuer's ``/.well-known/openid-configuration`` is read
  (OpenID Connect Discovery 1.0 §4); its ``issuer`` must equal the configured one exactly
  (§4.3) and its ``jwks_uri`` must be https (or plain http on a loopback address).

Headers such as ``jku``, ``x5u`` or ``jwk`` in a token are never looked at here: keys come only
from the configured or discovered ``jwks_uri``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway.config import JwtIssuer, is_loopback_url

log = logging.getLogger("gateway.auth.jwks")

FETCH_TIMEOUT_S = 5.0
MAX_DOCUMENT_BYTES = 512 * 1024
MAX_KEYS = 64
MAX_KID_LENGTH = 256
#: When no key set was ever fetched, requests may trigger a new attempt this often.
COLD_RETRY_INTERVAL_S = 2.0

_ALGS_BY_KTY: Mapping[str, frozenset[str]] = {
    "RSA": frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    "EC": frozenset({"ES256", "ES384", "ES512"}),
    "OKP": frozenset({"EdDSA"}),
}
_CURVE_BY_ALG: Mapping[str, str] = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
# RFC 7517 §4.3. "sign" is accepted too: publishers such as oidc-provider derive the public
# JWK from the private one and keep its key_ops ["sign"].
_SIGNATURE_OPS = frozenset({"verify", "sign"})
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d{1,10})\"?\s*(?:,|$)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\s*(?:,|$)", re.IGNORECASE)

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class KeysUnavailable(Exception):
    """Internal: the issuer's key set has never been fetched and cannot be fetched now."""


class _FetchError(Exception):
    """Internal: one fetch or discovery attempt failed (message: a fixed description)."""


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One usable public key of a JWK Set."""

    kid: str | None
    kty: str
    crv: str | None
    alg: str | None  # the JWK's own "alg" (RFC 7517 §4.4), when it has one
    key: PublicKey

    def accepts(self, alg: str) -> bool:
        """Whether a JWS with header ``alg`` may be verified with this key (RFC 7518 §3.1)."""
        if alg not in _ALGS_BY_KTY.get(self.kty, frozenset()):
            return False
        if self.alg is not None and self.alg != alg:
            return False
        if self.kty == "EC":
            return _CURVE_BY_ALG.get(alg) == self.crv
        if self.kty == "OKP":
            return self.crv == "Ed25519"
        return True


@dataclass(frozen=True, slots=True)
class KeySet:
    keys: tuple[VerificationKey, ...]
    fetched_at: float
    expires_at: float

    def find(self, kid: str | None) -> list[VerificationKey]:
        """Keys with this ``kid``; with no ``kid``, every key (the caller filters by ``alg``)."""
        if kid is None:
            return list(self.keys)
        return [k for k in self.keys if k.kid == kid]


def _parse_key(jwk: Any) -> VerificationKey | None:
    """One JWK (RFC 7517 §4, RFC 7518 §6) → a public key, or ``None`` to skip it."""
    if not isinstance(jwk, dict):
        return None
    kty, use, ops, kid = jwk.get("kty"), jwk.get("use"), jwk.get("key_ops"), jwk.get("kid")
    alg, crv = jwk.get("alg"), jwk.get("crv")
    if not isinstance(kty, str) or kty not in _ALGS_BY_KTY or _PRIVATE_MEMBERS & jwk.keys():
        return None
    if use is not None and use != "sig":
        return None
    if ops is not None and (not isinstance(ops, list) or not _SIGNATURE_OPS & set(map(str, ops))):
        return None
    if kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= MAX_KID_LENGTH):
        return None
    if alg is not None and alg not in _ALGS_BY_KTY[kty]:
        return None
    if crv is not None and not isinstance(crv, str):
        return None
    try:
        key: Any
        if kty == "RSA":
            key = RSAAlgorithm.from_jwk(jwk)
            if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
                return None
        elif kty == "EC":
            if crv not in ("P-256", "P-384", "P-521"):
                return None
            key = ECAlgorithm.from_jwk(jwk)
            if not isinstance(key, ec.EllipticCurvePublicKey):
                return None
        else:
            if crv != "Ed25519":
                return None
            key = OKPAlgorithm.from_jwk(jwk)
            if not isinstance(key, ed25519.Ed25519PublicKey):
                return None
    except Exception:  # noqa: BLE001 - any malformed member: skip this key, keep the set
        return None
    return VerificationKey(kid=kid, kty=kty, crv=crv, alg=alg, key=key)


def parse_jwks(document: Any) -> tuple[VerificationKey, ...]:
    """Parse a JWK Set document (RFC 7517 §5), skipping every key we cannot or must not use."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise _FetchError("not a JWK Set")
    keys: list[VerificationKey] = []
    skipped = 0
    for jwk in document["keys"][:MAX_KEYS]:
        parsed = _parse_key(jwk)
        if parsed is None:
            skipped += 1
        else:
            keys.append(parsed)
    if skipped:
        log.warning("JWK Set: skipped %d unusable key(s)", skipped)
    if not keys:
        raise _FetchError("no usable signing key in the JWK Set")
    return tuple(keys)


def secure_url(url: Any) -> bool:
    """https, or plain http on a loopback address: the rule the configuration applies."""
    if not isinstance(url, str) or len(url) > 2048:
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if not parts.hostname or parts.username is not None or parts.password is not None:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and is_loopback_url(url))


def _refuse_constant(name: str) -> Any:
    raise ValueError("NaN and Infinity are not JSON")


def parse_json(data: bytes | str) -> Any:
    """Strict JSON (RFC 8259): ``NaN``/``Infinity`` refused."""
    return json.loads(data, parse_constant=_refuse_constant)


class IssuerKeys:
    """The cached key set of one issuer. All methods are safe to call concurrently."""

    def __init__(
        self,
        issuer: JwtIssuer,
        *,
        session: aiohttp.ClientSession,
        clock: Callable[[], float],
        ttl_s: float,
        min_refetch_interval_s: float,
        fetch_timeout_s: float = FETCH_TIMEOUT_S,
    ) -> None:
        self.issuer = issuer.issuer
        self._configured_jwks_uri = issuer.jwks_uri
        self._jwks_uri = issuer.jwks_uri
        self._session = session
        self._clock = clock
        self._ttl = ttl_s
        self._min_interval = min_refetch_interval_s
        self._timeout = aiohttp.ClientTimeout(total=fetch_timeout_s)
        self._keys: KeySet | None = None
        self._inflight: asyncio.Future[bool] | None = None
        self._last_attempt: float | None = None
        #: number of fetch attempts of the JWK Set (discovery not counted); for metrics/tests
        self.fetch_count = 0
        #: failed fetch attempts (discovery included); for metrics
        self.failure_count = 0

    @property
    def ready(self) -> bool:
        """True once a key set has been fetched successfully."""
        return self._keys is not None

    async def keys_for(self, kid: str | None) -> list[VerificationKey]:
        """Candidate keys for ``kid`` (may be empty). Raises :class:`KeysUnavailable`.

        Refreshes the set when its TTL ran out, and refetches once per minimum interval when
        ``kid`` is unknown (RFC 7517 §4.5 — a new ``kid`` is how issuers rotate keys).
        """
        now = self._clock()
        current = self._keys
        if current is None:
            if not self._may_fetch(now, COLD_RETRY_INTERVAL_S):
                raise KeysUnavailable()
            await self.refresh()
            current = self._keys
            if current is None:
                raise KeysUnavailable()
        elif now >= current.expires_at and self._may_fetch(now, self._min_interval):
            await self.refresh()
            current = self._keys or current
        found = current.find(kid)
        if not found and kid is not None and self._may_fetch(self._clock(), self._min_interval):
            await self.refresh()
            current = self._keys or current
            found = current.find(kid)
        return found

    def _may_fetch(self, now: float, interval: float) -> bool:
        if self._inflight is not None:
            return True  # joining a fetch in flight costs nothing
        return self._last_attempt is None or now - self._last_attempt >= interval

    async def refresh(self) -> bool:
        """Fetch the key set now (or join the fetch in flight). True if the set is usable."""
        if self._inflight is None:
            self._last_attempt = self._clock()
            self._inflight = asyncio.ensure_future(self._fetch())
            self._inflight.add_done_callback(self._clear_inflight)
        return await asyncio.shield(self._inflight)

    def _clear_inflight(self, fut: asyncio.Future[bool]) -> None:
        if self._inflight is fut:
            self._inflight = None

    async def _fetch(self) -> bool:
        """One attempt: discovery if needed, then the JWK Set. Never raises."""
        try:
            if self._jwks_uri is None:
                self._jwks_uri = await self._discover()
            self.fetch_count += 1
            document, cache_control = await self._get_json(self._jwks_uri)
            keys = parse_jwks(document)
        except Exception as exc:  # noqa: BLE001 - never raise: a failed fetch is logged and retried
            self.failure_count += 1
            self._jwks_uri = self._configured_jwks_uri  # rediscover next time
            log.warning(
                "JWK Set of issuer %s could not be fetched (%s)%s",
                self.issuer,
                exc if isinstance(exc, _FetchError) else type(exc).__name__,
                "; keeping the last good key set" if self._keys is not None else "",
            )
            return self._keys is not None
        now = self._clock()
        ttl = self._ttl_for(cache_control)
        self._keys = KeySet(keys=keys, fetched_at=now, expires_at=now + ttl)
        return True

    async def close(self) -> None:
        """Cancel a fetch in flight."""
        inflight = self._inflight
        if inflight is not None and not inflight.done():
            inflight.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await inflight

    def _ttl_for(self, cache_control: str) -> float:
        """Configured TTL, shortened by the issuer's Cache-Control (RFC 9111 §5.2.2.1)."""
        floor = min(self._min_interval, self._ttl)
        if _NO_CACHE.search(cache_control):
            return floor
        match = _MAX_AGE.search(cache_control)
        if match is None:
            return self._ttl
        return max(floor, min(self._ttl, float(match.group(1))))

    async def _discover(self) -> str:
        """OpenID Connect Discovery 1.0 §4: the issuer's ``jwks_uri``."""
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document, _ = await self._get_json(url)
        if not isinstance(document, dict) or document.get("issuer") != self.issuer:
            raise _FetchError("discovery document names another issuer")
        jwks_uri = document.get("jwks_uri")
        if not secure_url(jwks_uri):
            raise _FetchError("discovered jwks_uri is not https (or loopback http)")
        assert isinstance(jwks_uri, str)  # narrowed by secure_url
        return jwks_uri

    async def _get_json(self, url: str) -> tuple[Any, str]:
        """GET a JSON document: no redirects, bounded time and size. Returns Cache-Control."""
        async with self._session.get(
            url,
            allow_redirects=False,
            timeout=self._timeout,
            headers={"Accept": "application/json, application/jwk-set+json"},
        ) as resp:
            if resp.status != 200:
                raise _FetchError(f"HTTP status {resp.status}")
            body = await read_limited(resp, MAX_DOCUMENT_BYTES)
            try:
                return parse_json(body), resp.headers.get("Cache-Control", "")
            except (ValueError, UnicodeDecodeError):
                raise _FetchError("not JSON") from None


async def read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """Read a response body of at most ``limit`` bytes; a larger one raises ``ValueError``."""
    body = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise ValueError("response body too large")
    return bytes(body)
