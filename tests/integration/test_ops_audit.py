"""The audit trail end to end (issue 8): one record per FHIR request, in both sinks.

- a scenario of allowed, refused, filtered and break-the-glass requests produces exactly the
  expected records in the JSON lines file and, as AuditEvents in batch Bundles, at a recording
  FHIR server on 127.0.0.1;
- the outage test: the AuditEvent server stops mid-run; every record ends up delivered or
  spilled, and the count is exact.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.fake_upstream import FakeUpstream, Recorded, default_answer
from tests.support.gateway import RunningGateway
from tests.support.issuer import TestIssuer

GatewayFactory = Callable[..., Awaitable[RunningGateway]]

SHIPPED = str(Path(__file__).resolve().parents[2] / "policies")
FHIR_JSON = "application/fhir+json"
# PHI markers: patient and resource ids that must appear in the audit trail and nowhere else
PAT = "zz-phi-pat-1"
OTHER = "zz-phi-pat-2"
OBS = "zz-phi-obs-1"
OPEN = "zz-phi-cond-open"
SECRET = "zz-phi-cond-secret"
MARKERS = (PAT, OTHER, OBS, OPEN, SECRET)
CONFIDENTIAL = {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}


def condition(cid: str, *, sensitive: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "resourceType": "Condition",
        "id": cid,
        "subject": {"reference": f"Patient/{PAT}"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
    }
    if sensitive:
        doc["meta"] = {"security": [dict(CONFIDENTIAL)]}
    return doc


async def clinical_upstream(request: web.Request, rec: Recorded) -> web.StreamResponse:
    """Answers for the scenario: an Observation of PAT; Conditions, one of them sensitive."""
    if f"Observation/{OBS}" in rec.path:
        doc: dict[str, Any] = {
            "resourceType": "Observation",
            "id": OBS,
            "status": "final",
            "code": {"text": "weight"},
            "subject": {"reference": f"Patient/{PAT}"},
        }
    elif f"Condition/{SECRET}" in rec.path:
        doc = condition(SECRET, sensitive=True)
    elif "Condition" in rec.path:
        doc = {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [
                {"resource": condition(OPEN), "search": {"mode": "match"}},
                {"resource": condition(SECRET, sensitive=True), "search": {"mode": "match"}},
            ],
        }
    else:
        return default_answer(request.url.with_path("/fhir").human_repr(), rec)
    return web.Response(body=json.dumps(doc).encode(), content_type=FHIR_JSON)


@dataclass
class AuditServer:
    """A recording FHIR server for AuditEvent batch Bundles."""

    server: TestServer | None = None
    bundles: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}/fhir"

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e["resource"] for b in self.bundles for e in b["entry"]]

    async def start(self, port: int | None = None) -> None:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_post("/fhir", self._post)
        self.server = TestServer(app, host="127.0.0.1", port=port)
        await self.server.start_server()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()

    async def _post(self, request: web.Request) -> web.Response:
        bundle = json.loads(await request.read())
        assert request.headers["Content-Type"] == FHIR_JSON
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "batch"
        self.bundles.append(bundle)
        answer = {
            "resourceType": "Bundle",
            "type": "batch-response",
            "entry": [{"response": {"status": "201 Created"}} for _ in bundle["entry"]],
        }
        return web.json_response(answer, content_type=FHIR_JSON)


@pytest.fixture
async def audit_server() -> AsyncIterator[AuditServer]:
    server = AuditServer()
    await server.start()
    yield server
    await server.stop()


def request_id_of(event: dict[str, Any]) -> str:
    for entity in event["entity"]:
        if entity["type"]["code"] == "XrequestId":
            return str(entity["what"]["identifier"]["value"])
    raise AssertionError("AuditEvent without a request id entity")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def test_scenario_records_in_both_sinks(
    gateway_factory: GatewayFactory,
    fake_upstream: FakeUpstream,
    issuer: TestIssuer,
    audit_server: AuditServer,
    tmp_path: Path,
) -> None:
    fake_upstream.reply(clinical_upstream)
    jsonl = tmp_path / "audit.jsonl"
    gw = await gateway_factory(
        policies={"paths": [SHIPPED]},
        audit={
            "file": str(jsonl),
            "fhir": {
                "url": audit_server.url,
                "spill_file": str(tmp_path / "spill.jsonl"),
                "batch_size": 4,
                "flush_interval_s": 0.05,
            },
        },
    )
    clinician = issuer.mint(scope="user/*.rs", patient=None, fhirUser="Practitioner/dr-1")
    btg = issuer.mint(
        scope="user/*.rs", patient=None, fhirUser="Practitioner/dr-2", purpose_of_use="BTG"
    )
    patient = issuer.mint(scope="patient/*.rs", patient=PAT, fhirUser=f"Patient/{PAT}")

    async def call(rid: str, path: str, token: str | None) -> int:
        headers = {"X-Request-ID": rid}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with gw.session.get(f"{gw.base}/{path}", headers=headers) as resp:
            await resp.read()
            return resp.status

    assert await call("req-allowed", f"Observation/{OBS}", clinician) == 200
    assert await call("req-other-patient", f"Observation?patient={OTHER}", patient) == 403
    assert await call("req-no-token", f"Observation/{OBS}", None) == 401
    assert await call("req-filtered", f"Condition?patient={PAT}", clinician) == 200
    assert await call("req-withheld-read", f"Condition/{SECRET}", clinician) == 404
    assert await call("req-break-glass", f"Condition?patient={PAT}", btg) == 200
    async with gw.session.options(
        f"{gw.base}/Patient",
        headers={"Origin": "https://app.example.test", "Access-Control-Request-Method": "GET"},
    ) as resp:
        assert resp.status in (200, 204)  # a preflight is not a FHIR request: no record
    async with gw.session.get(f"{gw.origin}/readyz") as resp:
        await resp.read()  # probes are not audited either
    await gw.close()  # drains the AuditEvent queue

    records = {r["request_id"]: r for r in read_jsonl(jsonl)}
    assert len(read_jsonl(jsonl)) == 6 and set(records) == {
        "req-allowed",
        "req-other-patient",
        "req-no-token",
        "req-filtered",
        "req-withheld-read",
        "req-break-glass",
    }
    who = {
        "client_id": "test-client",
        "subject": "user-1",
        "issuer": issuer.url,
        "source_address": "127.0.0.1",
        "method": "GET",
    }
    nobody = {"policies": {}, "break_glass": False, "break_glass_policies": []}

    def expect(rid: str, **fields: Any) -> None:
        record = records[rid]
        for key, value in fields.items():
            assert record[key] == value, (rid, key, record[key])

    expect(
        "req-allowed",
        **who,
        **nobody,
        fhir_user="Practitioner/dr-1",
        token_fingerprint=fingerprint(clinician),
        context_patient=None,
        interaction="read",
        resource_type="Observation",
        route="Observation/{id}",
        entities=[f"Observation/{OBS}"],
        patients=[PAT],
        status=200,
    )
    expect(
        "req-other-patient",
        **who,
        **nobody,
        fhir_user=f"Patient/{PAT}",
        token_fingerprint=fingerprint(patient),
        context_patient=PAT,
        interaction="search-type",
        resource_type="Observation",
        entities=[],
        patients=[OTHER],
        status=403,
    )
    assert records["req-other-patient"]["reason"].startswith("compartment.")
    expect(
        "req-no-token",
        **nobody,
        client_id=None,
        subject=None,
        fhir_user=None,
        token_fingerprint=None,
        interaction="read",
        entities=[f"Observation/{OBS}"],
        status=401,
        reason="token.missing",
    )
    expect(
        "req-filtered",
        **who,
        fhir_user="Practitioner/dr-1",
        interaction="search-type",
        resource_type="Condition",
        entities=[f"Condition/{OPEN}"],  # what the caller got: not the withheld one
        patients=[PAT],
        status=200,
        policies={"sensitive-conditions": {"withheld": 1, "redacted": 0}},
        break_glass=False,
    )
    expect(
        "req-withheld-read",
        **who,
        interaction="read",
        entities=[f"Condition/{SECRET}"],
        status=404,
        policies={"sensitive-conditions": {"withheld": 1, "redacted": 0}},
        break_glass=False,
    )
    expect(
        "req-break-glass",
        **who,
        fhir_user="Practitioner/dr-2",
        token_fingerprint=fingerprint(btg),
        interaction="search-type",
        entities=[f"Condition/{OPEN}", f"Condition/{SECRET}"],
        patients=[PAT],
        status=200,
        policies={},
        break_glass=True,
        break_glass_policies=["sensitive-conditions-break-the-glass"],
    )
    for record in records.values():
        text = json.dumps(record)
        assert clinician not in text and btg not in text and patient not in text  # never tokens

    # the same records, as AuditEvents, exactly once each
    events = audit_server.events
    assert sorted(request_id_of(e) for e in events) == sorted(records)
    assert not (tmp_path / "spill.jsonl").exists()
    for event in events:
        record = records[request_id_of(event)]
        assert event["resourceType"] == "AuditEvent"
        assert event["type"]["code"] == "rest"
        assert event["subtype"][0] == {
            "system": "http://hl7.org/fhir/restful-interaction",
            "code": record["interaction"],
        }
        assert event["outcome"] == ("0" if record["status"] < 400 else "4")
        assert event["agent"][0]["requestor"] is True
        assert event["agent"][0]["network"]["address"] == "127.0.0.1"
        if record["fhir_user"]:
            assert event["agent"][0]["who"] == {"reference": record["fhir_user"]}
            assert event["agent"][1]["who"]["identifier"]["value"] == "test-client"
        refs = [e["what"].get("reference") for e in event["entity"] if "reference" in e["what"]]
        patients = [r.removeprefix("Patient/") for r in refs if r.startswith("Patient/")]
        assert patients == record["patients"]
        assert [r for r in refs if not r.startswith("Patient/")] == record["entities"]
        assert ("purposeOfEvent" in event) is record["break_glass"]
    glass = next(e for e in events if request_id_of(e) == "req-break-glass")
    assert glass["purposeOfEvent"][0]["coding"][0]["code"] == "BTG"
    assert "sensitive-conditions-break-the-glass" in glass["purposeOfEvent"][0]["text"]


async def test_outage_every_record_delivered_or_spilled(
    gateway_factory: GatewayFactory,
    issuer: TestIssuer,
    audit_server: AuditServer,
    tmp_path: Path,
) -> None:
    """The AuditEvent server stops mid-run: nothing is lost, and the numbers add up."""
    spill = tmp_path / "spill.jsonl"
    gw = await gateway_factory(
        audit={
            "file": str(tmp_path / "audit.jsonl"),
            "fhir": {
                "url": audit_server.url,
                "spill_file": str(spill),
                "batch_size": 5,
                "flush_interval_s": 0.02,
                "queue_size": 8,
                "max_attempts": 3,
                "initial_backoff_s": 0.05,
                "max_backoff_s": 0.1,
                "timeout_s": 1,
                "drain_timeout_s": 0.5,
            },
        }
    )
    token = issuer.mint(scope="user/*.rs", patient=None, fhirUser="Practitioner/dr-1")
    sent: list[str] = []

    async def burst(n: int) -> None:
        for _ in range(n):
            rid = f"outage-{len(sent):03d}"
            sent.append(rid)
            async with gw.session.get(
                f"{gw.base}/Patient/p-{len(sent)}",
                headers={"Authorization": f"Bearer {token}", "X-Request-ID": rid},
            ) as resp:
                assert resp.status == 200

    await burst(12)
    for _ in range(100):  # the first records reach the server
        if len(audit_server.events) >= 10:
            break
        await asyncio.sleep(0.02)
    assert audit_server.events
    await audit_server.stop()  # the outage
    await burst(40)  # retries fail, the queue (8) overflows and spills
    await asyncio.sleep(0.3)
    await gw.close()  # shutdown: what is left is spilled

    delivered = [request_id_of(e) for e in audit_server.events]
    spilled = [request_id_of(json.loads(line)) for line in spill.read_text().splitlines()]
    assert len(sent) == 52
    assert set(delivered) | set(spilled) == set(sent)  # every record is somewhere
    assert len(set(delivered)) == len(delivered) and not set(delivered) & set(spilled)
    assert len(delivered) + len(spilled) == len(sent)  # ... and exactly once here
    assert spilled and len(delivered) >= 10
    assert all(
        json.loads(line)["resourceType"] == "AuditEvent" for line in spill.read_text().splitlines()
    )
    # the JSON lines sink kept everything regardless
    assert len(read_jsonl(tmp_path / "audit.jsonl")) == len(sent)
