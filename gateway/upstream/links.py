"""Rewrite the upstream's absolute URLs to the gateway's public base URL.

No upstream hostname may reach a client: ``Location`` and ``Content-Location`` headers and every
JSON string that holds an upstream URL (``Bundle.link.url``, ``entry.fullUrl``,
``entry.response.location``, absolute references, narrative links) are rewritten. An absolute
header URL on the upstream host but outside its FHIR base cannot be mapped and is dropped.

Bodies that mention an upstream host are rewritten on their raw bytes in one pass; only what
that pass cannot see (JSON-escaped URLs) is left to a walk over the decoded document.
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
        # the same two rules on raw JSON bytes (a string ends at `"`, an escape starts at `\`),
        # as one case-sensitive pattern of lower-case literals behind the literal prefix
        # ``http``, run over ``body.lower()``: the regex engine then scans at C speed (``re.I``
        # and top-level alternation on bytes are 10-20x slower), and the match positions map
        # 1:1 onto the original bytes (``bytes.lower`` keeps every length)
        if not all(b.lower().startswith(("http://", "https://")) for b in self._bases):
            raise ValueError("upstream bases must be http(s) URLs")
        end = rb"(?=[/?#\s\"'<>\\]|$)"
        bases_b = b"|".join(
            re.escape(b.lower().encode()[4:]) for b in sorted(self._bases, key=len, reverse=True)
        )
        hosts_b = b"|".join(
            re.escape(n.encode()) for n in sorted(self._netlocs, key=len, reverse=True)
        )
        base_b = rb"(?P<base>" + bases_b + rb")" + end
        origin_b = rb"s?://(?:" + hosts_b + rb")" + end
        self._raw = re.compile(rb"http(?:" + base_b + rb"|" + origin_b + rb")")
        self._public_b = self._public.encode()
        self._public_origin_b = self._public_origin.encode()

    def mentions_upstream(self, body: bytes) -> bool:
        lowered = body.lower()
        return any(n in lowered for n in self._needles)

    def rewrite_bytes(self, body: bytes) -> tuple[bytes, bool]:
        """Rewrite upstream URLs in raw JSON bytes in one pass.

        Returns the new bytes and whether an upstream host is still mentioned (an escaped
        form such as ``http:\\/\\/host``): then the caller walks the decoded document too.
        """
        lowered = body.lower()
        if not any(n in lowered for n in self._needles):
            return body, False
        parts: list[bytes] = []
        last = 0
        for match in self._raw.finditer(lowered):
            start, stop = match.span()
            new = self._public_b if match.lastgroup == "base" else self._public_origin_b
            parts += (body[last:start], new)
            last = stop
        if not parts:
            return body, True
        parts.append(body[last:])
        out = b"".join(parts)
        matches = len(parts) // 2
        if len(self._needles) == 1:
            # every match holds the host exactly once and no occurrence can straddle a match
            # (a host has no boundary character): equal counts mean none is left over
            return out, lowered.count(self._needles[0]) != matches
        lowered_out = out.lower()
        return out, any(n in lowered_out for n in self._needles)

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
