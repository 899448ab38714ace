"""Header allow-lists in both directions, X-Forwarded-*, spoofing and ambiguity checks."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import InvalidHeader, UnsupportedMediaType
from gateway.upstream.headers import (
    ProxyView,
    TrustedProxies,
    check_request_headers,
    client_response_headers,
    connection_tokens,
    request_id,
    upstream_request_headers,
)

VIEW = ProxyView(peer="203.0.113.7", scheme="https", host="fhir.example.org")
PROXY_VIEW = ProxyView(peer="10.0.0.5", scheme="http", host="internal:8080")
TRUSTED = TrustedProxies(["10.0.0.0/8", "::1/128"])
NONE_TRUSTED = TrustedProxies([])


def H(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def up(
    *pairs: tuple[str, str],
    view: ProxyView = VIEW,
    trusted: TrustedProxies = NONE_TRUSTED,
    static: dict[str, str] | None = None,
) -> CIMultiDict[str]:
    return upstream_request_headers(H(*pairs), view, trusted, "rid-1", static or {})


# --------------------------------------------------------------------------- request direction

HOP_BY_HOP = [
    "Connection",
    "Keep-Alive",
    "Proxy-Authorization",
    "Proxy-Authenticate",
    "Proxy-Connection",
    "TE",
    "Trailer",
    "Transfer-Encoding",
    "Upgrade",
]


@pytest.mark.parametrize("name", HOP_BY_HOP)
def test_hop_by_hop_never_forwarded_upstream(name: str) -> None:
    out = up((name, "x"), ("Accept", "application/fhir+json"))
    assert name not in out
    assert out["Accept"] == "application/fhir+json"


@pytest.mark.parametrize(
    "name",
    [
        "Authorization",
        "Cookie",
        "Host",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
        "Forwarded",
        "X-Real-IP",
        "X-User",
        "X-Remote-User",
        "X-Patient-Id",
        "Origin",
        "Content-Encoding",
        "Content-Length",
        "Range",
        "Expect",
    ],
)
def test_client_headers_outside_allow_list_dropped(name: str) -> None:
    out = up((name, "1.2.3.4"), (name.upper(), "5.6.7.8"))
    values = out.getall(name, [])
    assert "1.2.3.4" not in values and "5.6.7.8" not in values


@pytest.mark.parametrize(
    "name",
    [
        "Accept",
        "Accept-Language",
        "Content-Type",
        "If-Match",
        "If-None-Match",
        "If-Modified-Since",
        "If-Unmodified-Since",
        "If-None-Exist",
        "Prefer",
    ],
)
def test_allowed_request_headers_forwarded(name: str) -> None:
    assert up((name, "v1"))[name] == "v1"


@pytest.mark.parametrize(
    "connection",
    ["Prefer", "close, Prefer", "prefer , If-Match", "keep-alive,PREFER"],
)
def test_headers_named_in_connection_dropped_upstream(connection: str) -> None:
    out = up(("Connection", connection), ("Prefer", "return=minimal"), ("If-None-Match", "x"))
    assert "Prefer" not in out
    assert out["If-None-Match"] == "x"


def test_connection_tokens_collects_every_connection_header() -> None:
    assert connection_tokens(H(("Connection", "a, B"), ("Connection", "c"))) == {"a", "b", "c"}
    assert connection_tokens({"Connection": "X-Foo"}) == {"x-foo"}


def test_authorization_never_forwarded_by_builder() -> None:
    out = up(("Authorization", "Bearer secret-token"))
    assert "Authorization" not in out
    assert "secret-token" not in repr(out)


def test_gateway_headers_and_static() -> None:
    out = up(("User-Agent", "evil/1.0"), static={"X-Api-Key": "k"})
    assert out["User-Agent"] == "fhir-gateway"
    assert out["X-Request-ID"] == "rid-1"
    assert out["X-Api-Key"] == "k"


def test_forwarded_from_gateway_view_for_untrusted_peer() -> None:
    out = up(
        ("X-Forwarded-For", "1.1.1.1"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "evil.example"),
        ("Forwarded", "for=1.1.1.1"),
        ("X-Real-IP", "1.1.1.1"),
    )
    assert out.getall("X-Forwarded-For") == ["203.0.113.7"]
    assert out.getall("X-Forwarded-Proto") == ["https"]
    assert out.getall("X-Forwarded-Host") == ["fhir.example.org"]
    assert "Forwarded" not in out and "X-Real-IP" not in out


def test_trusted_proxy_chain_extended() -> None:
    out = up(
        ("X-Forwarded-For", "198.51.100.1, 10.1.1.1"),
        ("X-Forwarded-Proto", "HTTPS"),
        ("X-Forwarded-Host", "fhir.example.org:443"),
        view=PROXY_VIEW,
        trusted=TRUSTED,
    )
    assert out["X-Forwarded-For"] == "198.51.100.1, 10.1.1.1, 10.0.0.5"
    assert out["X-Forwarded-Proto"] == "https"
    assert out["X-Forwarded-Host"] == "fhir.example.org:443"


@pytest.mark.parametrize(
    ("xff", "proto", "host"),
    [
        ("not-an-ip", "gopher", "evil host"),
        ("1.2.3.4, evil", "javascript", "a/b"),
        ("1.2.3.4\r\nX-Evil: 1", "https;x", "evil.example\r\nX: y"),
        ("1.2.3.4,,5.6.7.8", "", "evil.example:99999x"),
        ("999.1.1.1", "ftp", "<script>"),
    ],
    ids=["garbage", "one-bad", "crlf", "empty-element", "out-of-range"],
)
def test_trusted_proxy_invalid_values_ignored(xff: str, proto: str, host: str) -> None:
    out = up(
        ("X-Forwarded-For", xff),
        ("X-Forwarded-Proto", proto),
        ("X-Forwarded-Host", host),
        view=PROXY_VIEW,
        trusted=TRUSTED,
    )
    assert out["X-Forwarded-For"] == "10.0.0.5"
    assert out["X-Forwarded-Proto"] == "http"
    assert out["X-Forwarded-Host"] == "internal:8080"


def test_untrusted_peer_cannot_extend_even_with_valid_chain() -> None:
    view = ProxyView(peer="192.0.2.9", scheme="https", host="fhir.example.org")
    out = up(("X-Forwarded-For", "10.0.0.1"), view=view, trusted=TRUSTED)
    assert out["X-Forwarded-For"] == "192.0.2.9"


@pytest.mark.parametrize(
    "host",
    ["evil\r\nX-Injected: 1", "evil.example\n", "a b", "a/b", "evil@host"],
    ids=["crlf", "trailing-lf", "space", "slash", "userinfo"],
)
def test_hostile_host_from_view_not_forwarded(host: str) -> None:
    view = ProxyView(peer="203.0.113.7", scheme="https", host=host)
    assert "X-Forwarded-Host" not in up(view=view)


@pytest.mark.parametrize(
    ("address", "expected"),
    [("10.2.3.4", True), ("::1", True), ("11.0.0.1", False), ("", False), ("garbage", False)],
)
def test_trusted_proxies_membership(address: str, expected: bool) -> None:
    assert (address in TRUSTED) is expected


# --------------------------------------------------------------------------- request checks


@pytest.mark.parametrize(
    "name",
    ["X-HTTP-Method-Override", "x-http-method", "X-Method-Override", "X-Original-Method"],
)
def test_method_override_refused(name: str) -> None:
    with pytest.raises(InvalidHeader):
        check_request_headers(H((name, "DELETE")))


@pytest.mark.parametrize(
    "name",
    [
        "Authorization",
        "Content-Type",
        "Host",
        "Content-Length",
        "Transfer-Encoding",
        "X-Request-ID",
        "If-Match",
        "If-None-Exist",
        "Origin",
    ],
)
def test_duplicated_singletons_refused(name: str) -> None:
    with pytest.raises(InvalidHeader):
        check_request_headers(H((name, "a"), (name.lower(), "b")))
    check_request_headers(H((name, "a")))  # once is fine


@pytest.mark.parametrize(
    "pairs",
    [
        [("Content-Encoding", "gzip")],
        [("Content-Encoding", "GZIP ")],
        [("Content-Encoding", "deflate")],
        [("Content-Encoding", "br")],
        [("Content-Encoding", "identity, gzip")],
        # aiohttp decompresses with the LAST Content-Encoding value: a first "identity"
        # must not hide a later "gzip"
        [("Content-Encoding", "identity"), ("Content-Encoding", "gzip")],
    ],
    ids=["gzip", "gzip-upper", "deflate", "br", "list", "duplicated-identity-then-gzip"],
)
def test_compressed_request_bodies_refused(pairs: list[tuple[str, str]]) -> None:
    with pytest.raises((UnsupportedMediaType, InvalidHeader)):
        check_request_headers(H(*pairs))


@pytest.mark.parametrize("value", ["identity", "", "IDENTITY"])
def test_identity_encoding_accepted(value: str) -> None:
    check_request_headers(H(("Content-Encoding", value)))


# --------------------------------------------------------------------------- request id


@pytest.mark.parametrize("value", ["abc-123", "a.b_c", "x" * 128, "0f9e8d7c6b5a"])
def test_safe_request_id_kept(value: str) -> None:
    assert request_id(H(("X-Request-ID", value)), "generated") == value


@pytest.mark.parametrize(
    "value",
    [
        "a b",
        "a\nb",
        "abc\n",
        "abc\r\n",
        "x" * 129,
        "x" * 200,
        "<script>alert(1)</script>",
        "",
        "é",
        "a;b",
        "a/b",
    ],
    ids=[
        "space",
        "newline",
        "trailing-lf",
        "trailing-crlf",
        "129",
        "200",
        "script",
        "empty",
        "non-ascii",
        "semicolon",
        "slash",
    ],
)
def test_hostile_request_id_replaced(value: str) -> None:
    assert request_id(H(("X-Request-ID", value)), "generated") == "generated"


def test_missing_request_id_generated() -> None:
    assert request_id(H(), "generated") == "generated"


# --------------------------------------------------------------------------- response direction


@pytest.mark.parametrize(
    "name",
    [
        *HOP_BY_HOP,
        "Server",
        "Set-Cookie",
        "Access-Control-Allow-Origin",
        "Access-Control-Allow-Credentials",
        "Access-Control-Expose-Headers",
        "X-Powered-By",
        "Via",
        "X-AspNet-Version",
        "Strict-Transport-Security",
        "WWW-Authenticate",
        "Content-Length",
        "Content-Encoding",
        "Alt-Svc",
    ],
)
def test_upstream_response_headers_dropped(name: str) -> None:
    out = client_response_headers(H((name, "leak"), ("ETag", 'W/"1"')))
    assert name not in out
    assert out["ETag"] == 'W/"1"'


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ETag", 'W/"3"'),
        ("Location", "http://up/fhir/Patient/1/_history/1"),
        ("Content-Location", "http://up/fhir/Patient/1"),
        ("Last-Modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ("Content-Type", "application/fhir+json"),
        ("Preference-Applied", "return=minimal"),
    ],
)
def test_upstream_response_headers_kept(name: str, value: str) -> None:
    assert client_response_headers(H((name, value))).getall(name) == [value]


def test_response_headers_named_in_connection_dropped() -> None:
    out = client_response_headers(
        H(("Connection", "ETag, close"), ("ETag", 'W/"1"'), ("Last-Modified", "x"))
    )
    assert "ETag" not in out and "Connection" not in out
    assert out["Last-Modified"] == "x"
