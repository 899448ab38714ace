"""SMART discovery: serving ``{base}/.well-known/smart-configuration`` and ``{base}/metadata``.

Apps find the authorization server through the FHIR base they were pointed at (SMART App
Launch 2.x, "Conformance"): the JS client reads the well-known document, the Python
``fhirclient`` only the ``oauth-uris`` extension of the CapabilityStatement. Both are public
(no token; any origin, see ``cors.py``). What they say is built elsewhere; this module fetches,
caches and serves them (:class:`Discovery`):

- **SMART configuration** (:meth:`Discovery.smart_configuration`): the ``smart`` config
  section, merged with the authorization server's own discovery document when
  ``smart.openid_configuration_url`` is set (fetched and cached); see
  :mod:`gateway.smart.smart_configuration`. Without a token endpoint there is no SMART
  configuration: 404.
- **CapabilityStatement** (:meth:`Discovery.capability_statement`): the upstream's, fetched
  and cached for ``smart.cache_ttl_s`` and rebuilt; see
  :mod:`gateway.smart.capability_statement`.

A failed refresh keeps the last good document (:class:`TtlDocument`, retried at most every
:data:`RETRY_S` seconds); a document that was never fetched is a 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from gateway.config import Config
from gateway.errors import GatewayError, NotFound, ServiceUnavailable, UpstreamError
from gateway.fhir import json
from gateway.fhir.outcome import CHARSET, FHIR_JSON
from gateway.ops.logging import log
from gateway.phi.rules import PhiRules
from gateway.smart.capability_statement import rewrite_capability_statement, security_section
from gateway.smart.smart_configuration import (
    DocumentUnavailable,
    configured_document,
    server_fields,
    well_known_document,
)
from gateway.upstream.client import UpstreamClient

__all__ = ["RETRY_S", "Discovery", "TtlDocument"]

logger = logging.getLogger("gateway.discovery")

#: seconds between attempts to refresh a document whose last refresh failed
RETRY_S = 10.0
#: the authorization server's discovery document is small; anything larger is refused
AS_DOCUMENT_LIMIT = 1024 * 1024


# --------------------------------------------------------------------------- the caches

T = TypeVar("T")


class TtlDocument(Generic[T]):
    """One document fetched on demand and reused for ``ttl_s`` seconds.

    Concurrent callers share one fetch. When a refresh fails, the last good document is
    served and the next attempt waits :data:`RETRY_S` (at most ``ttl_s``); ``get`` returns
    None only when no fetch ever succeeded.
    """

    def __init__(
        self,
        name: str,
        fetch: Callable[[], Awaitable[T]],
        ttl_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._name = name
        self._fetch = fetch
        self._ttl = ttl_s
        self._clock = clock
        self._value: T | None = None
        self._next_attempt = float("-inf")
        self._lock = asyncio.Lock()

    async def get(self) -> T | None:
        if self._clock() < self._next_attempt:
            return self._value
        async with self._lock:
            now = self._clock()
            if now < self._next_attempt:
                return self._value  # another caller refreshed it meanwhile
            try:
                self._value = await self._fetch()
            except (GatewayError, DocumentUnavailable, aiohttp.ClientError, TimeoutError) as exc:
                self._next_attempt = now + min(RETRY_S, self._ttl)
                log(
                    logger,
                    logging.WARNING,
                    "discovery.refresh-failed",
                    document=self._name,
                    error=type(exc).__name__,
                    reason=getattr(exc, "reason", None),
                    serving="last-good" if self._value is not None else "none",
                )
            else:
                self._next_attempt = now + self._ttl
            return self._value


# --------------------------------------------------------------------------- the component


class Discovery:
    """The two discovery documents of one gateway (built once at start-up, in ``_lifetime``)."""

    def __init__(
        self,
        cfg: Config,
        upstream: UpstreamClient,
        session: aiohttp.ClientSession,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._smart = cfg.smart
        self._base = cfg.server.public_base_url.rstrip("/")
        self._upstream = upstream
        self._session = session
        self._limit = cfg.server.max_response_body_bytes
        self._upstream_base = cfg.upstream.url
        self._configured = configured_document(cfg.smart)
        self._refused = _refused_params(cfg)
        ttl = cfg.smart.cache_ttl_s
        self._statement = TtlDocument(
            "upstream-capability-statement", self._fetch_statement, ttl, clock=clock
        )
        url = cfg.smart.openid_configuration_url
        self._server: TtlDocument[dict[str, Any]] | None = None
        if url is not None:
            self._server = TtlDocument(
                "authorization-server-metadata",
                lambda: self._fetch_server_document(url),
                ttl,
                clock=clock,
            )
        self._merged: tuple[object, dict[str, Any] | None] | None = None
        self._rendered: tuple[object, object, bytes] | None = None

    # ---------------------------------------------------------------- SMART configuration

    async def smart_configuration(self) -> dict[str, Any]:
        """The well-known document; NotFound when SMART is not configured, 503 when the
        authorization server's document is needed and was never fetched."""
        server = await self._server.get() if self._server is not None else None
        doc = self._merge(server)
        if doc is None:
            if self._server is not None and server is None:
                raise _unavailable("discovery.as-unavailable")
            raise NotFound("SMART discovery is not configured on this server.")
        return doc

    def _merge(self, server: dict[str, Any] | None) -> dict[str, Any] | None:
        if self._merged is not None and self._merged[0] is server:
            return self._merged[1]
        result = well_known_document(server, self._configured, self._smart.capabilities)
        self._merged = (server, result)
        return result

    async def _fetch_server_document(self, url: str) -> dict[str, Any]:
        async with self._session.get(
            url, headers={"Accept": "application/json"}, allow_redirects=False
        ) as resp:
            if resp.status != 200:
                raise DocumentUnavailable(f"HTTP {resp.status}")
            if (resp.content_length or 0) > AS_DOCUMENT_LIMIT:
                raise DocumentUnavailable("too large")
            body = await resp.content.read(AS_DOCUMENT_LIMIT + 1)
        if len(body) > AS_DOCUMENT_LIMIT:
            raise DocumentUnavailable("too large")
        try:
            return server_fields(json.decode(body))
        except json.JsonError:
            raise DocumentUnavailable("invalid JSON") from None

    # ---------------------------------------------------------------- CapabilityStatement

    async def capability_statement(self) -> bytes:
        """The rewritten statement, encoded; 503 when the upstream never gave one."""
        statement = await self._statement.get()
        if statement is None:
            raise _unavailable("discovery.upstream-unavailable")
        try:
            smart: dict[str, Any] | None = await self.smart_configuration()
        except NotFound:
            smart = None
        if (
            self._rendered is not None
            and self._rendered[0] is statement
            and self._rendered[1] is smart
        ):
            return self._rendered[2]
        body = json.encode({**statement, "rest": [_with_security(statement, smart)]})
        self._rendered = (statement, smart, body)
        return body

    async def _fetch_statement(self) -> dict[str, Any]:
        headers: CIMultiDict[str] = CIMultiDict(self._upstream.static_headers)
        headers["Accept"] = FHIR_JSON
        call = await self._upstream.send("GET", self._upstream.url("metadata", ""), headers, None)
        try:
            if call.response.status != 200:
                raise UpstreamError(reason=f"upstream.metadata-{call.response.status}")
            body = await self._upstream.read_body(call, self._limit)
        finally:
            call.response.release()
        try:
            doc = json.decode(body)
        except json.JsonError:
            raise UpstreamError(reason="upstream.invalid-json") from None
        if not isinstance(doc, dict) or doc.get("resourceType") != "CapabilityStatement":
            raise UpstreamError(reason="upstream.not-capability-statement")
        return rewrite_capability_statement(
            doc,
            public_base=self._base,
            upstream_base=self._upstream_base,
            refused_params=self._refused,
        )

    # ---------------------------------------------------------------- HTTP

    async def smart_configuration_response(self) -> web.Response:
        body = json.encode(await self.smart_configuration())
        return web.Response(body=body, content_type="application/json")

    async def capability_statement_response(self) -> web.Response:
        body = await self.capability_statement()
        return web.Response(body=body, content_type=FHIR_JSON, charset=CHARSET)


def _with_security(statement: Mapping[str, Any], smart: Mapping[str, Any] | None) -> Any:
    rest = dict(statement["rest"][0])
    security = security_section(smart)
    return {"mode": rest.pop("mode"), "security": security, **rest}


def _unavailable(reason: str) -> ServiceUnavailable:
    return ServiceUnavailable(
        "The discovery document is temporarily unavailable.",
        headers={"Retry-After": str(int(RETRY_S))},
        reason=reason,
    )


def _refused_params(cfg: Config) -> Callable[[str | None], frozenset[str]]:
    """Search parameters refused to every caller: PHI-bearing ones when the upstream takes no
    POST ``_search`` and the operator allowed no GET fallback (``phi.rules``)."""
    phi = cfg.phi
    if cfg.upstream.post_search or phi.allow_get_fallback or phi.post_search == "off":
        return lambda _: frozenset()
    return PhiRules(phi, cfg.upstream.post_search).names_for
