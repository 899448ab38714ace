"""Paging cursors over HTTP (issue 5): every Bundle link becomes ``{PUBLIC_BASE}?_cursor=...``.

The fake upstream answers searches with links that echo PHI and name the upstream host;
following a cursor re-runs authorization for the caller and fetches exactly the upstream
link (as POST ``_search`` when the link carries PHI). Tampered, expired and foreign cursors
send nothing upstream.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from tests.conftest import GatewayFactory
from tests.support.fake_upstream import FakeUpstream, Recorded
from tests.support.gateway import PUBLIC_BASE, RunningGateway
from tests.support.issuer import TestIssuer
from tests.support.sekmet import RealUpstream, real_upstream

__all__ = ["real_upstream"]

FORM = "application/x-www-form-urlencoded"
RELATIONS = ("self", "first", "previous", "next", "last")


def key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


K1, K2 = key(), key()


def page_links(base: str, query: str) -> list[dict[str, str]]:
    """Upstream-style links that echo the (PHI-bearing) query, on the upstream host."""
    offsets = {"self": 0, "first": 0, "previous": 0, "next": 10, "last": 20}
    return [{"relation": rel, "url": f"{base}/{query}&_offset={offsets[rel]}"} for rel in RELATIONS]


class Pager:
    """Answers searches with a searchset whose links are ``links(base)``; records nothing
    beyond what FakeUpstream records."""

    def __init__(self, fake: FakeUpstream, query: str, entries: list[Any] | None = None) -> None:
        self.fake = fake
        self.query = query
        self.entries = entries or []
        fake.reply(self.answer)

    async def answer(self, _: web.Request, __: Recorded) -> web.StreamResponse:
        doc = {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": page_links(self.fake.base_url, self.query),
            "entry": self.entries,
        }
        return web.Response(body=json.dumps(doc).encode(), content_type="application/fhir+json")


def to_gateway(gw: RunningGateway, public_url: str) -> URL:
    assert public_url.startswith(PUBLIC_BASE), public_url
    return URL(gw.base + public_url[len(PUBLIC_BASE) :], encoded=True)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def get(gw: RunningGateway, target: URL | str, headers: dict[str, str]) -> tuple[int, Any]:
    if isinstance(target, str):
        target = URL(target, encoded=True)
    async with gw.session.get(target, headers=headers) as resp:
        raw = await resp.read()
        return resp.status, (json.loads(raw) if raw else None)


async def search(
    gw: RunningGateway, rtype: str, pairs: list[tuple[str, str]], headers: dict[str, str]
) -> tuple[int, Any, bytes]:
    target = URL(f"{gw.base}/{rtype}?{urlencode(pairs, quote_via=quote)}", encoded=True)
    async with gw.session.get(target, headers=headers) as resp:
        raw = await resp.read()
        return resp.status, json.loads(raw), raw


def links(doc: dict[str, Any]) -> dict[str, str]:
    return {link["relation"]: link["url"] for link in doc.get("link", [])}


def cursor_of(public_url: str) -> str:
    return public_url.split("?_cursor=", 1)[1]


async def patient_search(
    gw: RunningGateway, fake: FakeUpstream, headers: dict[str, str]
) -> dict[str, str]:
    """A PHI search whose upstream links echo the PHI; returns the client's links."""
    Pager(fake, "Patient?name=PHIMARK-Smith&birthdate=1961-06-03")
    status, doc, _ = await search(gw, "Patient", [("name", "PHIMARK-Smith")], headers)
    assert status == 200, doc
    fake.requests.clear()
    return links(doc)


# ---------------------------------------------------------------- links become cursors


