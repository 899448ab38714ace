"""CORS (https://fetch.spec.whatwg.org/#http-cors-protocol) for browser-based SMART apps.

- Origins are matched exactly against ``cors.allowed_origins``; no wildcards, no credentials
  mode (bearer tokens travel in ``Authorization``, not cookies).
- Preflights are answered by the gateway itself, without a token, and never forwarded.
- ``Access-Control-Allow-Origin`` echoes an allowed origin only, always with ``Vary: Origin``.
- The discovery documents (``metadata``, ``.well-known/smart-configuration``) are public and
  readable from any origin: apps read them before they have a token.
- The upstream's own CORS headers never reach the client (headers.RESPONSE_ALLOW).
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import CorsConfig
from gateway.fhir.outcome import CHARSET, FHIR_JSON, operation_outcome

ALLOW_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE"
ALLOW_HEADERS = (
    "Authorization, Content-Type, Accept, Prefer, If-Match, If-None-Match, If-None-Exist, "
    "If-Modified-Since, If-Unmodified-Since, X-Request-ID"
)
EXPOSE_HEADERS = (
    "Location, Content-Location, ETag, Last-Modified, WWW-Authenticate, X-Request-ID, Retry-After"
)
PUBLIC_PATHS = ("/metadata", "/.well-known/smart-configuration")


def is_preflight(method: str, headers: Mapping[str, str] | CIMultiDictProxy[str]) -> bool:
    return method == "OPTIONS" and "Access-Control-Request-Method" in headers


class CorsPolicy:
    def __init__(self, cfg: CorsConfig, base_path: str) -> None:
        self._origins = frozenset(cfg.allowed_origins)
        self._max_age = str(cfg.max_age_s)
        self._public = frozenset(base_path + p for p in PUBLIC_PATHS)

    def is_public(self, path: str) -> bool:
        return path.rstrip("/") in self._public

    def allows(self, origin: str | None) -> bool:
        return origin is not None and origin in self._origins

    def decorate(self, headers: CIMultiDict[str], origin: str | None, *, public: bool) -> None:
        """Add CORS response headers (errors included) for an actual request."""
        if public:
            headers["Access-Control-Allow-Origin"] = "*"
            headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
            return
        headers.add("Vary", "Origin")
        if self.allows(origin):
            assert origin is not None
            headers["Access-Control-Allow-Origin"] = origin
            headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS

    def preflight(
        self, origin: str | None, request_headers: CIMultiDictProxy[str], *, public: bool
    ) -> web.Response:
        method = request_headers.get("Access-Control-Request-Method", "").strip()
        if not (public or self.allows(origin)) or method not in ALLOW_METHODS.split(", "):
            resp = web.Response(
                status=403,
                body=operation_outcome("forbidden", "CORS preflight refused for this origin."),
                content_type=FHIR_JSON,
                charset=CHARSET,
            )
            resp.headers["Vary"] = "Origin"
            return resp
        resp = web.Response(status=204)
        resp.headers["Access-Control-Allow-Origin"] = "*" if public else str(origin)
        resp.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
        resp.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
        resp.headers["Access-Control-Max-Age"] = self._max_age
        resp.headers["Vary"] = "Origin"
        return resp
