"""Prometheus metrics: one registry per application, scraped on the admin listener.

Label discipline (checked by ``tests/integration/test_ops_metrics.py``): labels carry only
values from small, gateway-defined sets — FHIR interaction names, resource type names (validated
against the R4 list), status classes (``2xx``), reason codes, policy ids, configured issuer
URLs, sink and limit names. Never a patient id, a raw path or query, a token (or its
fingerprint), a client id or a client IP address.

Counters that live inside other components (JWKS fetches, introspection calls, the token cache,
policy reloads) are read at scrape time by :class:`ComponentCollector`, so those components
keep plain integer attributes and do not depend on this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.fhir.tables import RESOURCE_TYPES

if TYPE_CHECKING:
    from gateway.access.verify import PolicyTally
    from gateway.handler import Gateway

PREFIX = "fhir_gateway"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: request latency buckets (seconds): a gateway adds milliseconds; upstreams take longer
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def resource_type_label(value: str | None) -> str:
    """A resource type name from the R4 list, else ``-`` (never free text from the client)."""
    return value if value is not None and value in RESOURCE_TYPES else "-"


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


class Metrics:
    """The metric objects of one gateway. Create one per application (tests run several)."""

    def __init__(self) -> None:
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "FHIR requests by interaction, resource type, status class and decision reason.",
            ["interaction", "resource_type", "status_class", "reason"],
            registry=r,
        )
        self.request_duration = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from request to response decided, at the gateway (FHIR requests).",
            ["interaction"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            f"{PREFIX}_upstream_duration_seconds",
            "Upstream FHIR server latency (to the end of the answer as read by the gateway).",
            ["interaction"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            f"{PREFIX}_upstream_errors",
            "Requests that ended in an upstream error, by kind (timeout, unreachable, ...).",
            ["kind"],
            registry=r,
        )
        self.introspection_duration = Histogram(
            f"{PREFIX}_introspection_duration_seconds",
            "Latency of token introspection requests (RFC 7662).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.policy_withheld = Counter(
            f"{PREFIX}_policy_withheld",
            "Resources withheld from answers, by policy id.",
            ["policy"],
            registry=r,
        )
        self.policy_redacted = Counter(
            f"{PREFIX}_policy_redacted",
            "Resources redacted in answers, by policy id.",
            ["policy"],
            registry=r,
        )
        self.break_glass = Counter(
            f"{PREFIX}_break_glass_requests",
            "Requests in which a break-the-glass exception made a difference, by policy id.",
            ["policy"],
            registry=r,
        )
        self.rate_limited = Counter(
            f"{PREFIX}_rate_limited",
            "Requests refused by a limit: client (429), anonymous (429), concurrency (503).",
            ["limit"],
            registry=r,
        )
        self.upstream_inflight = Gauge(
            f"{PREFIX}_upstream_inflight",
            "Upstream requests in flight under the concurrency cap.",
            registry=r,
        )
        self.upstream_waiting = Gauge(
            f"{PREFIX}_upstream_waiting",
            "Requests waiting for an upstream slot (the bounded wait queue).",
            registry=r,
        )
        self.audit_records = Counter(
            f"{PREFIX}_audit_records",
            "Audit records by sink and result (written, delivered, spilled).",
            ["sink", "result"],
            registry=r,
        )
        self.audit_delivery_failures = Counter(
            f"{PREFIX}_audit_delivery_failures",
            "Failed attempts to deliver an AuditEvent batch (each is retried or spilled).",
            registry=r,
        )
        self.audit_queue_depth = Gauge(
            f"{PREFIX}_audit_queue_depth",
            "Audit records waiting to be sent to the FHIR AuditEvent sink.",
            registry=r,
        )
        # prometheus_client pre-creates nothing for labelled metrics: make the common series
        # exist at zero so rate() and absent() alerts work from the first scrape
        for limit in ("client", "anonymous", "concurrency"):
            self.rate_limited.labels(limit)

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: ``labels()`` takes a lock and validates on
        every call, a measurable share of a small request. Label values are bounded (checked
        by the label-discipline test), so the cache is too."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def count_policies(self, tally: PolicyTally | None) -> None:
        if tally is None:
            return
        for policy, n in tally.withheld.items():
            self.child(self.policy_withheld, policy).inc(n)
        for policy, n in tally.redacted.items():
            self.child(self.policy_redacted, policy).inc(n)
        for policy in tally.break_glass:
            self.child(self.break_glass, policy).inc()

    def watch(self, gateway: Callable[[], Gateway | None]) -> None:
        """Expose the counters of the gateway's components (read at scrape time)."""
        self.registry.register(ComponentCollector(gateway))

    def scrape(self) -> bytes:
        return generate_latest(self.registry)


class ComponentCollector(Collector):
    """Token cache, JWKS, introspection and policy-reload counters, read from the components."""

    def __init__(self, gateway: Callable[[], Gateway | None]) -> None:
        self._gateway = gateway

    def describe(self) -> list[Metric]:
        return []  # the families depend on the configuration: collected, not described

    def collect(self) -> Iterator[Metric]:
        gw = self._gateway()
        if gw is None:
            return
        authn = gw.authenticator
        hits = CounterMetricFamily(f"{PREFIX}_token_cache_hits", "Verified-token cache hits.")
        hits.add_metric([], authn.cache_hits)
        misses = CounterMetricFamily(f"{PREFIX}_token_cache_misses", "Verified-token cache misses.")
        misses.add_metric([], authn.cache_misses)
        yield hits
        yield misses
        fetches = CounterMetricFamily(
            f"{PREFIX}_jwks_fetches", "JWK Set fetch attempts, by issuer.", labels=["issuer"]
        )
        failures = CounterMetricFamily(
            f"{PREFIX}_jwks_fetch_failures", "Failed JWK Set fetches, by issuer.", labels=["issuer"]
        )
        ready = GaugeMetricFamily(
            f"{PREFIX}_jwks_ready", "1 once the issuer's key set was fetched.", labels=["issuer"]
        )
        for issuer, keys in authn.issuer_keys.items():
            fetches.add_metric([issuer], keys.fetch_count)
            failures.add_metric([issuer], keys.failure_count)
            ready.add_metric([issuer], 1 if keys.ready else 0)
        yield fetches
        yield failures
        yield ready
        intro = authn.introspector
        if intro is not None:
            calls = CounterMetricFamily(
                f"{PREFIX}_introspection_requests", "Token introspection requests sent."
            )
            calls.add_metric([], intro.request_count)
            failed = CounterMetricFamily(
                f"{PREFIX}_introspection_failures",
                "Introspection requests without a usable answer (each is a 503).",
            )
            failed.add_metric([], intro.failure_count)
            yield calls
            yield failed
        reloads = CounterMetricFamily(f"{PREFIX}_policy_reloads", "Successful policy reloads.")
        reloads.add_metric([], gw.policies.reloads)
        reload_failures = CounterMetricFamily(
            f"{PREFIX}_policy_reload_failures", "Failed policy reloads (the last good set stays)."
        )
        reload_failures.add_metric([], gw.policies.failures)
        yield reloads
        yield reload_failures
