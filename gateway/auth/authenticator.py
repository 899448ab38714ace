"""The authenticate stage: an ``Authorization`` header in, a :class:`Principal` out.

Order of work for one request:

1. RFC 6750 §2.1 transport rules (:mod:`gateway.auth.bearer`): 401 without a token, 400 for a
   token in two places, 401 ``invalid_token`` for a malformed header;
2. the verified-token cache, keyed by the token's SHA-256 fingerprint: a JWT verified once is
   served until ``min(exp + leeway, verified + token_cache_max_ttl_s)``;
3. a JWS whose (unverified) ``iss`` is a configured issuer is verified locally
   (:mod:`gateway.auth.jwt`) — never introspected, since authorization servers refuse to
   introspect their own JWT access tokens;
4. anything else goes to RFC 7662 introspection when it is configured
   (:mod:`gateway.auth.introspection`), else it is refused.

Failure mapping (fail closed; nothing ever leaks the token or a claim value):

=================================  ======  ==================================
condition                          status  reason
=================================  ======  ==================================
no bearer token                    401     ``token.missing``
token in header and query/body     400     ``token.invalid-request``
malformed / invalid / refused      401     ``token.invalid``
expired                            401     ``token.expired``
introspection says not active      401     ``token.revoked``
issuer keys never fetched          503     ``token.issuer-unavailable``
introspection endpoint failing     503     ``token.introspection-unavailable``
any unexpected exception           401     ``token.invalid``
=================================  ======  ==================================
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from cachetools import TLRUCache

from gateway.auth.bearer import TokenRejected, extract_bearer, invalid_token
from gateway.auth.introspection import IntrospectionUnavailable, Introspector
from gateway.auth.jwks import IssuerKeys, KeysUnavailable
from gateway.auth.jwt import JwtVerifier, split_jws
from gateway.auth.principal import Principal, TokenKind, build_principal, fingerprint
from gateway.config import AuthConfig
from gateway.errors import ServiceUnavailable

log = logging.getLogger("gateway.auth")

RETRY_AFTER_S = 5
_INITIAL_BACKOFF_S = 1.0
_MAX_BACKOFF_S = 30.0


def _audiences(configured: str | list[str] | None, default: str) -> tuple[str, ...]:
    if configured is None:
        return (default,)
    return (configured,) if isinstance(configured, str) else tuple(configured)


class Authenticator:
    """Validates bearer tokens: JWTs of the configured issuers locally, others by introspection.

    Lifetime: ``await start()`` once the event loop runs (starts the initial key-set fetches in
    the background), ``await close()`` on shutdown. ``ready`` turns true once every configured
    issuer's key set was fetched once.
    """

    def __init__(
        self,
        cfg: AuthConfig,
        *,
        default_audience: str,
        realm: str,
        session: aiohttp.ClientSession,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cfg = cfg
        self._realm = realm
        self._clock = clock
        self._leeway = cfg.leeway_s
        self._issuer_keys: dict[str, IssuerKeys] = {}
        self._verifiers: dict[str, JwtVerifier] = {}
        for issuer in cfg.jwt:
            keys = IssuerKeys(
                issuer,
                session=session,
                clock=clock,
                ttl_s=cfg.jwks_cache_ttl_s,
                min_refetch_interval_s=cfg.jwks_min_refetch_interval_s,
            )
            self._issuer_keys[issuer.issuer] = keys
            self._verifiers[issuer.issuer] = JwtVerifier(
                issuer=issuer.issuer,
                algorithms=issuer.algorithms,
                audiences=_audiences(issuer.audience, default_audience),
                keys=keys,
                leeway_s=cfg.leeway_s,
                scope_claim=cfg.claims.scope,
                clock=clock,
            )
        self._introspector: Introspector | None = None
        if cfg.introspection is not None:
            self._introspector = Introspector(
                cfg.introspection,
                session=session,
                clock=clock,
                leeway_s=cfg.leeway_s,
                audiences=(default_audience,),
                scope_claim=cfg.claims.scope,
            )
        self._verified: TLRUCache[str, Principal] = TLRUCache(
            maxsize=cfg.token_cache_size, ttu=self._verified_until, timer=clock
        )
        self._tasks: list[asyncio.Task[None]] = []
        #: verified-token cache lookups, for metrics
        self.cache_hits = 0
        self.cache_misses = 0

    # ------------------------------------------------------------------ lifetime

    async def start(self) -> None:
        """Start fetching every issuer's key set in the background (retrying). Never raises."""
        if self._tasks:
            return
        for keys in self._issuer_keys.values():
            self._tasks.append(asyncio.create_task(self._initial_fetch(keys)))

    async def close(self) -> None:
        """Cancel the background fetches and the requests in flight."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for keys in self._issuer_keys.values():
            await keys.close()
        if self._introspector is not None:
            await self._introspector.close()

    @property
    def ready(self) -> bool:
        """True once every configured issuer's key set was fetched at least once."""
        return all(keys.ready for keys in self._issuer_keys.values())

    @property
    def issuer_keys(self) -> Mapping[str, IssuerKeys]:
        """The key-set cache of each configured issuer (for health reporting and metrics)."""
        return self._issuer_keys

    @property
    def introspector(self) -> Introspector | None:
        return self._introspector

    async def _initial_fetch(self, keys: IssuerKeys) -> None:
        delay = _INITIAL_BACKOFF_S
        while not keys.ready:
            try:
                if await keys.refresh():
                    return
            except Exception as exc:  # noqa: BLE001 - keep retrying; start() must never fail
                log.warning("initial key fetch for %s failed (%s)", keys.issuer, type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF_S)

    # ------------------------------------------------------------------ requests

    async def authenticate(self, authorization: str | None, *, token_elsewhere: bool) -> Principal:
        """Authenticate one request (RFC 6750 §2.1, §3). Returns a Principal or raises.

        Raises :class:`~gateway.errors.Unauthorized` (401),
        :class:`~gateway.errors.InvalidRequest` (400) or
        :class:`~gateway.errors.ServiceUnavailable` (503).
        """
        token = extract_bearer(authorization, token_elsewhere=token_elsewhere, realm=self._realm)
        token_fp = fingerprint(token)
        try:
            return await self._authenticate(token, token_fp)
        except TokenRejected as exc:
            log.debug("bearer token refused: %s (%s)", exc.reason, exc.detail)
            raise invalid_token(self._realm, exc.reason, exc.description) from None
        except KeysUnavailable:
            raise ServiceUnavailable(
                "The token issuer's signing keys are not available.",
                headers={"Retry-After": str(RETRY_AFTER_S)},
                reason="token.issuer-unavailable",
            ) from None
        except IntrospectionUnavailable:
            raise ServiceUnavailable(
                "The token introspection service is not available.",
                headers={"Retry-After": str(RETRY_AFTER_S)},
                reason="token.introspection-unavailable",
            ) from None
        except Exception as exc:  # noqa: BLE001 - fail closed: never a Principal
            log.error("unexpected %s while authenticating; token refused", type(exc).__name__)
            raise invalid_token(self._realm) from None

    async def _authenticate(self, token: str, token_fp: str) -> Principal:
        cached = self._verified.get(token_fp)
        if cached is not None and self._clock() < cached.expires_at + self._leeway:
            self.cache_hits += 1
            return cached
        self.cache_misses += 1
        jws = split_jws(token)
        if jws is not None:
            header, unverified = jws
            iss = unverified.get("iss")
            verifier = self._verifiers.get(iss) if isinstance(iss, str) else None
            if verifier is not None:
                claims = await verifier.verify(token, header)
                principal = self._principal(claims, token_fp, "jwt")
                self._verified[token_fp] = principal
                return principal
        if self._introspector is None:
            raise TokenRejected(detail="unknown-issuer" if jws is not None else "not-a-jwt")
        answer = await self._introspector.introspect(token, token_fp)
        # Validated by the authorization server (possibly a JWT of an issuer we do not verify).
        return self._principal(answer, token_fp, "opaque")

    def _principal(self, claims: Mapping[str, Any], token_fp: str, kind: TokenKind) -> Principal:
        return build_principal(
            claims, names=self._cfg.claims, token_fingerprint=token_fp, token_kind=kind
        )

    def _verified_until(self, _key: str, principal: Principal, now: float) -> float:
        return min(principal.expires_at + self._leeway, now + self._cfg.token_cache_max_ttl_s)
