"""Which headers cross the gateway, in each direction.

Both directions use allow-lists: a header is forwarded only when it is an end-to-end header
FHIR clients or servers need, and never when the sender named it in ``Connection`` (RFC 9110
section 7.6.1). Everything else (hop-by-hop headers, identity headers a client could spoof,
``Server``, ``Set-Cookie``, the upstream's CORS headers, ``X-Powered-By`` ...) stops here.
The ``X-Forwarded-*`` headers the upstream sees are built from the gateway's own view of the
connection; a client's values are used only when the connection comes from a trusted proxy.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import InvalidHeader, UnsupportedMediaType

#: end-to-end request headers forwarded upstream (besides those the gateway sets itself)
REQUEST_ALLOW = frozenset(
    h.lower()
    for h in (
        "Accept",
        "Accept-Language",
        "Content-Type",
        "If-Match",
        "If-None-Match",
        "If-Modified-Since",
        "If-Unmodified-Since",
        "If-None-Exist",
        "Prefer",
    )
)

#: end-to-end response headers returned to the client (besides those the gateway sets itself)
RESPONSE_ALLOW = frozenset(
    h.lower()
    for h in (
        "Content-Type",
        "Content-Disposition",
        "Content-Language",
        "Content-Location",
        "ETag",
        "Last-Modified",
        "Location",
        "Preference-Applied",
        # not Warning: its warn-agent field is the upstream's own host:port (RFC 7234 5.5)
    )
)

#: headers that ask an intermediary to treat the request as another method: refused outright
METHOD_OVERRIDE = frozenset(
    {"x-http-method-override", "x-http-method", "x-method-override", "x-original-method"}
)

#: request headers that must not appear twice (ambiguity between intermediaries)
SINGLETON = frozenset(
    {
        "host",
        "authorization",
        "content-type",
        "content-length",
        "transfer-encoding",
        "x-request-id",
        "if-match",
        "if-none-exist",
        "origin",
    }
)

_TOKEN_LIST = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")


def connection_tokens(headers: Mapping[str, str] | CIMultiDictProxy[str]) -> set[str]:
    """Header names listed in ``Connection`` (to be dropped along with it)."""
    names: set[str] = set()
    getall = getattr(headers, "getall", None)
    values: Iterable[str] = getall("Connection", []) if getall else [headers.get("Connection", "")]
    for value in values:
        names.update(t.lower() for t in _TOKEN_LIST.findall(value))
    return names


def check_request_headers(headers: CIMultiDictProxy[str]) -> None:
    """Refuse spoofing and ambiguity: method overrides, duplicated singletons, encodings."""
    for name in METHOD_OVERRIDE:
        if name in headers:
            raise InvalidHeader("Method-override headers are not accepted.")
    for name in SINGLETON:
        if len(headers.getall(name, [])) > 1:
            raise InvalidHeader("A header that must appear once appears more than once.")
    # every value: aiohttp decodes the body with the *last* Content-Encoding header
    for value in headers.getall("Content-Encoding", []):
        if value.strip().lower() not in ("", "identity"):
            raise UnsupportedMediaType("Compressed request bodies are not accepted.")


def request_id(headers: CIMultiDictProxy[str], generate: str) -> str:
    """The client's X-Request-ID when it is a safe token, else a generated one."""
    rid = headers.get("X-Request-ID", "")
    return rid if _REQUEST_ID.fullmatch(rid) else generate


@dataclass(frozen=True, slots=True)
class ProxyView:
    """What the gateway knows about the client connection."""

    peer: str  # the TCP peer's address
    scheme: str  # the scheme of the listener (http/https)
    host: str  # the Host header the client sent


class TrustedProxies:
    def __init__(self, networks: Iterable[str]) -> None:
        self._networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        # asked twice per request for the same few peers: parse each address once
        self._lookup = functools.lru_cache(maxsize=4096)(self._parse_and_match)

    def __contains__(self, address: str) -> bool:
        return bool(self._networks) and self._lookup(address)

    def _parse_and_match(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._networks)


def upstream_request_headers(
    client: CIMultiDictProxy[str],
    view: ProxyView,
    trusted: TrustedProxies,
    request_id: str,
    static: Mapping[str, str],
) -> CIMultiDict[str]:
    """Build the header set sent upstream from the client's headers."""
    dropped = connection_tokens(client)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in client.items():
        lname = name.lower()
        if lname in REQUEST_ALLOW and lname not in dropped:
            out.add(name, value)

    xff, proto, host = view.peer, view.scheme, view.host
    if view.peer in trusted:
        prior = client.get("X-Forwarded-For", "").strip()
        if prior and all(_valid_ip(p.strip()) for p in prior.split(",")):
            xff = f"{prior}, {view.peer}"
        fproto = client.get("X-Forwarded-Proto", "").strip().lower()
        if fproto in ("http", "https"):
            proto = fproto
        fhost = client.get("X-Forwarded-Host", "").strip()
        if _HOST.fullmatch(fhost):
            host = fhost
    out["X-Forwarded-For"] = xff
    out["X-Forwarded-Proto"] = proto
    if _HOST.fullmatch(host):
        out["X-Forwarded-Host"] = host
    out["X-Request-ID"] = request_id
    out["User-Agent"] = "fhir-gateway"
    out.update(static)
    return out


def _valid_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def client_response_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The upstream response headers a client may see (before URL rewriting)."""
    dropped = connection_tokens(upstream)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        lname = name.lower()
        if lname in RESPONSE_ALLOW and lname not in dropped:
            out.add(name, value)
    return out
