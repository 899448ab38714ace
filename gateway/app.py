"""Build the aiohttp application: lifetimes, middlewares, the single dispatch route.

One middleware (``edge_middleware``: one coroutine frame per request instead of four) holds
the generic web concerns, outermost first:

1. access log  — request id, timing, one JSON line per request (probes excluded); in its
                 ``finally``: exactly one audit record per FHIR request (probes and
                 preflights excluded), request metrics, the tracing span.
2. CORS        — preflights answered here (never forwarded, no token); CORS headers on
                 every response, errors included (``security_headers``, the prepare hook).
3. errors      — every exception becomes an OperationOutcome (``render_error``); nothing else
                 renders errors.
4. limits      — requests without a bearer token: the per-address token bucket (429), so
                 anonymous floods cost nothing further. The per-client bucket needs the
                 principal and is applied by the handler right after authentication.

There is one route: ``dispatch`` reads the raw request target itself (aiohttp's router would
see a normalised path), serves the probes, and hands FHIR requests to ``handler.handle_fhir``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from gateway import cors as cors_rules
from gateway.access.context import AccessResolver
from gateway.access.verify import PolicyTally
from gateway.auth import Authenticator
from gateway.config import Config, is_loopback_url
from gateway.context import EXCHANGE, Exchange, exchange
from gateway.errors import GatewayError, InvalidTarget, NotFound
from gateway.fhir.outcome import CHARSET, FHIR_JSON, operation_outcome
from gateway.fhir.target import parse_target
from gateway.handler import Gateway, handle_fhir
from gateway.ops.audit import build_record
from gateway.ops.audit_sinks import AuditTrail
from gateway.ops.limits import LimitedUpstreamClient, Limits, client_address
from gateway.ops.logging import log
from gateway.ops.metrics import Metrics, resource_type_label, status_class
from gateway.ops.tracing import Tracing
from gateway.phi.cursors import CursorCodec
from gateway.phi.rules import PhiRules
from gateway.policy import PolicyStore
from gateway.smart.discovery import Discovery
from gateway.upstream.client import UpstreamClient
from gateway.upstream.fetch import Fetcher
from gateway.upstream.headers import TrustedProxies, check_request_headers, request_id
from gateway.upstream.links import UrlRewriter

logger = logging.getLogger("gateway")
access_logger = logging.getLogger("gateway.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class Lifecycle:
    started: bool = False
    draining: bool = False


CONFIG = web.AppKey("config", Config)
GATEWAY = web.AppKey("gateway", Gateway)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
CORS = web.AppKey("cors", cors_rules.CorsPolicy)
METRICS = web.AppKey("metrics", Metrics)
AUDIT = web.AppKey("audit", AuditTrail)
TRACING = web.AppKey("tracing", Tracing)
PROBES = frozenset({"/healthz", "/readyz"})


def error_response(exc: GatewayError) -> web.Response:
    resp = web.Response(
        status=exc.status,
        body=operation_outcome(exc.code, exc.diagnostics),
        content_type=FHIR_JSON,
        charset=CHARSET,
    )
    resp.headers.update(exc.headers)
    return resp


def policy_fields(tally: PolicyTally | None) -> dict[str, object]:
    """Policy ids and counts for the log line (never resource contents)."""
    if tally is None or not (tally.withheld or tally.redacted or tally.break_glass):
        return {}
    return {
        "withheld": dict(tally.withheld),
        "redacted": dict(tally.redacted),
        "break_glass": sorted(tally.break_glass),
    }


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The generic web concerns of every request, outermost first (see the module docstring)."""
    ex = request[EXCHANGE] = Exchange(request_id(request.headers, os.urandom(16).hex()))
    started = time.perf_counter()
    status = 500
    preflight = cors_rules.is_preflight(request.method, request.headers)
    span_ctx = request.app[TRACING].request_span(request.method)
    span = span_ctx.__enter__()
    response: web.StreamResponse
    try:
        if preflight:  # answered here: never forwarded, no token needed
            policy: cors_rules.CorsPolicy = request.app[CORS]
            origin = request.headers.get("Origin")
            response = policy.preflight(
                origin, request.headers, public=policy.is_public(request.path)
            )
        else:  # CORS headers on the answer: security_headers (prepare hook)
            try:
                gw = request.app.get(GATEWAY)
                if (
                    gw is not None
                    and "Authorization" not in request.headers
                    and request.path not in PROBES
                ):
                    gw.limits.check_anonymous(source_address(request))
                response = await handler(request)
            except Exception as exc:  # noqa: BLE001 - rendered (and classified) by render_error
                response = render_error(request, exc)
        status = response.status
        return response
    finally:
        span.finish(
            method=request.method,
            route=ex.route,
            status=status,
            interaction=ex.interaction,
            reason=ex.reason,
        )
        span_ctx.__exit__(None, None, None)
        if request.path not in PROBES and not preflight:
            account(request, ex, status, time.perf_counter() - started)
        if request.app[CONFIG].logging.access_log and request.path not in PROBES:
            log(
                access_logger,
                logging.INFO,
                "access",
                request_id=ex.request_id,
                method=request.method,
                route=ex.route,
                status=status,
                reason=ex.reason,
                latency_ms=round((time.perf_counter() - started) * 1000, 3),
                upstream_ms=None if ex.upstream_ms is None else round(ex.upstream_ms, 3),
                **policy_fields(ex.policies),
            )


