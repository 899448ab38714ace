"""Rate limits and the upstream concurrency cap. Every limit is per replica (in memory).

- **Token buckets** (``limits.clients.<level>``): one bucket per client id, sized by the
  scope level of the token (``system`` if any ``system/`` scope, else ``user``, else
  ``patient``). A request that finds the bucket empty gets 429 ``throttled`` with
  ``Retry-After`` (whole seconds until a token is back). Requests without a bearer token are
  limited per source address (``limits.anonymous``) before anything else runs; the address is
  the peer, or the client address a trusted proxy reports in ``X-Forwarded-For``.
- **Upstream concurrency** (``limits.upstream_concurrency``): at most N upstream requests at
  once, gateway-wide; up to ``upstream_queue`` more wait (at most
  ``upstream_queue_timeout_s``); beyond that, or after the wait, 503 with ``Retry-After``.
  The slot is held from sending the request until the upstream's response headers arrive.

Buckets live in a bounded LRU map (``max_buckets``): an evicted bucket comes back full, which
errs on the side of the client, never of refusing a stranger.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from multidict import CIMultiDict
from yarl import URL

from gateway.config import Bucket, LimitsConfig, UpstreamConfig
from gateway.errors import ServiceUnavailable, TooManyRequests
from gateway.ops.metrics import Metrics
from gateway.upstream.client import Body, UpstreamCall, UpstreamClient
from gateway.upstream.headers import TrustedProxies

LEVELS = ("system", "user", "patient")


@dataclass(slots=True)
class _State:
    tokens: float
    updated: float


class TokenBuckets:
    """Token buckets keyed by an opaque string, bounded in number (LRU)."""

    def __init__(self, max_buckets: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max_buckets
        self._clock = clock
        self._states: OrderedDict[str, _State] = OrderedDict()

    def take(self, key: str, bucket: Bucket) -> float:
        """Take one token. Returns 0 when granted, else the seconds until one is available."""
        now = self._clock()
        state = self._states.get(key)
        if state is None:
            state = _State(tokens=float(bucket.burst), updated=now)
            self._states[key] = state
            if len(self._states) > self._max:
                self._states.popitem(last=False)
        else:
            self._states.move_to_end(key)
            elapsed = max(0.0, now - state.updated)
            state.tokens = min(float(bucket.burst), state.tokens + elapsed * bucket.rate_per_s)
            state.updated = now
        if state.tokens >= 1.0:
            state.tokens -= 1.0
            return 0.0
        return (1.0 - state.tokens) / bucket.rate_per_s

    def __len__(self) -> int:
        return len(self._states)


def scope_level(scopes: tuple[str, ...]) -> str:
    """The broadest SMART level among the scopes: system > user > patient."""
    prefixes = {s.split("/", 1)[0] for s in scopes if "/" in s}
    for level in LEVELS:
        if level in prefixes:
            return level
    return "patient"


def client_address(peer: str | None, forwarded_for: str | None, trusted: TrustedProxies) -> str:
    """The caller's address: the peer, or (behind trusted proxies) the nearest untrusted hop."""
    address = peer or "-"
    if address not in trusted or not forwarded_for:
        return address
    for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return address  # a malformed chain: believe only the peer
        if hop not in trusted:
            return hop
        address = hop
    return address


def _retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


class Limits:
    """The rate limits and the concurrency cap of one gateway."""

    def __init__(
        self,
        cfg: LimitsConfig,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cfg = cfg
        self._metrics = metrics
        self._clients = TokenBuckets(cfg.max_buckets, clock)
        self._addresses = TokenBuckets(cfg.max_buckets, clock)
        self._slots = (
            asyncio.Semaphore(cfg.upstream_concurrency) if cfg.upstream_concurrency else None
        )
        self.waiting = 0
        self.inflight = 0

    @classmethod
    def off(cls) -> Limits:
        return cls(LimitsConfig())

    def _refuse(self, limit: str, wait_s: float) -> TooManyRequests:
        if self._metrics is not None:
            self._metrics.rate_limited.labels(limit).inc()
        return TooManyRequests(
            "Too many requests; retry later.",
            headers={"Retry-After": _retry_after(wait_s)},
            reason=f"limit.{limit}",
        )

    def check_anonymous(self, address: str) -> None:
        """Per source address, for requests without a bearer token. Raises 429."""
        bucket = self._cfg.anonymous
        if bucket is not None:
            wait = self._addresses.take(address, bucket)
            if wait:
                raise self._refuse("anonymous", wait)

    def check_client(self, principal: object) -> None:
        """Per client id (falling back to issuer + subject), by scope level. Raises 429."""
        scopes: tuple[str, ...] = getattr(principal, "scopes", ())
        level = scope_level(scopes)
        bucket: Bucket | None = getattr(self._cfg.clients, level)
        if bucket is None:
            return
        client = getattr(principal, "client_id", None) or (
            f"{getattr(principal, 'issuer', None)}|{getattr(principal, 'subject', None)}"
        )
        wait = self._clients.take(f"{level}|{client}", bucket)
        if wait:
            raise self._refuse("client", wait)

    @asynccontextmanager
    async def upstream_slot(self) -> AsyncIterator[None]:
        """Hold one of the ``upstream_concurrency`` slots; 503 when the wait queue is full."""
        slots = self._slots
        if slots is None:
            yield
            return
        if slots.locked():
            if self.waiting >= self._cfg.upstream_queue:
                raise self._unavailable()
            self.waiting += 1
            self._gauge()
            try:
                async with asyncio.timeout(self._cfg.upstream_queue_timeout_s):
                    await slots.acquire()
            except TimeoutError:
                raise self._unavailable() from None
            finally:
                self.waiting -= 1
                self._gauge()
        else:
            await slots.acquire()
        self.inflight += 1
        self._gauge()
        try:
            yield
        finally:
            self.inflight -= 1
            slots.release()
            self._gauge()

    def _unavailable(self) -> ServiceUnavailable:
        if self._metrics is not None:
            self._metrics.rate_limited.labels("concurrency").inc()
        return ServiceUnavailable(
            "The gateway is at its upstream concurrency limit; retry later.",
            headers={"Retry-After": str(self._cfg.retry_after_s)},
            reason="limit.concurrency",
        )

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.upstream_inflight.set(self.inflight)
            self._metrics.upstream_waiting.set(self.waiting)


class LimitedUpstreamClient(UpstreamClient):
    """The upstream client with every request (forward, prechecks, batch Bundles, discovery)
    sent under the concurrency cap."""

    def __init__(self, cfg: UpstreamConfig, limits: Limits) -> None:
        super().__init__(cfg)
        self._limits = limits

    async def send(
        self, method: str, url: URL, headers: CIMultiDict[str], body: Body
    ) -> UpstreamCall:
        async with self._limits.upstream_slot():
            return await super().send(method, url, headers, body)
