"""URL rewriting: upstream URLs become the public base; nothing names the upstream host.

Bodies that need no rewriting go out byte for byte; rewritten bodies keep FHIR decimals as
the same JSON number text.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from aiohttp import web

from tests.support.fake_upstream import FakeUpstream, Recorded
from tests.support.gateway import PUBLIC_BASE, RunningGateway

FHIR_JSON = "application/fhir+json"


def upstream_netloc(fake: FakeUpstream) -> str:
    return urlsplit(fake.base_url).netloc


def bundle_mentioning(base: str) -> bytes:
    """A searchset with the upstream base in every place FHIR puts absolute URLs."""
    return (
        "{\n"
        '  "resourceType": "Bundle", "type": "transaction-response",\n'
        f'  "link": [{{"relation": "self", "url": "{base}/Observation?code=x"}},\n'
        f'           {{"relation": "next", "url": "{base}?_getpages=abc&_offset=10"}}],\n'
        '  "entry": [{\n'
        f'    "fullUrl": "{base}/Observation/o1",\n'
        '    "resource": {"resourceType": "Observation", "id": "o1",\n'
        f'      "subject": {{"reference": "{base}/Patient/p1"}},\n'
        '      "valueQuantity": {"value": 1.50, "unit": "mg"},\n'
        '      "component": [{"valueQuantity": {"value": 1.0E-7}}]},\n'
        '    "response": {"status": "201 Created",\n'
        f'                 "location": "{base}/Observation/o1/_history/1"}}\n'
        "  }]\n"
        "}"
    ).encode()


async def test_upstream_urls_are_rewritten_to_the_public_base(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    base = fake_upstream.base_url
    fake_upstream.reply_json(
        bundle_mentioning(base),
        headers={
            "Location": f"{base}/Observation/o1/_history/1",
            "Content-Location": f"{base}/Observation/o1",
        },
    )
    async with gateway.session.get(f"{gateway.base}/Observation/o1", headers=auth) as resp:
        assert resp.status == 200
        raw = await resp.read()
        headers = resp.headers
    assert headers["Location"] == f"{PUBLIC_BASE}/Observation/o1/_history/1"
    assert headers["Content-Location"] == f"{PUBLIC_BASE}/Observation/o1"
    netloc = upstream_netloc(fake_upstream)
    assert netloc.encode() not in raw
    assert all(netloc not in f"{k}: {v}" for k, v in headers.items())
    doc = await resp.json(content_type=None)
    # paging links become opaque gateway cursors on the public base (PHI issue)
    assert doc["link"][0]["url"].startswith(f"{PUBLIC_BASE}?_cursor=")
    assert doc["link"][1]["url"].startswith(f"{PUBLIC_BASE}?_cursor=")
    assert "code=x" not in raw.decode()
    entry = doc["entry"][0]
    assert entry["fullUrl"] == f"{PUBLIC_BASE}/Observation/o1"
    assert entry["response"]["location"] == f"{PUBLIC_BASE}/Observation/o1/_history/1"
    assert entry["resource"]["subject"]["reference"] == f"{PUBLIC_BASE}/Patient/p1"
    # decimals keep their text even though the body was re-encoded
    assert b'"value":1.50' in raw.replace(b" ", b"")
    assert b"1.0E-7" in raw
    assert b"1.5," not in raw.replace(b" ", b"")


async def test_upstream_base_is_matched_case_insensitively_and_with_escaped_slashes(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    base = fake_upstream.base_url
    escaped = base.replace("/", "\\/")
    body = (
        '{"resourceType": "Patient", "id": "p1", "link": [{"other": {"reference": '
        f'"{base.upper()}/Patient/p2"}}}}, {{"other": {{"reference": "{escaped}/Patient/p3"}}}}]}}'
    ).encode()
    fake_upstream.reply_json(body)
    async with gateway.session.get(f"{gateway.base}/Patient/p1", headers=auth) as resp:
        assert resp.status == 200
        raw = await resp.read()
        headers = resp.headers
    assert upstream_netloc(fake_upstream).encode() not in raw
    assert all(upstream_netloc(fake_upstream) not in v for v in headers.values())
    doc = await resp.json(content_type=None)
    refs = [link["other"]["reference"] for link in doc["link"]]
    assert refs == [f"{PUBLIC_BASE}/Patient/p2", f"{PUBLIC_BASE}/Patient/p3"]


@pytest.mark.parametrize(
    "path", ["/admin/console", "/fhirX/Patient/1", ""], ids=["other-path", "prefix", "root"]
)
@pytest.mark.parametrize("header", ["Location", "Content-Location"])
async def test_upstream_header_outside_its_base_is_dropped(
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    auth: dict[str, str],
    path: str,
    header: str,
) -> None:
    origin = fake_upstream.base_url.removesuffix("/fhir")
    fake_upstream.reply_json(
        {"resourceType": "Patient", "id": "p1"}, status=201, headers={header: origin + path}
    )
    async with gateway.session.post(
        f"{gateway.base}/Patient", json={"resourceType": "Patient"}, headers=auth
    ) as resp:
        assert resp.status == 201
        assert header not in resp.headers
        assert all(upstream_netloc(fake_upstream) not in v for v in resp.headers.values())


async def test_relative_and_foreign_locations_pass_unchanged(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    fake_upstream.reply_json(
        {"resourceType": "Patient", "id": "p1"},
        status=201,
        headers={
            "Location": "Patient/p1/_history/2",
            "Content-Location": "https://terminology.example.org/fhir/CodeSystem/x",
        },
    )
    async with gateway.session.post(
        f"{gateway.base}/Patient", json={"resourceType": "Patient"}, headers=auth
    ) as resp:
        assert resp.status == 201
        assert resp.headers["Location"] == "Patient/p1/_history/2"
        assert resp.headers["Content-Location"] == (
            "https://terminology.example.org/fhir/CodeSystem/x"
        )


UNTOUCHED = (
    b'{ "resourceType":"Observation" ,\n\t"id": "o1",  "valueQuantity": {"value": 1.50},\n'
    b'  "component": [ {"valueQuantity": {"value": 1.0E-7}}, {"valueQuantity": {"value": 0.000}} ],'
    b'\n  "note": [{"text": "caf\xc3\xa9 \\u00e9 \\/ ok"}],  "code": {"text": "x"} }\n'
)


async def test_body_without_upstream_urls_is_forwarded_byte_for_byte(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    async def answer(_: web.Request, __: Recorded) -> web.StreamResponse:
        return web.Response(
            body=UNTOUCHED, headers={"Content-Type": "application/fhir+json;charset=UTF-8"}
        )

    fake_upstream.reply(answer)
    async with gateway.session.get(f"{gateway.base}/Observation/o1", headers=auth) as resp:
        assert resp.status == 200
        assert await resp.read() == UNTOUCHED
        assert resp.headers["Content-Type"] == "application/fhir+json;charset=UTF-8"


async def test_upstream_url_outside_its_base_in_a_body_does_not_leak(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    """Decision: no upstream hostname reaches a client — in bodies too, not only headers."""
    origin = fake_upstream.base_url.removesuffix("/fhir")
    fake_upstream.reply_json(
        {
            "resourceType": "Patient",
            "id": "p1",
            "photo": [{"contentType": "image/png", "url": f"{origin}/blob-store/p1.png"}],
        }
    )
    async with gateway.session.get(f"{gateway.base}/Patient/p1", headers=auth) as resp:
        raw = await resp.read()
        headers = resp.headers
    assert upstream_netloc(fake_upstream).encode() not in raw
    assert all(upstream_netloc(fake_upstream) not in v for v in headers.values())