async def test_every_link_becomes_a_phi_free_cursor(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    Pager(fake_upstream, "Patient?name=PHIMARK-Smith&birthdate=1961-06-03")
    status, doc, raw = await search(gateway, "Patient", [("name", "PHIMARK-Smith")], auth)
    assert status == 200
    assert [link["relation"] for link in doc["link"]] == list(RELATIONS)
    for link in doc["link"]:
        parts = urlsplit(link["url"])
        assert link["url"].startswith(f"{PUBLIC_BASE}?_cursor="), link
        assert parse_qsl(parts.query, keep_blank_values=True)[0][0] == "_cursor"
        assert len(parse_qsl(parts.query)) == 1
    text = raw.decode()
    netloc = urlsplit(fake_upstream.base_url).netloc
    for leak in ("PHIMARK", "Smith", "1961", "birthdate", "_offset", netloc, "127.0.0.1"):
        assert leak not in text, leak
    assert len({cursor_of(u) for u in links(doc).values()}) == len(RELATIONS)


async def test_self_link_points_at_the_gateway_without_phi(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    Pager(fake_upstream, "Patient?name=PHIMARK-Smith")
    _, doc, _ = await search(gateway, "Patient", [("name", "PHIMARK-Smith")], auth)
    self_link = links(doc)["self"]
    assert self_link.startswith(f"{PUBLIC_BASE}?_cursor=")
    assert "PHIMARK" not in self_link


async def test_a_link_to_another_host_is_dropped(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    doc = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [
            {"relation": "self", "url": f"{fake_upstream.base_url}/Patient?name=PHIMARK"},
            {"relation": "next", "url": "https://elsewhere.example/fhir/Patient?name=PHIMARK"},
        ],
    }
    fake_upstream.reply_json(doc)
    status, out, raw = await search(gateway, "Patient", [("name", "PHIMARK")], auth)
    assert status == 200
    assert list(links(out)) == ["self"]
    assert b"PHIMARK" not in raw and b"elsewhere" not in raw


# ---------------------------------------------------------------- following a cursor


async def test_following_next_fetches_the_upstream_link_as_post_when_phi(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    client_links = await patient_search(gateway, fake_upstream, auth)
    status, doc = await get(gateway, to_gateway(gateway, client_links["next"]), auth)
    assert status == 200, doc
    [rec] = fake_upstream.requests
    assert (rec.method, rec.raw_target) == ("POST", "/fhir/Patient/_search")
    assert rec.headers["Content-Type"] == FORM
    assert parse_qsl(rec.body.decode(), keep_blank_values=True) == [
        ("name", "PHIMARK-Smith"),
        ("birthdate", "1961-06-03"),
        ("_offset", "10"),
    ]
    # the page's own links are cursors again, still PHI-free
    assert all(u.startswith(f"{PUBLIC_BASE}?_cursor=") for u in links(doc).values())
    assert "PHIMARK" not in json.dumps(doc)


async def test_following_a_non_phi_link_is_a_get(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    Pager(fake_upstream, "Observation?code=x")
    status, doc, _ = await search(gateway, "Observation", [("code", "x")], auth)
    assert status == 200
    fake_upstream.requests.clear()
    status, _ = await get(gateway, to_gateway(gateway, links(doc)["last"]), auth)
    assert status == 200
    [rec] = fake_upstream.requests
    assert rec.method == "GET"
    assert rec.raw_target == "/fhir/Observation?code=x&_offset=20"
    assert rec.body == b""


async def test_following_a_base_level_getpages_link(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    """HAPI-style ``[base]?_getpages=...`` links are followed as they came."""
    base = fake_upstream.base_url
    fake_upstream.reply_json(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": [{"relation": "next", "url": f"{base}?_getpages=abc&_getpagesoffset=10"}],
        }
    )
    status, doc, _ = await search(gateway, "Patient", [("name", "x")], auth)
    assert status == 200
    fake_upstream.requests.clear()
    status, _ = await get(gateway, to_gateway(gateway, links(doc)["next"]), auth)
    assert status == 200
    [rec] = fake_upstream.requests
    assert (rec.method, rec.raw_target) == ("GET", "/fhir?_getpages=abc&_getpagesoffset=10")


async def test_cursor_chain_keeps_working(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    client_links = await patient_search(gateway, fake_upstream, auth)
    url = client_links["next"]
    for _ in range(3):
        status, doc = await get(gateway, to_gateway(gateway, url), auth)
        assert status == 200
        url = links(doc)["next"]
    assert len(fake_upstream.requests) == 3
    assert all(r.method == "POST" for r in fake_upstream.requests)


async def test_head_on_a_cursor(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    client_links = await patient_search(gateway, fake_upstream, auth)
    async with gateway.session.head(to_gateway(gateway, client_links["next"]), headers=auth) as r:
        assert r.status == 200
    assert fake_upstream.requests[0].method == "POST"


# ---------------------------------------------------------------- refusals: nothing sent


async def test_cursor_without_a_token_is_401(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    client_links = await patient_search(gateway, fake_upstream, auth)
    status, _ = await get(gateway, to_gateway(gateway, client_links["next"]), {})
    assert status == 401
    assert fake_upstream.requests == []


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "someone-else"},
        {"client_id": "another-app"},
        {"sub": "someone-else", "client_id": "another-app"},
    ],
)
async def test_foreign_caller_gets_404_and_nothing_is_sent(
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    auth: dict[str, str],
    issuer: TestIssuer,
    claims: dict[str, str],
) -> None:
    client_links = await patient_search(gateway, fake_upstream, auth)
    other = bearer(issuer.mint(scope="openid fhirUser user/*.cruds", patient=None, **claims))
    for rel in RELATIONS:
        status, doc = await get(gateway, to_gateway(gateway, client_links[rel]), other)
        assert status == 404, doc
        assert doc["resourceType"] == "OperationOutcome"
        assert "PHIMARK" not in json.dumps(doc)
    assert fake_upstream.requests == []


async def test_same_caller_with_a_new_token_is_accepted(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str], issuer: TestIssuer
) -> None:
    """Bound to issuer, subject and client, not to the token string."""
    client_links = await patient_search(gateway, fake_upstream, auth)
    fresh = bearer(issuer.mint(scope="openid fhirUser user/*.cruds", patient=None))
    assert fresh != auth
    status, _ = await get(gateway, to_gateway(gateway, client_links["next"]), fresh)
    assert status == 200
    assert len(fake_upstream.requests) == 1


async def test_caller_no_longer_allowed_gets_403_and_nothing_is_sent(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str], issuer: TestIssuer
) -> None:
    client_links = await patient_search(gateway, fake_upstream, auth)
    fewer = bearer(issuer.mint(scope="user/Observation.rs", patient=None))
    status, doc = await get(gateway, to_gateway(gateway, client_links["next"]), fewer)
    assert status == 403, doc
    assert fake_upstream.requests == []


def flip(cursor: str, at: int) -> str:
    return cursor[:at] + ("A" if cursor[at] != "A" else "B") + cursor[at + 1 :]


async def test_tampered_cursor_is_400_and_nothing_is_sent(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    client_links = await patient_search(gateway, fake_upstream, auth)
    cursor = cursor_of(client_links["next"])
    for at in (0, 1, 5, 17, len(cursor) // 2, len(cursor) - 3):
        status, doc = await get(gateway, f"{gateway.base}?_cursor={flip(cursor, at)}", auth)
        assert status == 400, (at, doc)
        assert doc["resourceType"] == "OperationOutcome"
    assert fake_upstream.requests == []


@pytest.mark.parametrize(
    "value",
    [
        "",
        "x",
        "AAAA",
        "not-a-cursor",
        "%E2%9C%93%E2%9C%93%E2%9C%93",
        "A" * 300,
        "%2B%2F%3D%3D",
        base64.urlsafe_b64encode(b"\x01" + os.urandom(80)).decode().rstrip("="),
    ],
)
async def test_garbage_cursor_is_400_and_nothing_is_sent(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str], value: str
) -> None:
    status, doc = await get(gateway, f"{gateway.base}?_cursor={value}", auth)
    assert status == 400, doc
    assert doc["resourceType"] == "OperationOutcome"
    assert fake_upstream.requests == []


async def test_truncated_cursor_is_400(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    client_links = await patient_search(gateway, fake_upstream, auth)
    cursor = cursor_of(client_links["next"])
    for cut in (1, 8, len(cursor) // 2, len(cursor) - 1):
        status, _ = await get(gateway, f"{gateway.base}?_cursor={cursor[:cut]}", auth)
        assert status == 400, cut
    assert fake_upstream.requests == []


async def test_expired_cursor_is_404_and_nothing_is_sent(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    gw = await gateway_factory(phi={"cursor_ttl_s": 1})
    client_links = await patient_search(gw, fake_upstream, auth)
    status, _ = await get(gw, to_gateway(gw, client_links["next"]), auth)
    assert status == 200  # still fresh
    fake_upstream.requests.clear()
    await asyncio.sleep(1.2)
    status, doc = await get(gw, to_gateway(gw, client_links["next"]), auth)
    assert status == 404, doc
    assert doc["resourceType"] == "OperationOutcome"
    assert fake_upstream.requests == []


# ---------------------------------------------------------------- keys: rotation and replicas


async def test_key_rotation(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    old = await gateway_factory(phi={"cursor_keys": [K1]})
    client_links = await patient_search(old, fake_upstream, auth)
    rotated = await gateway_factory(phi={"cursor_keys": [K2, K1]})
    dropped = await gateway_factory(phi={"cursor_keys": [K2]})

    status, doc = await get(rotated, to_gateway(rotated, client_links["next"]), auth)
    assert status == 200, doc
    assert len(fake_upstream.requests) == 1
    # the rotated gateway seals with K2: the K1-only gateway cannot read its cursors
    new_next = links(doc)["next"]
    status, _ = await get(dropped, to_gateway(dropped, new_next), auth)
    assert status == 200

    fake_upstream.requests.clear()
    status, doc = await get(dropped, to_gateway(dropped, client_links["next"]), auth)
    assert status == 400, doc
    status, _ = await get(old, to_gateway(old, new_next), auth)
    assert status == 400
    assert fake_upstream.requests == []


async def test_replicas_sharing_the_key_accept_each_others_cursors(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    a = await gateway_factory(phi={"cursor_keys": [K1]})
    b = await gateway_factory(phi={"cursor_keys": [K1]})
    from_a = await patient_search(a, fake_upstream, auth)
    status, doc = await get(b, to_gateway(b, from_a["next"]), auth)
    assert status == 200, doc
    status, _ = await get(a, to_gateway(a, links(doc)["next"]), auth)
    assert status == 200
    assert len(fake_upstream.requests) == 2


async def test_replicas_without_configured_keys_do_not_share(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    a = await gateway_factory()
    b = await gateway_factory()
    from_a = await patient_search(a, fake_upstream, auth)
    status, _ = await get(b, to_gateway(b, from_a["next"]), auth)
    assert status == 400
    assert fake_upstream.requests == []


# ---------------------------------------------------------------- confined callers


async def test_confined_cursor_in_another_patient_context_reveals_nothing(
    gateway: RunningGateway, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    """Same subject and client, but launched for patient B: the cursor re-authorizes the
    original search for B, and A's resources fail verification."""
    a = bearer(issuer.mint(scope="patient/*.rs", patient="A"))
    b = bearer(issuer.mint(scope="patient/*.rs", patient="B"))
    obs = {
        "resourceType": "Observation",
        "id": "o-a",
        "status": "final",
        "code": {"text": "PHIMARK-code"},
        "subject": {"reference": "Patient/A"},
    }
    Pager(fake_upstream, "Observation?code=x&patient=Patient/A", [{"resource": obs}])
    status, doc, _ = await search(gateway, "Observation", [("code", "x")], a)
    assert status == 200
    assert [e["resource"]["id"] for e in doc["entry"]] == ["o-a"]
    status, doc = await get(gateway, to_gateway(gateway, links(doc)["next"]), b)
    assert status in (200, 403, 404), doc
    assert "o-a" not in json.dumps(doc)
    assert "PHIMARK" not in json.dumps(doc)


async def test_cursor_plus_other_parameters_is_not_a_page(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    """``?_cursor=...&x=y`` is not a cursor request; whatever happens, the sealed cursor
    itself is never handed to the upstream."""
    client_links = await patient_search(gateway, fake_upstream, auth)
    cursor = cursor_of(client_links["next"])
    status, _ = await get(gateway, f"{gateway.base}?_cursor={cursor}&_count=5", auth)
    assert all(
        cursor not in r.raw_target and cursor.encode() not in r.body for r in fake_upstream.requests
    ), (status, fake_upstream.requests)


# ---------------------------------------------------------------- the real upstream (sekmet)


@pytest.fixture
async def real_gw(real_upstream: RealUpstream, gateway_factory: GatewayFactory) -> RunningGateway:
    return await gateway_factory(upstream_url=real_upstream.base_url)


def entry_ids(doc: dict[str, Any]) -> list[str]:
    return [
        e["resource"]["id"]
        for e in doc.get("entry", [])
        if e.get("search", {}).get("mode", "match") == "match"
    ]


async def direct_ids(real_upstream: RealUpstream, query: str) -> list[str]:
    async with aiohttp.ClientSession() as s, s.get(real_upstream.url(query)) as r:
        doc = await r.json(content_type=None)
    assert doc.get("total") is None or doc["total"] == len(doc.get("entry", []))
    return entry_ids(doc)


def log_offset(real_upstream: RealUpstream) -> int:
    return len(real_upstream.log_file.read_bytes())


def log_since(real_upstream: RealUpstream, offset: int) -> list[str]:
    return real_upstream.log_file.read_bytes()[offset:].decode(errors="replace").splitlines()


@pytest.mark.real_upstream
async def test_real_get_and_post_searches_return_the_same_entries(
    real_gw: RunningGateway, real_upstream: RealUpstream, auth: dict[str, str]
) -> None:
    pid = real_upstream.patient(1)["patient_id"]
    pairs = [("patient", f"Patient/{pid}"), ("_count", "100"), ("_sort", "_id")]
    direct = await direct_ids(real_upstream, f"Observation?patient=Patient/{pid}&_count=1000")
    offset = log_offset(real_upstream)
    status, via_get, _ = await search(real_gw, "Observation", pairs, auth)
    assert status == 200, via_get
    target = URL(f"{real_gw.base}/Observation/_search", encoded=True)
    headers = {**auth, "Content-Type": FORM}
    async with real_gw.session.post(target, headers=headers, data=urlencode(pairs)) as resp:
        assert resp.status == 200
        via_post = await resp.json(content_type=None)
    assert entry_ids(via_get) and entry_ids(via_get) == entry_ids(via_post)
    assert set(entry_ids(via_get)) <= set(direct)
    # sekmet's own access log: both arrived as POST _search, the patient in no URL
    await asyncio.sleep(0.2)
    lines = log_since(real_upstream, offset)
    posts = [ln for ln in lines if '"POST /fhir/Observation/_search ' in ln]
    assert len(posts) == 2, lines
    assert not [ln for ln in lines if pid in ln], lines


@pytest.mark.real_upstream
async def test_real_paging_via_cursors_returns_every_entry_once(
    real_gw: RunningGateway, real_upstream: RealUpstream, auth: dict[str, str]
) -> None:
    pid = real_upstream.patient(1)["patient_id"]
    everything = await direct_ids(real_upstream, f"Observation?patient=Patient/{pid}&_count=1000")
    assert len(everything) > 10, "the dataset must need several pages"
    offset = log_offset(real_upstream)
    status, doc, _ = await search(
        real_gw, "Observation", [("patient", f"Patient/{pid}"), ("_count", "5")], auth
    )
    assert status == 200
    seen: list[str] = []
    pages = 0
    while True:
        pages += 1
        text = json.dumps(doc)
        assert pid not in json.dumps(doc.get("link", [])), "PHI in a paging link"
        assert real_upstream.base_url not in text
        seen += entry_ids(doc)
        nxt = links(doc).get("next")
        if nxt is None:
            break
        assert nxt.startswith(f"{PUBLIC_BASE}?_cursor=")
        status, doc = await get(real_gw, to_gateway(real_gw, nxt), auth)
        assert status == 200, doc
        assert pages < 50
    assert pages == -(-len(everything) // 5)
    assert len(seen) == len(set(seen)), "an entry came twice"
    assert sorted(seen) == sorted(everything)
    # every page, the first and each followed cursor, reached sekmet as POST _search
    await asyncio.sleep(0.2)
    lines = log_since(real_upstream, offset)
    assert len([ln for ln in lines if '"POST /fhir/Observation/_search ' in ln]) == pages
    assert not [ln for ln in lines if pid in ln], lines


@pytest.mark.real_upstream
async def test_real_cursor_of_another_caller_is_404(
    real_gw: RunningGateway, real_upstream: RealUpstream, auth: dict[str, str], issuer: TestIssuer
) -> None:
    pid = real_upstream.patient(2)["patient_id"]
    status, doc, _ = await search(
        real_gw, "Observation", [("patient", f"Patient/{pid}"), ("_count", "2")], auth
    )
    assert status == 200
    other = bearer(issuer.mint(scope="user/*.cruds", patient=None, sub="another-user"))
    status, out = await get(real_gw, to_gateway(real_gw, links(doc)["next"]), other)
    assert status == 404, out


async def test_cursor_from_a_client_post_search(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    Pager(fake_upstream, "Patient?name=PHIMARK-Smith")
    target = URL(f"{gateway.base}/Patient/_search", encoded=True)
    headers = {**auth, "Content-Type": FORM}
    async with gateway.session.post(target, headers=headers, data=b"name=PHIMARK-Smith") as r:
        assert r.status == 200
        doc = await r.json(content_type=None)
    fake_upstream.requests.clear()
    status, page = await get(gateway, to_gateway(gateway, links(doc)["next"]), auth)
    assert status == 200, page
    [rec] = fake_upstream.requests
    assert (rec.method, rec.raw_target) == ("POST", "/fhir/Patient/_search")


async def test_confined_caller_follows_its_own_cursor(
    gateway: RunningGateway, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    a = bearer(issuer.mint(scope="patient/*.rs", patient="A"))
    Pager(fake_upstream, "Observation?code=x&patient=Patient/A")
    status, doc, raw = await search(gateway, "Observation", [("code", "x")], a)
    assert status == 200
    assert b"Patient/A" not in raw
    fake_upstream.requests.clear()
    status, _ = await get(gateway, to_gateway(gateway, links(doc)["next"]), a)
    assert status == 200
    [rec] = fake_upstream.requests
    assert (rec.method, rec.raw_target) == ("POST", "/fhir/Observation/_search")
    assert parse_qsl(rec.body.decode()) == [
        ("code", "x"),
        ("patient", "Patient/A"),
        ("_offset", "10"),
    ]


async def test_server_side_pages_of_a_proven_narrowed_search_are_served(
    gateway: RunningGateway, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    """HAPI keeps a search on its side: page 2's self link is ``[base]?_getpages=...`` with
    no search parameter. The first page proved the narrowing (a cursor exists only then), so
    later pages are served, verified entry by entry as always."""
    base = fake_upstream.base_url
    a_obs = {"resourceType": "Observation", "id": "o-a", "subject": {"reference": "Patient/A"}}
    b_obs = {"resourceType": "Observation", "id": "o-b", "subject": {"reference": "Patient/B"}}
    pages = {
        "first": {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": [
                {"relation": "self", "url": f"{base}/Observation?code=x&patient=Patient%2FA"},
                {"relation": "next", "url": f"{base}?_getpages=abc&_getpagesoffset=1"},
            ],
            "entry": [{"resource": a_obs, "search": {"mode": "match"}}],
        },
        "later": {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": [{"relation": "self", "url": f"{base}?_getpages=abc&_getpagesoffset=1"}],
            "entry": [
                {"resource": a_obs, "search": {"mode": "match"}},
                {"resource": b_obs, "search": {"mode": "match"}},
            ],
        },
    }

    async def answer(_: web.Request, rec: Recorded) -> web.StreamResponse:
        page = pages["later" if "_getpages" in rec.raw_target else "first"]
        return web.json_response(page, content_type="application/fhir+json")

    fake_upstream.reply(answer)
    auth = {"Authorization": f"Bearer {issuer.mint(scope='patient/*.rs', patient='A')}"}
    status, doc, _ = await search(gateway, "Observation", [("code", "x")], auth)
    assert status == 200 and [e["resource"]["id"] for e in doc["entry"]] == ["o-a"]
    status, page = await get(gateway, to_gateway(gateway, links(doc)["next"]), auth)
    assert status == 200
    assert [e["resource"]["id"] for e in page.get("entry", [])] == ["o-a"]  # B's is dropped
