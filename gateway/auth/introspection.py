"""Opaque access tokens: OAuth 2.0 Token Introspection (RFC 7662) with a bounded cache.

Request (RFC 7662 §2.1): ``POST`` form ``token=…&token_type_hint=access_token``,
authenticated with ``client_secret_basic`` (RFC 6749 §2.3.1: client id and secret are
form-urlencoded before the Basic encoding). Redirects are not followed.

Response (RFC 7662 §2.2): ``active`` must be the JSON literal ``true``; anything else is an
inactive token (401). An active answer must carry ``exp`` and a scope claim (our rule: without
them we cannot bound the cache or authorize), must not be expired, must not be sender-constrained
(``cnf``), must name our audience when it carries ``aud`` at all, and its ``token_type`` (when
given) must be a bearer access token. A non-200 status, a non-JSON body, a timeout or a
connection failure means the authorization server could not tell us: 503, never access.

Cache (RFC 7662 §4 allows caching, trading freshness against load): keyed by the token's SHA-256
fingerprint, never the token. An active answer is kept until ``min(exp, now + cache_max_ttl_s)``,
so a revocation is honoured within ``cache_max_ttl_s``; an inactive or refused answer for
``negative_cache_ttl_s``. Concurrent look-ups of the same token share one request.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import aiohttp
from cachetools import TLRUCache

from gateway.auth.bearer import (
    DESCRIPTION_EXPIRED,
    DESCRIPTION_INACTIVE,
    DESCRIPTION_INVALID,
    TokenRejected,
)
from gateway.auth.jwks import parse_json, read_limited
from gateway.auth.principal import SCOPE_ARRAY_CLAIM, is_number
from gateway.config import Introspection

log = logging.getLogger("gateway.auth.introspection")

MAX_RESPONSE_BYTES = 64 * 1024
_BEARER_TOKEN_TYPES = frozenset({"bearer", "access_token"})


class IntrospectionUnavailable(Exception):
    """Internal: the introspection endpoint gave no usable answer (→ 503)."""


@dataclass(frozen=True, slots=True)
class _Answer:
    """A cached outcome: the active answer's members, or the refusal to repeat."""

    claims: Mapping[str, Any] | None
    rejection: tuple[str, str, str] | None  # (reason, description, detail) when refused
    expires: float


def client_secret_basic(client_id: str, client_secret: str) -> str:
    """RFC 6749 §2.3.1: form-urlencode id and secret, then HTTP Basic (RFC 7617)."""
    pair = f"{quote_plus(client_id, safe='')}:{quote_plus(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode("ascii")).decode("ascii")


def _entry_expiry(_key: str, value: _Answer, _now: float) -> float:
    return value.expires


