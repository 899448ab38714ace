"""Metrics and probes on the admin listener (issue 8): values move, no PHI in a scrape."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.ops.admin import start_admin
from tests.integration.test_ops_audit import (
    MARKERS,
    OBS,
    OTHER,
    PAT,
    SECRET,
    SHIPPED,
    clinical_upstream,
)
from tests.support.fake_upstream import FakeUpstream, Recorded
from tests.support.gateway import RunningGateway
from tests.support.issuer import TestIssuer

GatewayFactory = Callable[..., Awaitable[RunningGateway]]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
async def admin_gateway(
    gateway_factory: GatewayFactory, issuer: TestIssuer, tmp_path: Path
) -> AsyncIterator[tuple[RunningGateway, str]]:
    gw = await gateway_factory(
        policies={"paths": [SHIPPED]},
        audit={"file": str(tmp_path / "audit.jsonl")},
        auth={
            "jwt": [{"issuer": issuer.url, "jwks_uri": issuer.jwks_uri}],
            "introspection": issuer.introspection().model_dump(),
        },
    )
    runner = await start_admin(gw.app, "127.0.0.1", 0)
    port = runner.addresses[0][1]
    yield gw, f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def scrape(session: aiohttp.ClientSession, admin: str) -> tuple[str, Samples]:
    async with session.get(f"{admin}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_move_and_carry_no_phi(
    admin_gateway: tuple[RunningGateway, str], fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    gw, admin = admin_gateway
    async with gw.session.get(f"{admin}/healthz") as resp:
        assert resp.status == 200
    async with gw.session.get(f"{admin}/readyz") as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["checks"]["token_keys"] is True
    _, before = await scrape(gw.session, admin)

    async def upstream(request: web.Request, rec: Recorded) -> web.StreamResponse:
        if "broken" in rec.path:
            return web.Response(status=500, text="stack trace naming upstream-host")
        return await clinical_upstream(request, rec)

    fake_upstream.reply(upstream)
    clinician = issuer.mint(scope="user/*.rs", patient=None, fhirUser="Practitioner/dr-1")
    btg = issuer.mint(
        scope="user/*.rs", patient=None, fhirUser="Practitioner/dr-2", purpose_of_use="BTG"
    )
    patient = issuer.mint(scope="patient/*.rs", patient=PAT, fhirUser=f"Patient/{PAT}")
    opaque = issuer.issue_opaque(scope="user/*.rs", patient=None, fhirUser="Practitioner/dr-3")

    async def get(path: str, token: str | None) -> int:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        async with gw.session.get(f"{gw.base}/{path}", headers=headers) as resp:
            await resp.read()
            return resp.status

    assert await get(f"Observation/{OBS}", clinician) == 200
    assert await get(f"Observation/{OBS}", clinician) == 200  # token cache hit
    assert await get(f"Observation?patient={OTHER}", patient) == 403
    assert await get(f"Condition?patient={PAT}", clinician) == 200  # one withheld
    assert await get(f"Condition/{SECRET}", clinician) == 404  # withheld read
    assert await get(f"Condition?patient={PAT}", btg) == 200  # break the glass
    assert await get("Patient/broken", clinician) == 502
    assert await get(f"Observation/{OBS}", opaque) == 200  # introspected
    assert await get(f"Observation/{OBS}", None) == 401

    text, after = await scrape(gw.session, admin)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    read_2xx = sum(
        v - value(before, n, **dict(labels))
        for (n, labels), v in after.items()
        if n == "fhir_gateway_requests_total"
        and dict(labels)["interaction"] == "read"
        and dict(labels)["resource_type"] == "Observation"
        and dict(labels)["status_class"] == "2xx"
    )
    assert read_2xx == 3
    assert (
        moved(
            "fhir_gateway_requests_total",
            interaction="read",
            resource_type="Observation",
            status_class="4xx",
            reason="token.missing",
        )
        == 1
    )
    assert moved("fhir_gateway_request_duration_seconds_count", interaction="read") == 6
    assert moved("fhir_gateway_upstream_duration_seconds_count", interaction="read") >= 4
    assert moved("fhir_gateway_upstream_errors_total", kind="status-5xx") == 1
    assert moved("fhir_gateway_policy_withheld_total", policy="sensitive-conditions") == 2
    assert (
        moved(
            "fhir_gateway_break_glass_requests_total", policy="sensitive-conditions-break-the-glass"
        )
        == 1
    )
    assert moved("fhir_gateway_token_cache_hits_total") >= 1
    assert moved("fhir_gateway_token_cache_misses_total") >= 3
    assert value(after, "fhir_gateway_jwks_fetches_total", issuer=issuer.url) >= 1
    assert value(after, "fhir_gateway_jwks_fetch_failures_total", issuer=issuer.url) == 0
    assert moved("fhir_gateway_introspection_requests_total") == 1
    assert moved("fhir_gateway_introspection_duration_seconds_count") == 1
    assert value(after, "fhir_gateway_introspection_failures_total") == 0
    assert moved("fhir_gateway_audit_records_total", sink="jsonl", result="written") == 9
    assert ("fhir_gateway_policy_reloads_total", ()) in after
    assert ("fhir_gateway_policy_reload_failures_total", ()) in after
    assert ("fhir_gateway_rate_limited_total", (("limit", "client"),)) in after

    # no PHI, no tokens, no client addresses or ids, no raw paths in any label or line
    for marker in (*MARKERS, clinician, btg, patient, opaque, "test-client", "upstream-host"):
        assert marker not in text
    for (_, labels), _v in after.items():
        for _k, label in labels:
            assert label != "127.0.0.1" and "?" not in label and "/" not in label.split("://")[-1]


async def test_admin_readyz_follows_draining(admin_gateway: tuple[RunningGateway, str]) -> None:
    from gateway.app import LIFECYCLE

    gw, admin = admin_gateway
    gw.app[LIFECYCLE].draining = True
    async with gw.session.get(f"{admin}/readyz") as resp:
        assert resp.status == 503
        body: dict[str, Any] = json.loads(await resp.text())
        assert body["checks"]["draining"] is True
    async with gw.session.get(f"{admin}/healthz") as resp:
        assert resp.status == 200
    async with gw.session.get(f"{admin}/Patient/1") as resp:
        assert resp.status == 404  # the admin listener serves no FHIR
