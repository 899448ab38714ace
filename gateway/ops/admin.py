"""The admin listener (``server.admin_port``): ``/metrics``, ``/healthz``, ``/readyz``.

A separate port, so that metrics are never reachable through the public FHIR listener and
network policy can restrict who scrapes them. It serves no FHIR and reads no credentials.

====================  ======================================================================
``GET /metrics``      Prometheus text format (the gateway's own registry only)
``GET /healthz``      200 while the process serves (liveness)
``GET /readyz``       200 when started, not draining, upstream pool open and every issuer's
                      key set fetched; 503 otherwise, with the checks (readiness)
====================  ======================================================================
"""

from __future__ import annotations

from aiohttp import web

from gateway.app import METRICS, readiness
from gateway.ops.metrics import CONTENT_TYPE

GATEWAY_APP = web.AppKey("gateway_app", web.Application)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[GATEWAY_APP][METRICS].scrape()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ready, checks = readiness(request.app[GATEWAY_APP])
    return web.json_response(
        {"status": "ready" if ready else "not-ready", "checks": checks},
        status=200 if ready else 503,
    )


async def _no_store(_: web.Request, response: web.StreamResponse) -> None:
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"


def build_admin_app(gateway_app: web.Application) -> web.Application:
    app = web.Application(client_max_size=1024)
    app[GATEWAY_APP] = gateway_app
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.on_response_prepare.append(_no_store)
    return app


async def start_admin(gateway_app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start the admin listener; ``runner.addresses`` tells the port (``0``: any free one)."""
    runner = web.AppRunner(build_admin_app(gateway_app), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
