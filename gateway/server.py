"""Run the application: listener, TLS, the HTTP parser guarantee, graceful shutdown.

- The server must run on aiohttp's C (llhttp) parser, which rejects framing ambiguities
  (``Content-Length`` with ``Transfer-Encoding``, conflicting lengths, obs-fold, bare CR,
  malformed chunks); the pure-Python fallback is refused at start-up.
- Errors raised by the HTTP parser itself never reach a handler. ``GatewayRequestHandler``
  renders them as OperationOutcomes and closes the connection, instead of aiohttp's default
  text answer, which quotes the offending bytes (possibly PHI).
- SIGTERM/SIGINT: readiness turns 503, an optional drain delay lets load balancers notice,
  then the listener closes and in-flight requests finish within ``shutdown_timeout_s``; the
  app's cleanup then drains the audit queue (or spills it), and the admin listener
  (``server.admin_port``: metrics and probes) closes last.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
from typing import Any

from aiohttp import http_parser, web, web_protocol, web_server
from aiohttp.http_exceptions import LineTooLong

from gateway.app import LIFECYCLE, build_app
from gateway.config import Config
from gateway.errors import BadRequest, GatewayError, HeadersTooLarge
from gateway.fhir.outcome import FHIR_JSON, operation_outcome
from gateway.ops.admin import start_admin
from gateway.ops.logging import log

logger = logging.getLogger("gateway.server")


def require_c_parser() -> None:
    """Refuse to serve on the pure-Python HTTP parser (laxer, and slower)."""
    if os.environ.get("AIOHTTP_NO_EXTENSIONS") or (
        http_parser.HttpRequestParser.__module__ != "aiohttp._http_parser"
    ):
        raise SystemExit(
            "aiohttp's C HTTP parser is not available (AIOHTTP_NO_EXTENSIONS set, or aiohttp "
            "installed without its extensions); the gateway refuses to run without it."
        )


class GatewayRequestHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler, with parser errors rendered as OperationOutcomes."""

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        log(
            logger,
            logging.WARNING,
            "http.protocol-error",
            status=status,
            error=type(exc).__name__ if exc else None,
        )
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        err: GatewayError
        if status == 431 or isinstance(exc, LineTooLong):
            err = HeadersTooLarge()
        elif 400 <= status < 500:
            err = BadRequest("The HTTP request is malformed.", reason="request.framing")
            err.status = status
        else:
            err = GatewayError()
        resp = web.Response(
            status=err.status,
            body=operation_outcome(err.code, err.diagnostics),
            content_type=FHIR_JSON,
        )
        resp.headers["Server"] = "fhir-gateway"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Cache-Control"] = "no-store"
        resp.force_close()
        return resp


class GatewayServer(web_server.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return GatewayRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    async def _make_server(self) -> web_server.Server:
        server = await super()._make_server()
        server.__class__ = GatewayServer  # same state, our connection handler
        return server


def server_ssl_context(cfg: Config) -> ssl.SSLContext | None:
    tls = cfg.server.tls
    if tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    return ctx


async def serve(cfg: Config, *, ready: asyncio.Event | None = None) -> None:
    require_c_parser()
    app = build_app(cfg)
    runner = GatewayRunner(
        app,
        access_log=None,
        shutdown_timeout=cfg.server.shutdown_timeout_s,
        handle_signals=False,
    )
    await runner.setup()
    site = web.TCPSite(
        runner,
        cfg.server.host,
        cfg.server.port,
        ssl_context=server_ssl_context(cfg),
        backlog=1024,
    )
    await site.start()
    log(
        logger,
        logging.INFO,
        "listening",
        host=cfg.server.host,
        port=cfg.server.port,
        tls=cfg.server.tls is not None,
    )
    admin: web.AppRunner | None = None
    if cfg.server.admin_port is not None:
        admin_host = cfg.server.admin_host or cfg.server.host
        admin = await start_admin(app, admin_host, cfg.server.admin_port)
        log(logger, logging.INFO, "admin-listening", host=admin_host, port=cfg.server.admin_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        app[LIFECYCLE].draining = True
        log(logger, logging.INFO, "draining", delay_s=cfg.server.drain_delay_s)
        if cfg.server.drain_delay_s:
            await asyncio.sleep(cfg.server.drain_delay_s)
        await runner.cleanup()  # stops listening, waits for in-flight requests (bounded),
        # then the app's cleanup: audit drained or spilled, pools closed
        if admin is not None:
            await admin.cleanup()
        log(logger, logging.INFO, "stopped")
