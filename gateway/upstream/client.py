"""The one pooled connection to the upstream FHIR server.

One ``aiohttp.ClientSession`` lives as long as the application (connection pooling, keep-alive,
a connection limit). Requests are sent exactly once: no retries (a write must never be
duplicated), redirects are never followed, cookies are never stored. Failures map onto the
gateway's exception tree: cannot connect / reset / malformed answer -> 502, timeout -> 504.
"""

from __future__ import annotations

import base64
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway.config import UpstreamConfig
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout

Body = bytes | AsyncIterator[bytes] | None


@dataclass(slots=True)
class UpstreamCall:
    """An upstream response whose body has not been read yet."""

    response: aiohttp.ClientResponse
    started: float

    @property
    def latency_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


def _ssl_context(cfg: UpstreamConfig) -> ssl.SSLContext | bool:
    if URL(cfg.url).scheme != "https":
        return True
    ctx = ssl.create_default_context(
        cafile=str(cfg.tls.ca_file) if cfg.tls and cfg.tls.ca_file else None
    )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.tls and cfg.tls.client_cert_file and cfg.tls.client_key_file:
        ctx.load_cert_chain(cfg.tls.client_cert_file, cfg.tls.client_key_file)
    return ctx


def static_credentials(cfg: UpstreamConfig) -> dict[str, str]:
    """Headers carrying the configured static upstream credentials (for legacy servers)."""
    if cfg.auth is None:
        return {}
    if cfg.auth.header is not None:
        return {cfg.auth.header.name: cfg.auth.header.value}
    if cfg.auth.basic is not None:
        pair = f"{cfg.auth.basic.username}:{cfg.auth.basic.password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
    return {}


class UpstreamClient:
    def __init__(self, cfg: UpstreamConfig) -> None:
        self._cfg = cfg
        self._base = cfg.url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self.static_headers = static_credentials(cfg)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("upstream session not started")
        return self._session

    @property
    def ready(self) -> bool:
        return self._session is not None and not self._session.closed

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._cfg.max_connections,
            keepalive_timeout=self._cfg.keepalive_timeout_s,
            ssl=_ssl_context(self._cfg),
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=self._cfg.connect_timeout_s,
                sock_connect=self._cfg.connect_timeout_s,
                sock_read=self._cfg.timeout_s,
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )
        # aiohttp silently repeats an "idempotent" request (GET, PUT, DELETE...) once when a
        # pooled connection turns out dead. A FHIR PUT or DELETE repeated is a second write, and
        # the gateway promises exactly once: no hidden retries at all.
        self._session._retry_connection = False  # pinned by tests/integration/test_exactly_once.py

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def url(self, path: str, query: str) -> URL:
        """The upstream URL for an already-encoded path and query (never re-normalised)."""
        text = f"{self._base}/{path}" if path else self._base
        if query:
            text += "?" + query
        return URL(text, encoded=True)

    async def send(
        self, method: str, url: URL, headers: CIMultiDict[str], body: Body
    ) -> UpstreamCall:
        """Send one request, exactly once. The caller must release the response."""
        started = time.perf_counter()
        try:
            response = await self.session.request(
                method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                compress=None,
            )
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout() from None
        except (aiohttp.ClientError, OSError) as exc:
            if isinstance(exc.__cause__, GatewayError):
                # our own request-body stream refused (e.g. 413 over the size cap): not a 502
                raise exc.__cause__ from None
            raise UpstreamError(reason="upstream.unreachable") from None
        return UpstreamCall(response=response, started=started)

    async def read_body(self, call: UpstreamCall, limit: int) -> bytes:
        """Read a whole response body, at most ``limit`` bytes (else 502)."""
        declared = call.response.content_length
        if declared is not None and declared > limit:
            raise UpstreamError(reason="upstream.too-large")
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in call.response.content.iter_chunked(256 * 1024):
                size += len(chunk)
                if size > limit:
                    raise UpstreamError(reason="upstream.too-large")
                chunks.append(chunk)
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout() from None
        except (aiohttp.ClientError, OSError):
            raise UpstreamError(reason="upstream.body") from None
        return b"".join(chunks)
