"""Canonicalise the raw HTTP request target once, and refuse anything ambiguous.

The gateway checks exactly one interpretation of a URL and forwards exactly that one: the
upstream URL is later rebuilt from the validated components (``Target.segments`` and
``Target.params``), never by re-normalising the client's string. Everything that different
parsers could read differently is refused with 400 instead of being "cleaned up":

- anything but origin-form (``/path?query``): absolute-form, authority-form, asterisk-form;
- bytes outside printable ASCII anywhere in the target (browsers percent-encode them);
- a fragment (``#``), path parameters (``;``), backslashes;
- empty segments (``//``), dot segments (``.``, ``..``, also percent-encoded),
  encoded slashes or backslashes (``%2F``, ``%5C``), encoded NUL/control characters,
  double encoding (``%252e``): every decoded segment must match a strict FHIR URL grammar;
- query components that are not valid percent-encoded UTF-8, or decode to control characters.

Query parsing follows application/x-www-form-urlencoded (``+`` is a space), which is what
FHIR servers and clients use for search parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes

from gateway.errors import InvalidTarget

#: A decoded path segment: resource types, FHIR ids, `_history`, `_search`, `$operation`,
#: `metadata`, `.well-known`, and the `*` of `Patient/x/*`.
_SEGMENT = re.compile(r"^(?:[A-Za-z0-9\-._$]+|\*)$")
_PRINTABLE_ASCII = re.compile(r"^[\x21-\x7e]*$")
_PCT_TRIPLET = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

MAX_TARGET_LENGTH = 8190

Param = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Target:
    """A validated request target, relative to the FHIR base path."""

    segments: tuple[str, ...]
    params: tuple[Param, ...]

    @property
    def path(self) -> str:
        """The canonical relative path (segments joined; every segment is URL-safe)."""
        return "/".join(self.segments)


def _decode_component(raw: str, *, plus_is_space: bool) -> str:
    if _PCT_TRIPLET.search(raw):
        raise InvalidTarget("Malformed percent-encoding in the request target.")
    if plus_is_space:
        raw = raw.replace("+", " ")
    try:
        text = unquote_to_bytes(raw).decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise InvalidTarget("The request target is not valid UTF-8.") from None
    if _CONTROL.search(text):
        raise InvalidTarget("Control characters are not allowed in the request target.")
    return text


def parse_query(raw_query: str) -> tuple[Param, ...]:
    """Parse a query string (or form body) into ordered (name, value) pairs.

    Repeated names are kept, in order. Empty pieces (``a=1&&b=2``) are skipped; a piece without
    ``=`` is a name with an empty value. A parameter with an empty name is refused.
    """
    params: list[Param] = []
    if not raw_query:
        return ()
    for piece in raw_query.split("&"):
        if not piece:
            continue
        name, sep, value = piece.partition("=")
        dname = _decode_component(name, plus_is_space=True)
        if not dname:
            raise InvalidTarget("A query parameter has an empty name.")
        params.append((dname, _decode_component(value, plus_is_space=True) if sep else ""))
    return tuple(params)


def parse_target(raw_target: str, base_path: str) -> Target | None:
    """Validate ``raw_target`` and return it relative to ``base_path``.

    Returns None when the (valid) target is outside the FHIR base path. Raises InvalidTarget
    for anything ambiguous or hostile.
    """
    if len(raw_target) > MAX_TARGET_LENGTH:
        raise InvalidTarget("The request target is too long.")
    if not raw_target.startswith("/") or raw_target.startswith("//"):
        raise InvalidTarget("Only origin-form request targets are accepted.")
    if not _PRINTABLE_ASCII.fullmatch(raw_target):
        raise InvalidTarget("The request target contains characters that must be encoded.")
    if "#" in raw_target:
        raise InvalidTarget("A request target must not carry a fragment.")
    raw_path, _, raw_query = raw_target.partition("?")
    if "\\" in raw_path or ";" in raw_path:
        raise InvalidTarget("Backslashes and path parameters are not allowed.")

    raw_segments = raw_path.split("/")[1:]
    if len(raw_segments) > 1 and raw_segments[-1] == "":
        raw_segments.pop()  # one trailing slash is tolerated and removed (canonical form)
    if raw_segments == [""]:
        raw_segments = []
    segments: list[str] = []
    for raw in raw_segments:
        seg = _decode_component(raw, plus_is_space=False)
        if seg in ("", ".", "..") or not _SEGMENT.fullmatch(seg):
            raise InvalidTarget("The request path contains a segment that is not allowed.")
        segments.append(seg)

    base = [s for s in base_path.split("/") if s]
    if segments[: len(base)] != base:
        return None
    return Target(segments=tuple(segments[len(base) :]), params=parse_query(raw_query))


def encode_query(params: tuple[Param, ...] | list[Param]) -> str:
    """Encode pairs as application/x-www-form-urlencoded, safe for a URL or a form body.

    Everything except unreserved characters is percent-encoded (spaces as ``%20``), so
    ``+``, ``%``, ``&``, ``|``, ``,`` and non-ASCII survive exactly.
    """
    return "&".join(f"{quote(n, safe='')}={quote(v, safe='')}" for n, v in params)


def encode_path(segments: tuple[str, ...] | list[str]) -> str:
    return "/".join(quote(s, safe="$*") for s in segments)
