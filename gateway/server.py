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
- Once started, the heap built at start-up (FHIR tables, compiled policies, modules) is moved
  out of the cyclic garbage collector's reach (``gc.freeze``) and collections run less often:
  a full collection otherwise walks every one of those objects, a pause of milliseconds that
  lands on whichever request happens to allocate (``settle_heap``).
- ``server.workers: N`` (N > 1): the parent binds nothing; it forks N workers that each run
  ``serve`` on the same port with ``SO_REUSEPORT`` (the kernel spreads connections), forwards
  SIGTERM/SIGINT to them and waits. A worker that dies on its own stops the others (exit 1: the
  supervisor restarts the whole gateway). The admin listener runs in worker 0 only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
from typing import Any

from aiohttp import http_parser, web, web_protocol, web_server
from aiohttp.http_exceptions import LineTooLong

from gateway.app import LIFECYCLE, build_app
from gateway.config import Config
from gateway.errors import BadRequest, GatewayError, HeadersTooLarge
from gateway.fhir.outcome import CHARSET, FHIR_JSON, operation_outcome
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
            charset=CHARSET,
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


async def serve(
    cfg: Config,
    *,
    ready: asyncio.Event | None = None,
    reuse_port: bool = False,
    admin: bool = True,
) -> None:
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
        reuse_port=reuse_port or None,
    )
    await site.start()
    settle_heap()
    log(
        logger,
        logging.INFO,
        "listening",
        host=cfg.server.host,
        port=cfg.server.port,
        tls=cfg.server.tls is not None,
    )
    admin_runner: web.AppRunner | None = None
    if admin and cfg.server.admin_port is not None:
        admin_host = cfg.server.admin_host or cfg.server.host
        admin_runner = await start_admin(app, admin_host, cfg.server.admin_port)
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
        if admin_runner is not None:
            await admin_runner.cleanup()
        log(logger, logging.INFO, "stopped")


#: young-generation threshold: a 60 KB Bundle allocates ~10,000 containers; CPython's default
#: (700) would run a dozen collections per such request
GC_THRESHOLDS = (50_000, 20, 100)


def settle_heap() -> None:
    """Freeze what start-up built and space collections out (see the module docstring)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _run_one(cfg: Config, *, reuse_port: bool = False, admin: bool = True) -> None:
    """One serving process: uvloop when installed, then ``serve`` until SIGTERM/SIGINT."""
    try:
        import uvloop  # optional: faster event loop when installed

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(cfg, reuse_port=reuse_port, admin=admin))


def _shared_cursor_key(cfg: Config) -> Config:
    """Workers must open each other's paging cursors: one random key for all, when none is set."""
    if cfg.phi.cursor_keys:
        return cfg
    key = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    phi = cfg.phi.model_copy(update={"cursor_keys": [key]})
    return cfg.model_copy(update={"phi": phi})


def run(cfg: Config) -> int:
    """``fhir-gateway serve``: one process, or ``server.workers`` forked workers on one port."""
    workers = cfg.server.workers
    if workers <= 1:
        _run_one(cfg)
        return 0
    if not hasattr(socket, "SO_REUSEPORT"):
        raise SystemExit("server.workers > 1 needs SO_REUSEPORT (Linux)")
    require_c_parser()
    cfg = _shared_cursor_key(cfg)
    stopping = False
    children: dict[int, int] = {}  # pid -> worker index

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    # block the signals while forking: a SIGTERM now is forwarded once the handler is in place
    sigs = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    for index in range(workers):
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                for sig in sigs:
                    signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, sigs)
                _run_one(cfg, reuse_port=True, admin=index == 0)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # reported, then the worker exits non-zero
                logger.exception("worker failed")
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = index
    for sig in sigs:
        signal.signal(sig, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, sigs)
    log(logger, logging.INFO, "workers-started", workers=workers, pids=sorted(children))
    status = 0
    while children:
        try:
            pid, wstatus = os.wait()
        except ChildProcessError:
            break
        if pid not in children:
            continue
        index = children.pop(pid)
        code = os.waitstatus_to_exitcode(wstatus)
        if not stopping:  # died on its own: stop the rest, let the supervisor restart us
            log(logger, logging.ERROR, "worker-died", worker=index, pid=pid, code=code)
            status = 1
            forward(signal.SIGTERM, None)
        elif code != 0:
            status = 1
    log(logger, logging.INFO, "workers-stopped")
    return status
