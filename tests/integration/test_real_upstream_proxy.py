"""The gateway in front of the real sekmet-fhir server with carebundle data.

Read, search with paging (links point at the gateway and work), POST `_search`,
create/update/delete and a transaction all go through the gateway unchanged in meaning, and no
upstream address reaches the client.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.support.gateway import PUBLIC_BASE, RunningGateway, make_config, run_gateway
from tests.support.issuer import TestIssuer
from tests.support.sekmet import RealUpstream, real_upstream

__all__ = ["real_upstream"]

pytestmark = pytest.mark.real_upstream
FHIR_JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture
async def gw(real_upstream: RealUpstream, issuer: TestIssuer) -> AsyncIterator[RunningGateway]:
    cfg = make_config(
        real_upstream.base_url,
        auth={"jwt": [{"issuer": issuer.url, "jwks_uri": issuer.jwks_uri}]},
    )
    running = await run_gateway(cfg)
    yield running
    await running.close()


@pytest.fixture
def headers(issuer: TestIssuer) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.mint(scope='user/*.cruds', patient=None)}"}


def to_gateway(gw: RunningGateway, public_url: str) -> str:
    """Map a PUBLIC_BASE URL (what the client sees) onto the test listener."""
    assert public_url.startswith(PUBLIC_BASE), public_url
    return gw.base + public_url[len(PUBLIC_BASE) :]


def assert_no_upstream_address(raw: bytes, real_upstream: RealUpstream) -> None:
    netloc = urlsplit(real_upstream.base_url).netloc.encode()
    assert netloc not in raw


async def get_json(gw: RunningGateway, url: str, headers: dict[str, str]) -> tuple[int, Any, bytes]:
    async with gw.session.get(url, headers=headers) as resp:
        raw = await resp.read()
        return resp.status, json.loads(raw), raw


async def test_read_patient(
    gw: RunningGateway, real_upstream: RealUpstream, headers: dict[str, str]
) -> None:
    pid = real_upstream.patient(1)["patient_id"]
    status, doc, raw = await get_json(gw, f"{gw.base}/Patient/{pid}", headers)
    assert status == 200
    assert doc["resourceType"] == "Patient" and doc["id"] == pid
    assert_no_upstream_address(raw, real_upstream)


async def test_search_pages_through_the_gateway(
    gw: RunningGateway, real_upstream: RealUpstream, headers: dict[str, str]
) -> None:
    pid = real_upstream.patient(1)["patient_id"]
    url = f"{gw.base}/Observation?patient={pid}&_count=7"
    seen: list[str] = []
    total = None
    pages = 0
    while url:
        status, bundle, raw = await get_json(gw, url, headers)
        assert status == 200
        assert_no_upstream_address(raw, real_upstream)
        total = bundle.get("total", total)
        for entry in bundle.get("entry", []):
            assert entry["fullUrl"].startswith(PUBLIC_BASE + "/Observation/")
            assert entry["resource"]["subject"]["reference"].endswith(pid)
            seen.append(entry["resource"]["id"])
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        assert all(u.startswith(PUBLIC_BASE) for u in links.values())
        url = to_gateway(gw, links["next"]) if "next" in links else ""
        pages += 1
        assert pages < 50
    assert pages > 1
    assert len(seen) == len(set(seen)) == total


async def test_post_search_returns_the_same_entries_as_get(
    gw: RunningGateway, real_upstream: RealUpstream, headers: dict[str, str]
) -> None:
    pid = real_upstream.patient(2)["patient_id"]
    _, by_get, _ = await get_json(
        gw, f"{gw.base}/Observation?patient={pid}&category=laboratory&_count=100", headers
    )
    form = {"patient": pid, "category": "laboratory", "_count": "100"}
    async with gw.session.post(f"{gw.base}/Observation/_search", data=form, headers=headers) as r:
        assert r.status == 200
        by_post = await r.json(content_type=None)
    ids_get = sorted(e["resource"]["id"] for e in by_get["entry"])
    ids_post = sorted(e["resource"]["id"] for e in by_post["entry"])
    assert ids_get == ids_post and ids_get


async def test_create_update_delete(
    gw: RunningGateway, real_upstream: RealUpstream, headers: dict[str, str]
) -> None:
    pid = real_upstream.patient(3)["patient_id"]
    marker = f"gw-test-{uuid.uuid4().hex[:8]}"
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "identifier": [{"system": "urn:fhir-gateway:test", "value": marker}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "valueQuantity": {"value": 72, "unit": "/min"},
    }
    async with gw.session.post(
        f"{gw.base}/Observation", data=json.dumps(obs), headers={**headers, **FHIR_JSON}
    ) as resp:
        assert resp.status == 201
        location = resp.headers["Location"]
        created = await resp.json(content_type=None)
    assert location.startswith(PUBLIC_BASE + "/Observation/")
    oid = created["id"]

    created["status"] = "amended"
    async with gw.session.put(
        f"{gw.base}/Observation/{oid}", data=json.dumps(created), headers={**headers, **FHIR_JSON}
    ) as resp:
        assert resp.status == 200
    status, doc, _ = await get_json(gw, f"{gw.base}/Observation/{oid}", headers)
    assert status == 200 and doc["status"] == "amended"

    async with gw.session.delete(f"{gw.base}/Observation/{oid}", headers=headers) as resp:
        assert resp.status in (200, 204)
    async with gw.session.get(f"{gw.base}/Observation/{oid}", headers=headers) as resp:
        assert resp.status in (404, 410)
        outcome = await resp.json(content_type=None)
        assert outcome["resourceType"] == "OperationOutcome"


async def test_transaction(
    gw: RunningGateway, real_upstream: RealUpstream, headers: dict[str, str]
) -> None:
    pid = real_upstream.patient(3)["patient_id"]
    marker = f"gw-tx-{uuid.uuid4().hex[:8]}"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "identifier": [{"system": "urn:fhir-gateway:test", "value": marker}],
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
                    "subject": {"reference": f"Patient/{pid}"},
                    "valueQuantity": {"value": 36.6, "unit": "Cel"},
                },
                "request": {"method": "POST", "url": "Observation"},
            }
        ],
    }
    async with gw.session.post(
        gw.base, data=json.dumps(bundle), headers={**headers, **FHIR_JSON}
    ) as resp:
        raw = await resp.read()
        assert resp.status == 200, raw[:300]
    reply = json.loads(raw)
    assert reply["type"] == "transaction-response"
    assert_no_upstream_address(raw, real_upstream)
    status, found, _ = await get_json(
        gw, f"{gw.base}/Observation?identifier=urn:fhir-gateway:test|{marker}", headers
    )
    assert status == 200 and len(found["entry"]) == 1
