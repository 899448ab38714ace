"""Side fetches the gateway makes for its own checks (stored versions, Binary security
contexts, RelatedPerson links): plain JSON reads through the same pooled upstream session."""

from __future__ import annotations

from typing import Any

from multidict import CIMultiDict

from gateway.errors import UpstreamError
from gateway.fhir import json
from gateway.fhir.request import FHIR_ID
from gateway.fhir.tables import RESOURCE_TYPES
from gateway.fhir.target import encode_path
from gateway.upstream.client import UpstreamClient


class Fetcher:
    def __init__(self, upstream: UpstreamClient, bases: tuple[str, ...], limit: int) -> None:
        self._upstream = upstream
        self.bases = bases
        self._limit = limit

    async def get(self, rtype: str, rid: str) -> dict[str, Any] | None:
        """The resource, or None when the upstream says it does not exist (404/410)."""
        if rtype not in RESOURCE_TYPES or not FHIR_ID.fullmatch(rid):
            return None
        headers: CIMultiDict[str] = CIMultiDict(self._upstream.static_headers)
        headers["Accept"] = "application/fhir+json"
        url = self._upstream.url(encode_path((rtype, rid)), "")
        call = await self._upstream.send("GET", url, headers, None)
        try:
            if call.response.status in (404, 410):
                return None
            if call.response.status != 200:
                raise UpstreamError(reason="upstream.prefetch")
            body = await self._upstream.read_body(call, self._limit)
        finally:
            call.response.release()
        try:
            doc = json.decode(body)
        except json.JsonError:
            raise UpstreamError(reason="upstream.invalid-json") from None
        if not isinstance(doc, dict) or doc.get("resourceType") != rtype:
            raise UpstreamError(reason="upstream.not-fhir")
        return doc

    def split_reference(self, reference: str) -> tuple[str, str] | None:
        """``Type/id`` (relative, or absolute on a known base) as (type, id)."""
        for base in self.bases:
            prefix = base.rstrip("/") + "/"
            if reference.startswith(prefix):
                reference = reference[len(prefix) :]
                break
        parts = reference.split("/")
        if len(parts) in (2, 4) and (len(parts) == 2 or parts[2] == "_history"):
            rtype, rid = parts[0], parts[1]
            if rtype in RESOURCE_TYPES and FHIR_ID.fullmatch(rid):
                return rtype, rid
        return None
