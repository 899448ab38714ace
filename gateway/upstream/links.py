"""Rewrite the upstream's absolute URLs to the gateway's public base URL.

No upstream hostname may reach a client: ``Location`` and ``Content-Location`` headers and every
JSON string that holds an upstream URL (``Bundle.link.url``, ``entry.fullUrl``,
``entry.response.location``, absolute references, narrative links) are rewritten. An absolute
header URL on the upstream host but outside its FHIR base cannot be mapped and is dropped.

Bodies are only walked when the raw bytes mention an upstream host at all, so most responses
are forwarded byte for byte without a decode/encode round trip.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit


class UrlRewriter:
    def __init__(self, upstream_bases: list[str], public_base: str) -> None:
        self._bases = [b.rstrip("/") for b in upstream_bases]
        self._public = public_base.rstrip("/")
        self._netlocs = {urlsplit(b).netloc.lower() for b in self._bases}
        self._needles = [n.encode() for n in self._netlocs]
        alternatives = "|".join(re.escape(b) for b in sorted(self._bases, key=len, reverse=True))
        # an upstream base followed by a URL boundary (never a longer path like /fhirX)
        self._pattern = re.compile(rf"(?:{alternatives})(?=[/?#\s\"'<>]|$)", re.IGNORECASE)
        # any other URL on an upstream host (e.g. a blob store beside the FHIR base): it has no
        # public equivalent, so only its origin is replaced — a dead link rather than a leak
        hosts = "|".join(re.escape(n) for n in sorted(self._netlocs, key=len, reverse=True))
        self._origin_pattern = re.compile(rf"https?://(?:{hosts})(?=[/?#\s\"'<>]|$)", re.I)
        parts = urlsplit(self._public)
        self._public_origin = f"{parts.scheme}://{parts.netloc}"

    def mentions_upstream(self, body: bytes) -> bool:
        lowered = body.lower()
        return any(n in lowered for n in self._needles)

    def _sub(self, value: str) -> str:
        value = self._pattern.sub(self._public, value)
        return self._origin_pattern.sub(self._public_origin, value)

    def rewrite_header(self, value: str) -> str | None:
        """The header value with upstream URLs rewritten; None if it must be dropped."""
        parts = urlsplit(value)
        if not parts.scheme and not parts.netloc:
            return value  # relative: already relative to the base the client used
        new = self._pattern.sub(self._public, value)
        if urlsplit(new).netloc.lower() in self._netlocs:
            return None  # upstream host, outside its FHIR base: cannot be expressed publicly
        return new

    def rewrite_json(self, node: Any) -> bool:
        """Rewrite upstream URLs in every string of a decoded JSON document, in place.

        Returns True when anything changed.
        """
        changed = False
        stack: list[Any] = [node]
        sub = self._sub
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                for key, value in item.items():
                    if isinstance(value, str):
                        new = sub(value)
                        if new != value:
                            item[key] = new
                            changed = True
                    elif isinstance(value, dict | list):
                        stack.append(value)
            elif isinstance(item, list):
                for i, value in enumerate(item):
                    if isinstance(value, str):
                        new = sub(value)
                        if new != value:
                            item[i] = new
                            changed = True
                    elif isinstance(value, dict | list):
                        stack.append(value)
        return changed
