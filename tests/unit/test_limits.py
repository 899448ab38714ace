"""Token buckets, scope levels, the caller's address and the upstream slot queue."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config import Bucket, LimitsConfig
from gateway.errors import ServiceUnavailable, TooManyRequests
from gateway.ops.limits import Limits, TokenBuckets, client_address, scope_level
from gateway.ops.metrics import Metrics
from gateway.upstream.headers import TrustedProxies


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_burst_then_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(10, clock)
    bucket = Bucket(rate_per_s=2, burst=3)
    assert [buckets.take("a", bucket) for _ in range(3)] == [0, 0, 0]
    assert buckets.take("a", bucket) == pytest.approx(0.5)
    clock.now += 0.5
    assert buckets.take("a", bucket) == 0
    clock.now += 100  # refills to the burst, not beyond
    assert [buckets.take("a", bucket) for _ in range(4)][-1] > 0


def test_buckets_are_bounded_lru() -> None:
    buckets = TokenBuckets(2, Clock())
    bucket = Bucket(rate_per_s=1, burst=1)
    for key in ("a", "b", "c"):
        buckets.take(key, bucket)
    assert len(buckets) == 2


@pytest.mark.parametrize(
    ("scopes", "level"),
    [
        (("patient/*.rs",), "patient"),
        (("openid", "user/Observation.rs", "patient/*.rs"), "user"),
        (("system/*.rs", "user/*.rs"), "system"),
        (("openid",), "patient"),
    ],
)
def test_scope_level(scopes: tuple[str, ...], level: str) -> None:
    assert scope_level(scopes) == level


def test_client_address_believes_trusted_proxies_only() -> None:
    trusted = TrustedProxies(["10.0.0.0/8"])
    assert client_address("192.0.2.1", "203.0.113.9", trusted) == "192.0.2.1"
    assert client_address("10.0.0.5", "203.0.113.9, 10.0.0.7", trusted) == "203.0.113.9"
    assert client_address("10.0.0.5", "not-an-ip", trusted) == "10.0.0.5"
    assert client_address(None, None, trusted) == "-"


class Principal:
    def __init__(self, client_id: str | None, scopes: tuple[str, ...]) -> None:
        self.client_id = client_id
        self.scopes = scopes
        self.issuer = "https://as.example"
        self.subject = "s"


def test_client_limit_by_level_with_retry_after() -> None:
    metrics = Metrics()
    cfg = LimitsConfig(clients={"patient": {"rate_per_s": 0.25, "burst": 1}})
    limits = Limits(cfg, metrics, Clock())
    app = Principal("app", ("patient/*.rs",))
    limits.check_client(app)
    with pytest.raises(TooManyRequests) as info:
        limits.check_client(app)
    assert info.value.status == 429 and info.value.headers["Retry-After"] == "4"
    limits.check_client(Principal("other-app", ("patient/*.rs",)))
    for _ in range(5):  # no bucket configured for user level: unlimited
        limits.check_client(Principal("app", ("user/*.rs",)))
    assert metrics.rate_limited.labels("client")._value.get() == 1


async def test_upstream_slot_queue_and_timeout() -> None:
    cfg = LimitsConfig(upstream_concurrency=1, upstream_queue=1, upstream_queue_timeout_s=0.05)
    limits = Limits(cfg)
    async with limits.upstream_slot():
        waiter = asyncio.create_task(_enter(limits))
        await asyncio.sleep(0)
        assert limits.waiting == 1
        with pytest.raises(ServiceUnavailable) as info:  # the queue is full: at once
            await _enter(limits)
        assert info.value.headers["Retry-After"] == "1"
        with pytest.raises(ServiceUnavailable):  # the waiter times out
            await waiter
    assert limits.inflight == 0 and limits.waiting == 0
    await _enter(limits)  # the slot is free again


async def _enter(limits: Limits) -> None:
    async with limits.upstream_slot():
        pass
