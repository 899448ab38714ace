"""Respond: turn an upstream answer into the client's answer.

- JSON bodies are read (capped), decoded once with the decimal-exact codec, checked to be a FHIR
  resource, have upstream URLs rewritten, and are re-encoded only if something changed;
  otherwise the upstream's bytes go out untouched.
- Binary content streams with flat memory; a failure mid-stream aborts the connection so the
  client sees a broken transfer, never a silently truncated "success".
- Upstream redirects (except 304) and 5xx answers become 502: the gateway follows no redirect
  and relays no upstream error page (which could name hosts, software or stack traces).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from gateway.context import exchange
from gateway.errors import GatewayError, UpstreamError
from gateway.fhir import json
from gateway.fhir.outcome import CHARSET, FHIR_JSON
from gateway.ingress import JSON_TYPES, media_type
from gateway.ops.logging import log
from gateway.upstream.client import UpstreamCall, UpstreamClient
from gateway.upstream.headers import client_response_headers
from gateway.upstream.links import UrlRewriter

logger = logging.getLogger("gateway.respond")

NO_BODY_STATUS = frozenset({204, 304})
#: verifies (and may change) a decoded body in place; True when it changed; may raise NotFound
DocFilter = Callable[[dict[str, Any]], bool]


def check_status(call: UpstreamCall) -> None:
    status = call.response.status
    if 300 <= status < 400 and status != 304:
        raise UpstreamError(
            "The upstream server answered with a redirect.", reason="upstream.redirect"
        )
    if status >= 500:
        raise UpstreamError(reason=f"upstream.status-{status // 100}xx")


def response_headers(call: UpstreamCall, rewriter: UrlRewriter) -> CIMultiDict[str]:
    headers = client_response_headers(call.response.headers)
    for name in ("Location", "Content-Location"):
        value = headers.get(name)
        if value is not None:
            new = rewriter.rewrite_header(value)
            if new is None:
                del headers[name]
            else:
                headers[name] = new
    return headers


def is_json_response(call: UpstreamCall) -> bool:
    return media_type(call.response.headers.get("Content-Type")) in JSON_TYPES


def decode_resource(body: bytes) -> dict[str, Any]:
    """A FHIR JSON resource, or 502: the gateway never passes on what it cannot parse."""
    try:
        doc = json.decode(body)
    except json.JsonError:
        raise UpstreamError(reason="upstream.invalid-json") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("resourceType"), str):
        raise UpstreamError(reason="upstream.not-fhir")
    return doc


async def json_response(
    call: UpstreamCall,
    upstream: UpstreamClient,
    rewriter: UrlRewriter,
    limit: int,
    doc_filter: DocFilter | None = None,
    *,
    content_due: bool = False,
) -> web.Response:
    """Read, decode once, rewrite URLs, verify (``doc_filter``), re-encode only if changed."""
    headers = response_headers(call, rewriter)
    body = await upstream.read_body(call, limit)
    status = call.response.status
    if not body:
        if content_due:  # a read's 200 without a resource: nothing was verified, nothing to pass
            raise UpstreamError(reason="upstream.empty")
        return web.Response(status=status, headers=headers)
    body, escaped = rewriter.rewrite_bytes(body)
    doc = decode_resource(body)  # fail closed on anything unparseable
    # what the byte pass cannot see: escaped URLs, a bare host in an error text
    changed = escaped and (rewriter.rewrite_json(doc) | rewriter.scrub_outcome(doc))
    if doc_filter is not None:
        try:
            changed = doc_filter(doc) or changed
        except GatewayError:
            raise
        except (ValueError, TypeError, AttributeError, KeyError, IndexError):
            raise UpstreamError(reason="upstream.unverifiable") from None  # fail closed
    upstream_type = call.response.headers.get("Content-Type")
    if changed:
        # the gateway's own bytes now (UTF-8): say so (FHIR R4 http.html, "Content Types")
        body = json.encode(doc)
        headers["Content-Type"] = f"{media_type(upstream_type) or FHIR_JSON}; charset={CHARSET}"
    else:
        headers["Content-Type"] = upstream_type or FHIR_JSON
    return web.Response(status=status, body=body, headers=headers)


def not_modified(request: web.Request, response: web.Response) -> web.Response | None:
    """A 304 computed by the gateway, after verification, for a matching If-None-Match.

    The upstream never sees the client's conditional headers (its 304 would skip the check
    and confirm that the resource exists), so the gateway answers them itself.
    """
    etag = response.headers.get("ETag")
    wanted = request.headers.get("If-None-Match")
    if response.status != 200 or not etag or not wanted:
        return None
    tags = {t.strip().removeprefix("W/") for t in wanted.split(",")}
    if "*" not in tags and etag.removeprefix("W/") not in tags:
        return None
    return web.Response(status=304, headers={"ETag": etag})


async def empty_response(call: UpstreamCall, rewriter: UrlRewriter) -> web.Response:
    await call.response.read()  # drain (bounded: no-body statuses or zero length)
    return web.Response(status=call.response.status, headers=response_headers(call, rewriter))


async def stream_response(
    request: web.Request, call: UpstreamCall, rewriter: UrlRewriter
) -> web.StreamResponse:
    """Stream an unfiltered body (Binary content) through with flat memory."""
    headers = response_headers(call, rewriter)
    resp = web.StreamResponse(status=call.response.status, headers=headers)
    if call.response.content_length is not None:
        resp.content_length = call.response.content_length
    try:
        await resp.prepare(request)
        async for chunk in call.response.content.iter_chunked(64 * 1024):
            await resp.write(chunk)
        await resp.write_eof()
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        # Headers are gone already (upstream failed, or the client went away): the only
        # honest signal left is a broken connection.
        log(logger, logging.WARNING, "upstream.stream-aborted", error=type(exc).__name__)
        exchange(request).reason = "upstream.stream-aborted"
        if request.transport is not None:
            request.transport.abort()
        return resp
    return resp