def render_error(request: web.Request, exc: Exception) -> web.Response:
    """Every exception as an OperationOutcome; nothing else renders errors."""
    if isinstance(exc, GatewayError):
        exchange(request).reason = exc.reason
        return error_response(exc)
    if isinstance(exc, web.HTTPException):  # aiohttp's router: only non-origin-form targets
        err = GatewayError(reason="request.http")
        err.status, err.code = exc.status, "invalid" if exc.status < 500 else "exception"
        if not request.raw_path.startswith("/"):
            err = InvalidTarget("Only origin-form request targets are accepted.")
        exchange(request).reason = err.reason
        return error_response(err)
    # the last line of defence: fail closed, log the class only
    log(
        logger,
        logging.ERROR,
        "unhandled-exception",
        error=type(exc).__name__,
        route=exchange(request).route,
        request_id=exchange(request).request_id,
    )
    exchange(request).reason = "internal"
    return error_response(GatewayError())


def source_address(request: web.Request) -> str:
    gw = request.app.get(GATEWAY)
    trusted = gw.trusted_proxies if gw is not None else TrustedProxies(())
    return client_address(request.remote, request.headers.get("X-Forwarded-For"), trusted)


def account(request: web.Request, ex: Exchange, status: int, elapsed_s: float) -> None:
    """The audit record and the request metrics of one FHIR request (response decided)."""
    audit = request.app.get(AUDIT)
    if audit is not None:
        record = build_record(
            ex, method=request.method, status=status, source_address=source_address(request)
        )
        audit.emit(record)
    m = request.app[METRICS]
    interaction = ex.interaction or "-"
    reason = ex.reason or "-"
    rtype = resource_type_label(ex.resource_type)
    m.child(m.requests, interaction, rtype, status_class(status), reason).inc()
    m.child(m.request_duration, interaction).observe(elapsed_s)
    if ex.upstream_ms is not None:
        m.child(m.upstream_duration, interaction).observe(ex.upstream_ms / 1000)
    if reason.startswith("upstream."):
        m.child(m.upstream_errors, reason.removeprefix("upstream.")).inc()
    m.count_policies(ex.policies)


async def dispatch(request: web.Request) -> web.StreamResponse:
    path = request.raw_path.partition("?")[0]
    if path in PROBES and request.method in ("GET", "HEAD"):
        return probe(request, path)
    gw = request.app[GATEWAY]
    check_request_headers(request.headers)
    target = parse_target(request.raw_path, gw.config.server.base_path)
    if target is None:
        raise NotFound("Not a FHIR endpoint of this server.")
    return await handle_fhir(request, gw, target)


def probe(request: web.Request, path: str) -> web.Response:
    """``/healthz``: the process serves. ``/readyz``: ready for traffic (503 otherwise)."""
    if path == "/healthz":
        return web.json_response({"status": "ok"})
    ready, checks = readiness(request.app)
    return web.json_response(
        {"status": "ready" if ready else "not-ready", "checks": checks},
        status=200 if ready else 503,
    )


