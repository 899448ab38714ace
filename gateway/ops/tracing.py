"""Optional OpenTelemetry tracing (``tracing.enabled``, off by default).

One SERVER span per request, named ``{METHOD} {route template}`` (``GET Observation/{id}``),
with the method, route template, status code, FHIR interaction and the decision reason as
attributes. Never the URL, the query string, header values, ids or bodies: the stock aiohttp
instrumentation records ``http.target``/``url.query`` (which may carry PHI) and is not used.

The packages are an optional extra (``pip install 'fhir-gateway[tracing]'``:
``opentelemetry-sdk`` and ``opentelemetry-exporter-otlp-proto-http``). With tracing enabled
and the packages missing, ``check-config`` and start-up fail with that message.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from gateway.config import TracingConfig

REQUIRED = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter")


def missing_packages() -> list[str]:
    """The OpenTelemetry modules tracing needs that cannot be imported."""
    missing = []
    for name in REQUIRED:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


@dataclass(slots=True)
class RequestSpan:
    """The request's span (or nothing, when tracing is off)."""

    span: Any = None

    def finish(
        self,
        *,
        method: str,
        route: str,
        status: int,
        interaction: str | None,
        reason: str | None,
    ) -> None:
        if self.span is None:
            return
        self.span.update_name(f"{method} {route}")
        self.span.set_attribute("http.request.method", method)
        self.span.set_attribute("http.route", route)
        self.span.set_attribute("http.response.status_code", status)
        if interaction:
            self.span.set_attribute("fhir.interaction", interaction)
        if reason:
            self.span.set_attribute("gateway.reason", reason)
        if status >= 500:
            otel = importlib.import_module("opentelemetry.trace")
            self.span.set_status(otel.Status(otel.StatusCode.ERROR))


class Tracing:
    """Creates request spans; a no-op unless enabled."""

    def __init__(self, cfg: TracingConfig, tracer_provider: Any = None) -> None:
        self._cfg = cfg
        self._provider: Any = tracer_provider
        self._tracer: Any = None
        self._owns_provider = False

    @property
    def enabled(self) -> bool:
        return self._cfg.enabled

    def start(self) -> None:
        if not self._cfg.enabled:
            return
        missing = missing_packages()
        if missing and self._provider is None:
            raise RuntimeError(
                "tracing.enabled but OpenTelemetry is not installed: " + ", ".join(missing)
            )
        if self._provider is None:
            sdk_trace = importlib.import_module("opentelemetry.sdk.trace")
            export = importlib.import_module("opentelemetry.sdk.trace.export")
            resources = importlib.import_module("opentelemetry.sdk.resources")
            otlp = importlib.import_module("opentelemetry.exporter.otlp.proto.http.trace_exporter")
            resource = resources.Resource.create({"service.name": self._cfg.service_name})
            provider = sdk_trace.TracerProvider(resource=resource)
            exporter = (
                otlp.OTLPSpanExporter(endpoint=self._cfg.endpoint)
                if self._cfg.endpoint
                else otlp.OTLPSpanExporter()
            )
            provider.add_span_processor(export.BatchSpanProcessor(exporter))
            self._provider = provider
            self._owns_provider = True
        self._tracer = self._provider.get_tracer("fhir-gateway")

    def close(self) -> None:
        if self._owns_provider and self._provider is not None:
            self._provider.shutdown()
        self._tracer = None

    @contextmanager
    def request_span(self, method: str) -> Iterator[RequestSpan]:
        """A current SERVER span for the request (named properly by ``finish``)."""
        if self._tracer is None:
            yield RequestSpan()
            return
        otel = importlib.import_module("opentelemetry.trace")
        with self._tracer.start_as_current_span(
            f"{method} -", kind=otel.SpanKind.SERVER, record_exception=False
        ) as span:
            yield RequestSpan(span)
