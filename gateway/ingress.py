"""Ingress: turn an aiohttp request into checked, plain data before anything else looks at it.

Owns: the canonical target, the JSON-only content negotiation (406/415), the body size cap
(413), reading bodies the gateway must inspect, and removing ``access_token`` from the query
and form body (RFC 6750 section 2.3 tokens are never accepted; the authenticate stage is told
one was there).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.errors import BadRequest, NotAcceptable, PayloadTooLarge, UnsupportedMediaType
from gateway.fhir import json
from gateway.fhir.request import FhirRequest, Interaction
from gateway.fhir.target import Param, Target, parse_query

JSON_TYPES = frozenset({"application/fhir+json", "application/json", "application/json+fhir"})
FORMAT_JSON = JSON_TYPES | {"json"}
PATCH_TYPES = frozenset({"application/json-patch+json"})
FORM = "application/x-www-form-urlencoded"
_MEDIA_RANGE = re.compile(r"^\s*([^;\s]+)\s*(.*)$")
_Q = re.compile(r";\s*q\s*=\s*([0-9.]+)", re.IGNORECASE)

#: binary interactions whose content may be anything (Binary read/create/update)
_BINARY_READS = {Interaction.READ, Interaction.VREAD}
_BINARY_WRITES = {Interaction.CREATE, Interaction.UPDATE}


@dataclass(frozen=True, slots=True)
class Body:
    """A request body: parsed-and-checked bytes, or a stream for Binary content."""

    content_type: str | None
    data: bytes | None = None
    stream: AsyncIterator[bytes] | None = None
    form: tuple[Param, ...] | None = None
    doc: Any = None  # the decoded JSON of ``data``


def media_type(value: str | None) -> str | None:
    if not value:
        return None
    return value.split(";", 1)[0].strip().lower() or None


def charset(value: str | None) -> str | None:
    """The ``charset`` parameter of a Content-Type, lower-cased, or None when absent."""
    if not value:
        return None
    for param in value.split(";")[1:]:
        name, _, val = param.partition("=")
        if name.strip().lower() == "charset":
            return val.strip().strip('"').lower()
    return None


def is_binary_content(req: FhirRequest) -> bool:
    return req.resource_type == "Binary" and req.interaction in _BINARY_READS | _BINARY_WRITES


def check_accept(req: FhirRequest, accept: str | None) -> None:
    """JSON only (decision 7): `_format` and `Accept` must allow a JSON representation."""
    for name, value in req.params:
        if name == "_format" and value.strip().lower() not in FORMAT_JSON:
            raise NotAcceptable()
    if accept is None or not accept.strip() or is_binary_content(req):
        return
    for item in accept.split(","):
        m = _MEDIA_RANGE.match(item)
        if not m:
            continue
        q = _Q.search(m.group(2))
        try:
            if q and float(q.group(1)) <= 0:
                continue
        except ValueError:
            continue
        mtype = m.group(1).lower()
        if mtype in JSON_TYPES or mtype in ("*/*", "application/*"):
            return
    raise NotAcceptable()


def split_access_token(params: tuple[Param, ...]) -> tuple[tuple[Param, ...], bool]:
    """Remove every ``access_token`` parameter; report whether there was one."""
    kept = tuple(p for p in params if p[0] != "access_token")
    return kept, len(kept) != len(params)


async def _read_capped(request: web.Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


async def _stream_capped(request: web.Request, limit: int) -> AsyncIterator[bytes]:
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge()
        yield chunk


async def read_body(request: web.Request, req: FhirRequest, limit: int) -> Body | None:
    """Read (or prepare to stream) the request body the interaction may carry."""
    if req.method in ("GET", "HEAD", "DELETE"):
        return None  # a body on these is ignored and never forwarded
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge()
    ctype = media_type(request.headers.get("Content-Type"))
    if not request.body_exists:
        return Body(content_type=ctype, data=b"")
    if is_binary_content(req) and ctype not in JSON_TYPES:
        return Body(content_type=ctype, stream=_stream_capped(request, limit))
    if req.is_search and ctype != FORM:
        raise UnsupportedMediaType("POST _search takes an application/x-www-form-urlencoded body.")
    if ctype == FORM and req.is_search:
        raw = await _read_capped(request, limit)
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise BadRequest("A form body must be percent-encoded ASCII.") from None
        return Body(content_type=ctype, form=parse_query(text))
    allowed = PATCH_TYPES | JSON_TYPES if req.interaction is Interaction.PATCH else JSON_TYPES
    if ctype not in allowed:
        raise UnsupportedMediaType()
    if charset(request.headers.get("Content-Type")) not in (None, "utf-8", "utf8"):
        # FHIR JSON is UTF-8; the upstream could decode another charset into another document
        raise UnsupportedMediaType("FHIR JSON bodies must be UTF-8.")
    data = await _read_capped(request, limit)
    try:
        parsed = json.decode(data)
    except json.JsonError:
        raise BadRequest("The request body is not valid JSON.") from None
    try:
        duplicated = json.has_duplicate_keys(data)
    except json.JsonError:
        raise BadRequest("The request body is not valid JSON.") from None
    if duplicated:  # judged here as one document, read upstream as another
        raise BadRequest("The request body repeats a JSON property name.")
    expected = list if ctype in PATCH_TYPES else dict
    if not isinstance(parsed, expected):
        raise BadRequest("The request body is not a FHIR JSON document.")
    return Body(content_type=ctype, data=data, doc=parsed)


def with_params(target: Target, params: tuple[Param, ...]) -> Target:
    return Target(segments=target.segments, params=params)
