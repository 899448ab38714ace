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

#: optional userinfo before a host (``user[:password]@``): it never changes which host is meant
_USERINFO = r"(?:[^/?#@\s\"'<>\\]*@)?"


def _after_scheme(url: str) -> str:
    """``host[:port]/path`` of an absolute URL (what follows ``scheme://``)."""
    return url.split("://", 1)[1]


#: what replaces an upstream error text that named the upstream server
WITHHELD_DETAIL = "The upstream server's detail is withheld: it named an internal host."


class UrlRewriter:
    def __init__(self, upstream_bases: list[str], public_base: str) -> None:
        self._bases = [b.rstrip("/") for b in upstream_bases]
        self._public = public_base.rstrip("/")
        self._netlocs = {urlsplit(b).netloc.lower() for b in self._bases}
        self._needles = [n.encode() for n in self._netlocs]
        ordered = sorted(self._bases, key=len, reverse=True)
        # an upstream base followed by a URL boundary (never a longer path like /fhirX); any
        # userinfo (``http://svc@host/...``) is part of the match: it names the same host
        alternatives = "|".join(
            re.escape(f"{urlsplit(b).scheme}://") + _USERINFO + re.escape(_after_scheme(b))
            for b in ordered
        )
        self._pattern = re.compile(rf"(?:{alternatives})(?=[/?#\s\"'<>]|$)", re.IGNORECASE)
        # any other URL on an upstream host (e.g. a blob store beside the FHIR base): it has no
        # public equivalent, so only its origin is replaced — a dead link rather than a leak
        hosts = "|".join(re.escape(n) for n in sorted(self._netlocs, key=len, reverse=True))
        self._origin_pattern = re.compile(
            rf"https?://{_USERINFO}(?:{hosts})(?=[/?#\s\"'<>]|$)", re.I
        )
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
        # (no userinfo here: an optional ``user@`` group makes the pass 3-4x slower; a URL with
        # userinfo leaves its host unmatched, so the caller's walk with the patterns above
        # rewrites it)
        bases_b = b"|".join(re.escape(b.lower().encode()[4:]) for b in ordered)
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

    def scrub_outcome(self, doc: dict[str, Any]) -> bool:
        """An upstream OperationOutcome that still names an upstream host outside any URL
        (``failed to reach legacy-fhir:8080``): those texts are replaced. True if changed."""
        if doc.get("resourceType") != "OperationOutcome":
            return False
        changed = False
        if isinstance(doc.get("text"), dict) and self._names_upstream(doc["text"].get("div")):
            del doc["text"]
            changed = True
        for issue in doc.get("issue") or ():
            if not isinstance(issue, dict):
                continue
            if self._names_upstream(issue.get("diagnostics")):
                issue["diagnostics"] = WITHHELD_DETAIL
                changed = True
            details = issue.get("details")
            if isinstance(details, dict) and self._names_upstream(details.get("text")):
                details["text"] = WITHHELD_DETAIL
                changed = True
        return changed

    def _names_upstream(self, value: object) -> bool:
        return isinstance(value, str) and self.mentions_upstream(value.encode())

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
        if urlsplit(new).netloc.rpartition("@")[2].lower() in self._netlocs:
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