class Introspector:
    """Introspects opaque tokens at one RFC 7662 endpoint, caching answers by fingerprint."""

    def __init__(
        self,
        cfg: Introspection,
        *,
        session: aiohttp.ClientSession,
        clock: Callable[[], float],
        leeway_s: float,
        audiences: Sequence[str],
        scope_claim: str,
    ) -> None:
        self._cfg = cfg
        self._session = session
        self._clock = clock
        self._leeway = leeway_s
        self._audiences = tuple(audiences)
        self._scope_claim = scope_claim
        self._authorization = client_secret_basic(cfg.client_id, cfg.client_secret)
        self._cache: TLRUCache[str, _Answer] = TLRUCache(
            maxsize=cfg.cache_size, ttu=_entry_expiry, timer=clock
        )
        self._inflight: dict[str, asyncio.Task[_Answer | None]] = {}
        #: number of requests sent to the endpoint; for metrics and tests
        self.request_count = 0
        #: requests without a usable answer, and a latency observer (seconds); for metrics
        self.failure_count = 0
        self.observe_latency: Callable[[float], None] | None = None

    def cache_keys(self) -> list[str]:
        """The fingerprints currently cached (for tests and diagnostics)."""
        return list(self._cache.keys())

    async def introspect(self, token: str, fingerprint: str) -> Mapping[str, Any]:
        """The validated active answer for ``token``.

        Raises :class:`TokenRejected` (→ 401) or :class:`IntrospectionUnavailable` (→ 503).
        """
        answer = self._cache.get(fingerprint)
        if answer is None:
            task = self._inflight.get(fingerprint)
            if task is None:
                task = asyncio.ensure_future(self._ask(token, fingerprint))
                self._inflight[fingerprint] = task
                task.add_done_callback(lambda _t: self._inflight.pop(fingerprint, None))
            answer = await asyncio.shield(task)
        if answer is None:
            raise IntrospectionUnavailable()
        if answer.rejection is not None:
            reason, description, detail = answer.rejection
            raise TokenRejected(reason, description, detail=detail)
        assert answer.claims is not None  # one of the two is always set
        exp = answer.claims["exp"]
        if self._clock() >= exp + self._leeway:
            raise TokenRejected("token.expired", DESCRIPTION_EXPIRED, detail="exp")
        return answer.claims

    async def close(self) -> None:
        """Cancel requests in flight."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _ask(self, token: str, fingerprint: str) -> _Answer | None:
        """One introspection request; ``None`` when the endpoint gave no usable answer."""
        self.request_count += 1
        started = time.perf_counter()
        try:
            document = await self._post(token)
        except Exception as exc:  # noqa: BLE001 - any failure to get an answer is a 503
            self.failure_count += 1
            log.warning(
                "token introspection at %s failed (%s)", self._cfg.endpoint, type(exc).__name__
            )
            return None
        finally:
            if self.observe_latency is not None:
                self.observe_latency(time.perf_counter() - started)
        answer = self._judge(document)
        if answer.expires > self._clock():
            self._cache[fingerprint] = answer
        return answer

    async def _post(self, token: str) -> Any:
        """POST the token; one retry when a pooled keep-alive connection turns out closed.

        Introspection changes nothing at the server, so repeating it is safe (aiohttp itself
        only retries idempotent methods). Both attempts share the one ``timeout_s`` budget.
        """
        async with asyncio.timeout(self._cfg.timeout_s):
            try:
                body = await self._post_once(token)
            except aiohttp.ServerDisconnectedError:
                body = await self._post_once(token)
        document = parse_json(body)
        if not isinstance(document, dict):
            raise IntrospectionUnavailable("not a JSON object")
        return document

    async def _post_once(self, token: str) -> bytes:
        async with self._session.post(
            self._cfg.endpoint,
            data={"token": token, "token_type_hint": "access_token"},
            headers={"Accept": "application/json", "Authorization": self._authorization},
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=self._cfg.timeout_s),
        ) as resp:
            if resp.status != 200:
                raise IntrospectionUnavailable(f"HTTP status {resp.status}")
            return await read_limited(resp, MAX_RESPONSE_BYTES)

    def _judge(self, doc: Mapping[str, Any]) -> _Answer:
        """Apply RFC 7662 §2.2 and our rules to one answer; compute its cache lifetime."""
        now = self._clock()
        negative_until = now + self._cfg.negative_cache_ttl_s

        def refuse(
            detail: str, reason: str = "token.invalid", description: str = DESCRIPTION_INVALID
        ) -> _Answer:
            return _Answer(
                claims=None, rejection=(reason, description, detail), expires=negative_until
            )

        if doc.get("active") is not True:
            return refuse("inactive", "token.revoked", DESCRIPTION_INACTIVE)
        exp = doc.get("exp")
        if not is_number(exp):
            return refuse("exp")
        if now >= exp + self._leeway:
            return refuse("exp", "token.expired", DESCRIPTION_EXPIRED)
        nbf = doc.get("nbf")
        if nbf is not None and (not is_number(nbf) or nbf > now + self._leeway):
            return refuse("nbf")
        if self._scope_claim not in doc and SCOPE_ARRAY_CLAIM not in doc:
            return refuse("no-scope")
        if "cnf" in doc:
            return refuse("sender-constrained")
        token_type = doc.get("token_type")
        if token_type is not None and (
            not isinstance(token_type, str) or token_type.lower() not in _BEARER_TOKEN_TYPES
        ):
            return refuse("token-type")
        if "aud" in doc:
            aud = doc["aud"]
            values = aud if isinstance(aud, list) else [aud]
            if not any(isinstance(a, str) and a in self._audiences for a in values):
                return refuse("aud")
        expires = min(float(exp), now + self._cfg.cache_max_ttl_s)
        return _Answer(claims=dict(doc), rejection=None, expires=expires)
