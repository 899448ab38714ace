"""A bare aiohttp reverse proxy: the floor of what any aiohttp-based gateway can reach.

Run: python bench/bare_proxy.py PORT UPSTREAM_PORT. No security, no parsing: forward the method,
path and query to the upstream over a keep-alive pool, answer with its status, content type and
body (read whole for JSON, streamed in 64 KiB chunks otherwise). Same event loop as the gateway
(uvloop when installed), one process. The harness uses it as a reference column only.
"""

from __future__ import annotations

import sys

import aiohttp
from aiohttp import web


def main() -> None:
    port, up_port = int(sys.argv[1]), int(sys.argv[2])
    upstream = f"http://127.0.0.1:{up_port}"
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def start(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100), auto_decompress=False
        )

    async def stop(app: web.Application) -> None:
        await app["session"].close()

    async def proxy(request: web.Request) -> web.StreamResponse:
        session: aiohttp.ClientSession = request.app["session"]
        body = await request.read() if request.can_read_body else None
        async with session.request(
            request.method, upstream + request.path_qs, data=body, allow_redirects=False
        ) as up:
            ctype = up.headers.get("Content-Type", "application/octet-stream")
            if "json" in ctype:
                return web.Response(
                    status=up.status, body=await up.read(), headers={"Content-Type": ctype}
                )
            resp = web.StreamResponse(status=up.status, headers={"Content-Type": ctype})
            if up.content_length is not None:
                resp.content_length = up.content_length
            await resp.prepare(request)
            async for chunk in up.content.iter_chunked(64 * 1024):
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", proxy)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