def readiness(app: web.Application) -> tuple[bool, dict[str, bool]]:
    """Whether the gateway should get traffic, and the checks behind the answer."""
    gw, life = app.get(GATEWAY), app[LIFECYCLE]
    if gw is None:
        return False, {"config": True, "started": False, "draining": life.draining}
    checks = {
        "config": True,
        "upstream_session": gw.upstream.ready,
        "token_keys": gw.authenticator.ready,
        "draining": life.draining,
    }
    ready = life.started and not life.draining and gw.upstream.ready and gw.authenticator.ready
    return ready, checks


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Headers on every response: no software names, no caching of PHI, HSTS under TLS."""
    response.headers["Server"] = "fhir-gateway"
    ex = request.get(EXCHANGE)
    if ex is not None:
        response.headers["X-Request-ID"] = ex.request_id
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("Pragma", "no-cache")
    response.headers.popall("Set-Cookie", None)
    if not cors_rules.is_preflight(request.method, request.headers):
        # here, not in the middleware: streamed responses are prepared inside the handler
        policy = request.app[CORS]
        policy.decorate(
            response.headers, request.headers.get("Origin"), public=policy.is_public(request.path)
        )
    cfg = request.app[CONFIG]
    if cfg.server.tls is not None:
        response.headers["Strict-Transport-Security"] = f"max-age={cfg.server.hsts_max_age_s}"


def build_app(cfg: Config) -> web.Application:
    app = web.Application(
        middlewares=[edge_middleware],
        client_max_size=cfg.server.max_request_body_bytes,
        handler_args={"max_field_size": cfg.server.max_header_bytes},
    )
    app[CONFIG] = cfg
    app[LIFECYCLE] = Lifecycle()
    app[CORS] = cors_rules.CorsPolicy(cfg.cors, cfg.server.base_path)
    app[METRICS] = metrics = Metrics()
    metrics.watch(lambda: app.get(GATEWAY))
    app[TRACING] = Tracing(cfg.tracing)
    app.cleanup_ctx.append(_lifetime)
    app.on_response_prepare.append(security_headers)
    app.router.add_route("*", r"/{tail:[\s\S]*}", dispatch)
    return app


def risky_settings(cfg: Config) -> list[str]:
    """Settings that weaken a protection: each is logged as a warning at start-up."""
    risky = []
    if cfg.phi.post_search == "off":
        risky.append("phi.post_search=off: PHI search parameters travel in upstream URLs")
    if cfg.phi.allow_get_fallback and not cfg.upstream.post_search:
        risky.append("phi.allow_get_fallback: PHI searches go upstream as GET")
    if not cfg.phi.cursor_keys:
        risky.append("phi.cursor_keys empty: cursors fail across replicas and restarts")
    admin_host = cfg.server.admin_host or cfg.server.host
    bracketed = f"[{admin_host}]" if ":" in admin_host else admin_host  # an IPv6 literal
    if cfg.server.admin_port is not None and not is_loopback_url(f"http://{bracketed}/"):
        risky.append("server.admin_host is not loopback: /metrics and probes need no login")
    if cfg.upstream.url.startswith("http://"):
        risky.append("upstream.url is plain http: traffic to the upstream is not encrypted")
    if cfg.upstream.forward_authorization:
        risky.append("upstream.forward_authorization: client tokens are sent upstream")
    if not cfg.audit.enabled:
        risky.append("audit.enabled=false: requests leave no audit trail")
    return risky


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    """Start the upstream pool and the token machinery; close both at shutdown."""
    cfg, life, metrics = app[CONFIG], app[LIFECYCLE], app[METRICS]
    log(logger, logging.INFO, "config", config=cfg.redacted())
    limits = Limits(cfg.limits, metrics)
    upstream = (
        LimitedUpstreamClient(cfg.upstream, limits)
        if cfg.limits.upstream_concurrency
        else UpstreamClient(cfg.upstream)
    )
    await upstream.start()
    # the authorization server gets its own pool: other host, other trust, other limits
    auth_session = aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=10)
    )
    authenticator = Authenticator(
        cfg.auth,
        default_audience=cfg.server.public_base_url,
        realm=cfg.server.public_base_url,
        session=auth_session,
    )
    if authenticator.introspector is not None:
        authenticator.introspector.observe_latency = metrics.introspection_duration.observe
    policies = PolicyStore(cfg.policies.paths, poll_interval_s=cfg.policies.poll_interval_s)
    policies.load()  # decision 17: a policy set that does not compile never takes effect
    bases = (cfg.server.public_base_url, cfg.upstream.url)
    fetcher = Fetcher(upstream, bases, cfg.server.max_response_body_bytes)
    app[GATEWAY] = Gateway(
        config=cfg,
        upstream=upstream,
        rewriter=UrlRewriter([cfg.upstream.url], cfg.server.public_base_url),
        authenticator=authenticator,
        trusted_proxies=TrustedProxies(cfg.server.trusted_proxies),
        fetcher=fetcher,
        access=AccessResolver(fetcher.get, bases),
        phi=PhiRules(cfg.phi, cfg.upstream.post_search),
        cursors=CursorCodec.from_config(cfg.phi.cursor_keys, cfg.phi.cursor_ttl_s),
        # metadata and smart-configuration: cached; the AS document comes over auth_session
        discovery=Discovery(cfg, upstream, auth_session),
        policies=policies,
        limits=limits,
    )
    app[AUDIT] = audit = AuditTrail.from_config(cfg.audit, metrics)
    await audit.start()
    app[TRACING].start()
    await authenticator.start()
    await policies.start()  # SIGHUP and file polling: atomic reloads
    for warning in risky_settings(cfg):
        log(logger, logging.WARNING, "config.risky", setting=warning)
    life.started = True
    log(logger, logging.INFO, "started", base=cfg.server.base_path or "/")
    try:
        yield
    finally:
        life.draining = True
        await policies.stop()
        await audit.close()  # in-flight requests are done: drain the queue or spill it
        app[TRACING].close()
        await authenticator.close()
        await auth_session.close()
        await upstream.close()
