"""Privacy policies end to end: the shipped ``policies/`` in front of the real sekmet-fhir server.

Patients 1 and 2 of the dataset carry a PSY-labelled Condition (``sensitive-conditions``) and
preliminary laboratory Observations plus a preliminary DiagnosticReport (``unreleased-labs``).
A patient token must never see, count or detect them, whatever path the data takes (issue 6,
decisions 3, 5, 6, 15, 16). Clinicians see the labs; only holders of the
``sensitive-data-reader`` role, or a practitioner breaking the glass (audited), see the
sensitive Condition. Writes cannot touch what the caller cannot read, and cannot make a
resource escape a policy.

The loaded dataset is read-only: write tests create their own resources (identifier system
:data:`TEST_SYSTEM`) and delete them afterwards.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from multidict import CIMultiDictProxy

from tests.support.gateway import PUBLIC_BASE, RunningGateway, make_config, run_gateway
from tests.support.issuer import TestIssuer
from tests.support.sekmet import RealUpstream, real_upstream

__all__ = ["real_upstream"]

pytestmark = pytest.mark.real_upstream

POLICIES = str(Path(__file__).resolve().parents[2] / "policies")
FHIR_JSON = "application/fhir+json"
TEST_SYSTEM = "urn:fhir-gateway:policy-test"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PSY = f"{ACT_CODE}|PSY"
PSY_LABEL = {"system": ACT_CODE, "code": "PSY"}
LAB = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "laboratory",
        }
    ]
}
BTG_POLICY = "sensitive-conditions-break-the-glass"
MISSING_ID = "no-such-resource-0000"


# --------------------------------------------------------------------------- plumbing


@dataclass
class Answer:
    method: str
    path: str
    status: int
    headers: CIMultiDictProxy[str]
    raw: bytes

    def json(self) -> Any:
        return json.loads(self.raw) if self.raw else None

    def __str__(self) -> str:
        return f"{self.method} {self.path} -> {self.status} {self.raw[:400]!r}"


@dataclass
class World:
    gw: RunningGateway
    up: RealUpstream
    issuer: TestIssuer
    pid: str  # patient 1: holds the sensitive Condition and the preliminary labs
    sensitive: list[str]  # Condition ids
    prelim_obs: list[str]
    prelim_reports: list[str]
    patient: str  # patient/*.rs token of patient 1
    reader: str  # clinician with the sensitive-data-reader role
    plain: str  # clinician without the role
    btg: str  # clinician without the role, purpose of use BTG
    writer: str  # clinician without the role, user/*.cruds
    admin: str  # clinician with the role, user/*.cruds (setup and cleanup)

    @property
    def withheld(self) -> list[str]:
        """Everything a patient token must never see."""
        return [*self.sensitive, *self.prelim_obs, *self.prelim_reports]

    async def call(
        self,
        method: str,
        path: str,
        token: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        url = path if path.startswith("http") else f"{self.gw.base}/{path.lstrip('/')}"
        hdrs = {"Authorization": f"Bearer {token}", "Accept": FHIR_JSON, **(headers or {})}
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            hdrs.setdefault("Content-Type", FHIR_JSON)
        async with self.gw.session.request(method, url, headers=hdrs, data=data) as resp:
            raw = await resp.read()
            return Answer(method, path, resp.status, resp.headers, raw)

    async def get(self, path: str, token: str) -> Answer:
        return await self.call("GET", path, token)

    def to_gateway(self, public_url: str) -> str:
        assert public_url.startswith(PUBLIC_BASE), public_url
        return self.gw.base + public_url[len(PUBLIC_BASE) :]

    async def walk(self, path: str, token: str, *, max_pages: int = 200) -> list[dict[str, Any]]:
        """Every page of a search through the gateway's cursors; returns the Bundles."""
        pages: list[dict[str, Any]] = []
        url: str | None = path
        while url is not None:
            answer = await self.get(url, token)
            assert answer.status == 200, str(answer)
            if token == self.patient:
                self.assert_nothing_withheld(answer)
            bundle = answer.json()
            pages.append(bundle)
            assert len(pages) <= max_pages, "paging does not end"
            nxt = [link["url"] for link in bundle.get("link", []) if link["relation"] == "next"]
            url = self.to_gateway(nxt[0]) if nxt else None
        return pages

    def assert_nothing_withheld(self, answer: Answer) -> None:
        text = answer.raw.decode()
        for rid in self.withheld:
            assert rid not in text, f"withheld resource {rid} leaked: {answer}"
        for rid in self.withheld:
            assert rid not in json.dumps(dict(answer.headers)), f"{rid} in headers: {answer}"


def ids(bundles: list[dict[str, Any]] | dict[str, Any], rtype: str | None = None) -> list[str]:
    if isinstance(bundles, dict):
        bundles = [bundles]
    out = []
    for b in bundles:
        for e in b.get("entry", []):
            r = e.get("resource") or {}
            if rtype is None or r.get("resourceType") == rtype:
                out.append(r.get("id"))
    return out


def matches(bundle: dict[str, Any]) -> int:
    return sum(
        1
        for e in bundle.get("entry", [])
        if (e.get("search") or {}).get("mode", "match") == "match"
    )


def assert_total_honest(bundle: dict[str, Any], visible: int | None = None) -> None:
    """Decision 5: ``total`` absent, or (one page) exactly the visible matches."""
    if "total" not in bundle:
        return
    relations = {link.get("relation") for link in bundle.get("link", [])}
    assert not relations & {"next", "previous", "prev"}, f"total on a multi-page result: {bundle}"
    assert bundle["total"] == matches(bundle), bundle
    if visible is not None:
        assert bundle["total"] == visible, bundle


@pytest.fixture
async def world(real_upstream: RealUpstream, issuer: TestIssuer) -> AsyncIterator[World]:
    cfg = make_config(
        real_upstream.base_url,
        auth={"jwt": [{"issuer": issuer.url, "jwks_uri": issuer.jwks_uri}]},
        policies={"paths": [POLICIES]},
    )
    gw = await run_gateway(cfg)
    p1 = real_upstream.patient(1)
    pid = p1["patient_id"]
    practitioner = {"patient": None, "fhirUser": "Practitioner/dr-policy"}
    w = World(
        gw=gw,
        up=real_upstream,
        issuer=issuer,
        pid=pid,
        sensitive=list(p1["sensitive_condition_ids"]),
        prelim_obs=list(p1["preliminary_observation_ids"]),
        prelim_reports=list(p1["preliminary_report_ids"]),
        patient=issuer.mint(
            scope="openid fhirUser patient/*.rs", patient=pid, fhirUser=f"Patient/{pid}"
        ),
        reader=issuer.mint(scope="user/*.rs", roles=["sensitive-data-reader"], **practitioner),
        plain=issuer.mint(scope="user/*.rs", **practitioner),
        btg=issuer.mint(scope="user/*.rs", purpose_of_use="BTG", **practitioner),
        writer=issuer.mint(scope="user/*.cruds", **practitioner),
        admin=issuer.mint(scope="user/*.cruds", roles=["sensitive-data-reader"], **practitioner),
    )
    assert w.sensitive and w.prelim_obs and w.prelim_reports
    yield w
    await gw.close()


# --------------------------------------------------------------------------- the dataset


async def test_the_dataset_holds_what_the_policies_are_about(world: World) -> None:
    """Guard: the unrestricted clinician sees every special resource (else tests prove nothing)."""
    w = world
    conditions = ids(await w.walk(f"Condition?patient={w.pid}", w.reader))
    assert set(w.sensitive) <= set(conditions)
    observations = ids(await w.walk(f"Observation?patient={w.pid}", w.reader))
    assert set(w.prelim_obs) <= set(observations)
    reports = ids(await w.walk(f"DiagnosticReport?patient={w.pid}", w.reader))
    assert set(w.prelim_reports) <= set(reports)
    for rid in w.sensitive:
        assert (await w.get(f"Condition/{rid}", w.reader)).status == 200


# --------------------------------------------------------------------------- patient: searches

PATIENT_SEARCHES = [
    "Condition?patient={pid}",
    "Condition",
    "Condition?subject=Patient/{pid}",
    "Condition?code=http://snomed.info/sct|35489007",
    "Observation",
    "Observation?patient={pid}&category=laboratory",
    "Observation?status=preliminary",
    "DiagnosticReport",
    "DiagnosticReport?status=preliminary",
    "DiagnosticReport?_include=DiagnosticReport:result",
    "DiagnosticReport?_include=*",
    "Observation?_revinclude=DiagnosticReport:result",
    "Patient?_revinclude=Condition:subject",
    "Patient?_revinclude=Observation:subject&_revinclude=DiagnosticReport:subject",
    "Encounter?_revinclude=Condition:encounter",
    "Condition?_elements=id",
    "Condition?_elements=subject,code",
    "Condition?_summary=true",
    "Observation?_summary=true",
    "Observation?_summary=data",
    "DiagnosticReport?_summary=text",
    "DiagnosticReport?_elements=status",
    "Condition?_count=0",
    "Observation?_count=0",
]


@pytest.mark.parametrize("template", PATIENT_SEARCHES)
async def test_patient_searches_never_return_withheld(world: World, template: str) -> None:
    w = world
    path = template.format(pid=w.pid)
    pages = await w.walk(path, w.patient)
    # the unrestricted view of the same search: its raw count must never leak through
    full = await w.walk(path, w.reader)
    withheld = set(w.withheld) & set(ids(full))
    for page in pages:
        assert_total_honest(page)
        if "total" in page and withheld and "_count=0" not in path:
            assert page["total"] != full[0].get("total"), (path, page)
    seen = ids(pages)
    assert not set(seen) & set(w.withheld)
    if "_count=0" in path:
        # nothing is on the page: whatever total is shown must not be the raw count
        assert pages[0].get("total") in (None, 0) or pages[0]["total"] < (full[0].get("total") or 0)


SECURITY_PROBES = [
    f"Condition?_security={quote(PSY)}",
    f"Condition?_security={quote(PSY)}&_count=0",
    f"Condition?_security:not={quote('urn:x|y')}&_security={quote(PSY)}",
    f"Condition?_security={ACT_CODE}|PSY&patient={{pid}}",
    "Condition?_security=PSY",
]
#: every demo resource carries HTEST: these match visible resources too, filtered
HTEST = "http://terminology.hl7.org/CodeSystem/v3-ActReason|HTEST"
SHARED_LABEL_PROBES = [
    f"Condition?_security={HTEST}",
    f"Observation?_security={HTEST}",
    f"DiagnosticReport?_security={HTEST}",
    f"Observation?_security={HTEST}&status=preliminary",
]


@pytest.mark.parametrize("template", SECURITY_PROBES)
async def test_patient_security_label_probes_find_and_count_nothing(
    world: World, template: str
) -> None:
    w = world
    path = template.format(pid=w.pid)
    answer = await w.get(path, w.patient)
    assert answer.status in (200, 400, 403), str(answer)
    w.assert_nothing_withheld(answer)
    if answer.status == 200:
        bundle = answer.json()
        assert not ids(bundle), bundle
        assert bundle.get("total", 0) == 0, f"total reveals withheld matches: {bundle}"


@pytest.mark.parametrize("path", SHARED_LABEL_PROBES)
async def test_patient_shared_label_probes_are_filtered(world: World, path: str) -> None:
    w = world
    pages = await w.walk(path, w.patient)
    for page in pages:
        assert_total_honest(page)
    assert not set(ids(pages)) & set(w.withheld)
    if "preliminary" in path:
        assert not ids(pages)


@pytest.mark.parametrize("rtype", ["Condition", "Observation", "DiagnosticReport"])
@pytest.mark.parametrize("extra", ["", "&patient={pid}", "&status=preliminary"])
async def test_patient_summary_count_is_refused_or_honest(
    world: World, rtype: str, extra: str
) -> None:
    w = world
    path = f"{rtype}?_summary=count{extra.format(pid=w.pid)}"
    answer = await w.get(path, w.patient)
    raw_count = (await w.get(f"{rtype}?patient={w.pid}&_summary=count", w.reader)).json()["total"]
    if answer.status == 200:
        assert answer.json().get("total") != raw_count, str(answer)
    else:
        assert answer.status == 403, str(answer)


@pytest.mark.parametrize(
    "template",
    [
        f"Patient?_has:Condition:patient:_security={quote(PSY)}",
        "Patient?_has:Condition:subject:code=http://snomed.info/sct|35489007",
        "Patient?_has:Observation:patient:status=preliminary",
        "Patient?_has:DiagnosticReport:subject:status=preliminary",
        "Encounter?_has:Condition:encounter:_security=PSY",
        "DiagnosticReport?result.status=preliminary",
        "DiagnosticReport?result:Observation.status=preliminary",
        "Encounter?diagnosis.code=http://snomed.info/sct|35489007",
        "Encounter?diagnosis:Condition._security=PSY",
        "Observation?derived-from:Observation.status=preliminary",
    ],
)
async def test_patient_has_and_chain_probes_are_refused(world: World, template: str) -> None:
    answer = await world.get(template, world.patient)
    assert answer.status == 403, str(answer)
    world.assert_nothing_withheld(answer)


@pytest.mark.parametrize("rtype", ["Condition", "Observation", "DiagnosticReport"])
async def test_patient_paging_walks_every_page_and_hides_everything(
    world: World, rtype: str
) -> None:
    w = world
    pages = await w.walk(f"{rtype}?_count=2", w.patient)
    seen = ids(pages, rtype)
    assert len(seen) == len(set(seen))
    full = ids(await w.walk(f"{rtype}?patient={w.pid}", w.reader), rtype)
    assert set(seen) == set(full) - set(w.withheld)
    if len(pages) > 1:
        assert all("total" not in page for page in pages), "total on a multi-page result"
    for page in pages:
        assert_total_honest(page)
        for link in page.get("link", []):  # cursors only, never an upstream address
            assert link["url"].startswith(PUBLIC_BASE), link


# --------------------------------------------------------------------------- patient: reads


async def _not_found_reference(w: World, rtype: str) -> Answer:
    return await w.get(f"{rtype}/{MISSING_ID}", w.patient)


def _same_404(hidden: Answer, missing: Answer) -> None:
    assert hidden.status == missing.status == 404, (str(hidden), str(missing))
    assert hidden.raw == missing.raw
    for name in ("Content-Type", "Cache-Control", "WWW-Authenticate", "ETag", "Last-Modified"):
        assert hidden.headers.get(name) == missing.headers.get(name), name
    assert set(hidden.headers) - {"X-Request-ID", "Date"} == set(missing.headers) - {
        "X-Request-ID",
        "Date",
    }


async def test_patient_reads_of_withheld_answer_like_nonexistent(world: World) -> None:
    w = world
    targets = [
        *(("Condition", i) for i in w.sensitive),
        *(("Observation", i) for i in w.prelim_obs),
        *(("DiagnosticReport", i) for i in w.prelim_reports),
    ]
    for rtype, rid in targets:
        missing = await _not_found_reference(w, rtype)
        for path in (f"{rtype}/{rid}", f"{rtype}/{rid}/_history/1"):
            hidden = await w.get(path, w.patient)
            _same_404(hidden, missing)
        for path in (f"{rtype}/{rid}?_elements=id", f"{rtype}/{rid}?_summary=true"):
            hidden = await w.get(path, w.patient)
            assert hidden.status == 404, str(hidden)
            w.assert_nothing_withheld(hidden)


async def test_patient_instance_history_of_withheld_is_404_like_nonexistent(world: World) -> None:
    """``_history`` of a hidden resource is 404 ("whole"); the history of an id that does not
    exist must answer exactly the same (sekmet answers it with an empty 200 history Bundle,
    which the gateway passes through: hidden 404 vs nonexistent 200 is an existence oracle)."""
    w = world
    for rtype, rid in [
        ("Condition", w.sensitive[0]),
        ("Observation", w.prelim_obs[0]),
        ("DiagnosticReport", w.prelim_reports[0]),
    ]:
        answer = await w.get(f"{rtype}/{rid}/_history", w.patient)
        assert answer.status == 404, str(answer)
        w.assert_nothing_withheld(answer)
        missing = await w.get(f"{rtype}/{MISSING_ID}/_history", w.patient)
        assert (answer.status, answer.raw) == (missing.status, missing.raw), (
            f"hidden history {answer.status} vs nonexistent history {missing.status}"
        )


async def test_patient_everything_is_filtered(world: World) -> None:
    w = world
    answer = await w.get(f"Patient/{w.pid}/$everything", w.patient)
    if answer.status != 200:  # refusing it is safe too
        assert answer.status in (403, 404), str(answer)
        w.assert_nothing_withheld(answer)
        return
    pages = await w.walk(f"Patient/{w.pid}/$everything", w.patient)
    seen = ids(pages)
    assert w.pid in seen
    assert not set(seen) & set(w.withheld)
    for page in pages:
        assert_total_honest(page)
    # the same for the unrestricted clinician: the special resources are really in there
    full = ids(await w.walk(f"Patient/{w.pid}/$everything", w.reader))
    assert set(w.withheld) <= set(full)
    assert set(seen) == set(full) - set(w.withheld)


async def test_patient_everything_count_is_refused(world: World) -> None:
    answer = await world.get(f"Patient/{world.pid}/$everything?_summary=count", world.patient)
    assert answer.status in (403, 404) or answer.json().get("total") in (None, 0), str(answer)


# --------------------------------------------------------------------------- patient: batch


def _batch(*urls: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": u}} for u in urls],
    }


async def test_patient_batch_reads_of_withheld_answer_like_nonexistent(world: World) -> None:
    w = world
    urls = [
        f"Condition/{w.sensitive[0]}",
        f"Condition/{MISSING_ID}",
        f"Observation/{w.prelim_obs[0]}",
        f"Observation/{MISSING_ID}",
        f"DiagnosticReport/{w.prelim_reports[0]}",
        f"DiagnosticReport/{MISSING_ID}",
    ]
    answer = await w.call("POST", "", w.patient, _batch(*urls))
    assert answer.status == 200, str(answer)
    w.assert_nothing_withheld(answer)
    entries = answer.json()["entry"]
    assert len(entries) == len(urls)
    for hidden, missing in zip(entries[0:6:2], entries[1:6:2], strict=True):
        assert hidden == missing
        assert hidden["response"]["status"].startswith("404")


async def test_patient_batch_history_of_withheld_shows_no_version(world: World) -> None:
    w = world
    urls = [f"Condition/{w.sensitive[0]}/_history", f"Condition/{MISSING_ID}/_history"]
    answer = await w.call("POST", "", w.patient, _batch(*urls))
    assert answer.status == 200, str(answer)
    hidden, missing = answer.json()["entry"]
    assert hidden["response"]["status"][:3] == missing["response"]["status"][:3], answer
    assert not ids(hidden.get("resource") or {})
    assert (hidden.get("resource") or {}).get("total", 0) == 0
    text = json.dumps(hidden)
    for rid in w.withheld:  # the requested id may be echoed in a self link, nothing else
        assert text.count(rid) <= text.count(f"Condition/{rid}/_history"), hidden


async def test_patient_batch_searches_are_filtered(world: World) -> None:
    w = world
    urls = [
        f"Condition?patient={w.pid}",
        "Observation?status=preliminary",
        "DiagnosticReport?_include=DiagnosticReport:result",
        "Patient?_revinclude=Condition:subject",
        f"Condition?_security={quote(PSY)}",
    ]
    answer = await w.call("POST", "", w.patient, _batch(*urls))
    assert answer.status == 200, str(answer)
    w.assert_nothing_withheld(answer)
    for entry in answer.json()["entry"]:
        bundle = entry.get("resource")
        assert bundle is not None and bundle["resourceType"] == "Bundle", entry
        assert_total_honest(bundle)
    assert not ids(answer.json()["entry"][4]["resource"])


async def test_patient_batch_search_total_never_counts_withheld(world: World) -> None:
    """A search inside a batch follows decision 5 like a search on its own: ``_count=0`` (no
    entries on the page, nothing removed) must not pass the upstream's raw total through."""
    w = world
    urls = [
        f"Condition?patient={w.pid}&_count=0",
        f"Condition?_security={quote(PSY)}&_count=0",
        "Observation?status=preliminary&_count=0",
        f"Condition?patient={w.pid}&_count=1",
    ]
    answer = await w.call("POST", "", w.patient, _batch(*urls))
    assert answer.status == 200, str(answer)
    entries = answer.json()["entry"]
    visible = len(ids(await w.walk(f"Condition?patient={w.pid}", w.patient)))
    raw = (await w.get(f"Condition?patient={w.pid}&_summary=count", w.reader)).json()["total"]
    assert raw > visible
    totals = [(e.get("resource") or {}).get("total") for e in entries]
    assert totals[0] in (None, 0, visible) and totals[0] != raw, totals
    assert totals[1] in (None, 0), f"_security probe counts the withheld Condition: {totals}"
    assert totals[2] in (None, 0), f"preliminary labs counted: {totals}"
    assert totals[3] in (None, visible) and totals[3] != raw, totals


async def test_patient_batch_count_and_probes_are_refused(world: World) -> None:
    w = world
    urls = [
        "Condition?_summary=count",
        f"Patient?_has:Condition:patient:_security={quote(PSY)}",
        "DiagnosticReport?result.status=preliminary",
    ]
    answer = await w.call("POST", "", w.patient, _batch(*urls))
    assert answer.status == 200, str(answer)
    for entry in answer.json()["entry"]:
        assert entry["response"]["status"].startswith("403"), entry


# --------------------------------------------------------------------------- clinicians


async def test_clinician_with_role_sees_labs_and_sensitive_condition(world: World) -> None:
    w = world
    conditions = ids(await w.walk(f"Condition?patient={w.pid}", w.reader))
    assert set(w.sensitive) <= set(conditions)
    assert set(w.prelim_obs) <= set(ids(await w.walk("Observation?status=preliminary", w.reader)))
    included = await w.walk(
        f"DiagnosticReport?patient={w.pid}&_include=DiagnosticReport:result", w.reader
    )
    assert set(w.prelim_obs) | set(w.prelim_reports) <= set(ids(included))
    for rtype, rid in [
        ("Condition", w.sensitive[0]),
        ("Observation", w.prelim_obs[0]),
        ("DiagnosticReport", w.prelim_reports[0]),
    ]:
        answer = await w.get(f"{rtype}/{rid}", w.reader)
        assert answer.status == 200 and answer.json()["id"] == rid, str(answer)
    probe = (await w.get(f"Condition?_security={quote(PSY)}", w.reader)).json()
    assert set(w.sensitive) <= set(ids(probe))


async def test_clinician_without_role_sees_labs_not_the_sensitive_condition(
    world: World,
) -> None:
    w = world
    observations = ids(await w.walk(f"Observation?patient={w.pid}", w.plain))
    assert set(w.prelim_obs) <= set(observations)
    reports = ids(await w.walk(f"DiagnosticReport?patient={w.pid}", w.plain))
    assert set(w.prelim_reports) <= set(reports)
    assert (await w.get(f"Observation/{w.prelim_obs[0]}", w.plain)).status == 200

    for path in (f"Condition?patient={w.pid}", "Condition", f"Condition?_id={w.sensitive[0]}"):
        pages = await w.walk(path, w.plain)
        assert not set(ids(pages)) & set(w.sensitive), path
        for page in pages:
            assert_total_honest(page)
    visible = ids(await w.walk(f"Condition?patient={w.pid}", w.plain))
    full = ids(await w.walk(f"Condition?patient={w.pid}", w.reader))
    assert set(visible) == set(full) - set(w.sensitive)

    missing = await w.get(f"Condition/{MISSING_ID}", w.plain)
    for path in (f"Condition/{w.sensitive[0]}", f"Condition/{w.sensitive[0]}/_history/1"):
        hidden = await w.get(path, w.plain)
        _same_404(hidden, missing)
    history = await w.get(f"Condition/{w.sensitive[0]}/_history", w.plain)
    assert history.status == 404, str(history)


@pytest.mark.parametrize(
    "path",
    [
        "Condition?_summary=count",
        f"Condition?_security={quote(PSY)}&_summary=count",
        "Patient/{pid}/Condition?_summary=count",
        "?_type=Condition&_summary=count",
        f"Patient?_has:Condition:patient:_security={quote(PSY)}",
        "Encounter?diagnosis.code=http://snomed.info/sct|35489007",
        "Encounter?diagnosis:Condition._security=PSY",
    ],
)
async def test_clinician_without_role_cannot_count_or_probe_conditions(
    world: World, path: str
) -> None:
    answer = await world.get(path.format(pid=world.pid), world.plain)
    assert answer.status == 403, str(answer)
    assert world.sensitive[0] not in answer.raw.decode()


async def test_clinician_without_role_security_probe_finds_nothing(world: World) -> None:
    w = world
    for path in (f"Condition?_security={quote(PSY)}", f"Condition?_security={quote(PSY)}&_count=0"):
        answer = await w.get(path, w.plain)
        assert answer.status == 200, str(answer)
        bundle = answer.json()
        assert not ids(bundle)
        assert bundle.get("total", 0) == 0, bundle


async def test_clinician_without_role_history_and_everything_are_filtered(world: World) -> None:
    w = world
    pages = await w.walk(f"Patient/{w.pid}/$everything", w.plain)
    seen = set(ids(pages))
    assert not seen & set(w.sensitive)
    assert set(w.prelim_obs) <= seen
    # type history of a type policies may restrict is refused (policy.history): each version
    # is judged alone, so an older, unlabelled version of a withheld Condition would escape
    history = await w.get("Condition/_history?_count=50", w.plain)
    assert history.status == 403, str(history)


async def test_break_the_glass_sees_sensitive_condition_and_is_audited(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    w = world
    caplog.set_level(logging.INFO, logger="gateway.access")
    answer = await w.get(f"Condition/{w.sensitive[0]}", w.btg)
    assert answer.status == 200 and answer.json()["id"] == w.sensitive[0], str(answer)
    record = _last_access_record(caplog)
    assert record.get("status") == 200
    assert BTG_POLICY in record.get("break_glass", []), record

    caplog.clear()
    bundle = (await w.get(f"Condition?patient={w.pid}", w.btg)).json()
    assert set(w.sensitive) <= set(ids(bundle))
    assert BTG_POLICY in _last_access_record(caplog).get("break_glass", [])

    # an ordinary Condition read by the same token cancels nothing: no break-the-glass record
    caplog.clear()
    other = next(i for i in ids(bundle) if i not in w.sensitive)
    assert (await w.get(f"Condition/{other}", w.btg)).status == 200
    assert not _last_access_record(caplog).get("break_glass")

    # BTG is for practitioners only: a patient claiming it sees nothing more
    patient_btg = w.issuer.mint(
        scope="patient/*.rs", patient=w.pid, fhirUser=f"Patient/{w.pid}", purpose_of_use="BTG"
    )
    assert (await w.get(f"Condition/{w.sensitive[0]}", patient_btg)).status == 404


async def test_break_the_glass_in_a_batch_is_audited(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """The break-the-glass audit must not depend on the path: a batch read of the sensitive
    Condition returns it, so the request's audit record must name the exception."""
    w = world
    caplog.set_level(logging.INFO, logger="gateway.access")
    answer = await w.call("POST", "", w.btg, _batch(f"Condition/{w.sensitive[0]}"))
    assert answer.status == 200, str(answer)
    entry = answer.json()["entry"][0]
    assert (entry.get("resource") or {}).get("id") == w.sensitive[0], entry
    assert BTG_POLICY in _last_access_record(caplog).get("break_glass", []), (
        "break-the-glass access through a batch left no audit record"
    )


async def test_withheld_ids_are_reported_to_the_access_log(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    w = world
    caplog.set_level(logging.INFO, logger="gateway.access")
    await w.get(f"Condition?patient={w.pid}", w.patient)
    record = _last_access_record(caplog)
    assert record.get("withheld", {}).get("sensitive-conditions") == 1, record
    text = json.dumps(record, default=str)
    assert w.sensitive[0] not in text  # ids and counts only, never resource contents


def _last_access_record(caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    records = [r for r in caplog.records if r.name == "gateway.access"]
    assert records, "no access log line"
    fields = getattr(records[-1], "fields", None)
    assert isinstance(fields, dict)
    return fields


# --------------------------------------------------------------------------- writes


def _condition(w: World, tag: str, *, labelled: bool = True, code: str = "35489007") -> dict:
    return {
        "resourceType": "Condition",
        "meta": {"security": [dict(PSY_LABEL)]} if labelled else {},
        "identifier": [{"system": TEST_SYSTEM, "value": f"{tag}-{uuid.uuid4().hex}"}],
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": "active",
                }
            ]
        },
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]},
        "subject": {"reference": f"Patient/{w.pid}"},
    }


def _lab(w: World, status: str = "preliminary") -> dict:
    return {
        "resourceType": "Observation",
        "identifier": [{"system": TEST_SYSTEM, "value": f"lab-{uuid.uuid4().hex}"}],
        "status": status,
        "category": [LAB],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
        "subject": {"reference": f"Patient/{w.pid}"},
        "valueQuantity": {"value": 4.1, "unit": "mmol/L"},
    }


@pytest.fixture
async def created(world: World) -> AsyncIterator[list[tuple[str, str]]]:
    """Resources a test created (type, id); deleted through the upstream directly afterwards."""
    made: list[tuple[str, str]] = []
    yield made
    import aiohttp

    async with aiohttp.ClientSession() as session:
        for rtype, rid in made:
            async with session.delete(world.up.url(f"{rtype}/{rid}")):
                pass


async def _create(w: World, resource: dict, made: list[tuple[str, str]]) -> dict[str, Any]:
    answer = await w.call("POST", resource["resourceType"], w.admin, resource, {
        "Prefer": "return=representation"
    })  # fmt: skip
    assert answer.status == 201, str(answer)
    doc = answer.json()
    made.append((doc["resourceType"], doc["id"]))
    return doc


async def _stored(w: World, rtype: str, rid: str) -> dict[str, Any]:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(w.up.url(f"{rtype}/{rid}")) as r:
        assert r.status == 200
        return json.loads(await r.read())


async def test_clinician_without_role_cannot_update_or_delete_sensitive(
    world: World, created: list[tuple[str, str]]
) -> None:
    w = world
    doc = await _create(w, _condition(w, "sensitive"), created)
    rid = doc["id"]
    missing = await w.call("DELETE", f"Condition/{MISSING_ID}", w.writer)
    changed = {**doc, "note": [{"text": "edited"}]}
    update = await w.call("PUT", f"Condition/{rid}", w.writer, changed)
    assert update.status == 404, str(update)
    patch = await w.call(
        "PATCH",
        f"Condition/{rid}",
        w.writer,
        [{"op": "add", "path": "/note", "value": [{"text": "x"}]}],
        {"Content-Type": "application/json-patch+json"},
    )
    assert patch.status == 404, str(patch)
    delete = await w.call("DELETE", f"Condition/{rid}", w.writer)
    assert delete.status == 404, str(delete)
    assert delete.raw == missing.raw
    stored = await _stored(w, "Condition", rid)  # untouched
    assert stored["meta"]["versionId"] == doc["meta"]["versionId"]
    # conditional writes cannot be judged against a stored version: refused
    ident = doc["identifier"][0]
    cond = await w.call(
        "DELETE", f"Condition?identifier={quote(ident['system'] + '|' + ident['value'])}", w.writer
    )
    assert cond.status in (403, 404), str(cond)
    assert (await _stored(w, "Condition", rid))["id"] == rid


async def test_clinician_without_role_batch_write_of_sensitive_is_refused(
    world: World, created: list[tuple[str, str]]
) -> None:
    w = world
    doc = await _create(w, _condition(w, "sensitive"), created)
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "request": {"method": "PUT", "url": f"Condition/{doc['id']}"},
                "resource": {**doc, "meta": {}},
            },
            {"request": {"method": "DELETE", "url": f"Condition/{doc['id']}"}},
        ],
    }
    answer = await w.call("POST", "", w.writer, bundle)
    assert answer.status == 200, str(answer)
    for entry in answer.json()["entry"]:
        assert entry["response"]["status"][:3] in ("403", "404"), entry
    assert (await _stored(w, "Condition", doc["id"]))["meta"]["versionId"] == doc["meta"][
        "versionId"
    ]


async def test_role_holder_cannot_remove_the_label_to_escape_the_policy(
    world: World, created: list[tuple[str, str]]
) -> None:
    """``sensitive-conditions`` declares no ``release_by``: nobody, not even a reader, may write
    the Condition out of the policy through the gateway (docs/policies.md, "Writes")."""
    w = world
    doc = await _create(w, _condition(w, "escape", code="38341003"), created)  # hypertension
    unlabelled = {**doc, "meta": {}}
    answer = await w.call("PUT", f"Condition/{doc['id']}", w.admin, unlabelled)
    assert answer.status == 403, f"the PSY label was removed: {answer}"
    stored = await _stored(w, "Condition", doc["id"])
    assert PSY_LABEL["code"] in {s.get("code") for s in stored["meta"].get("security", [])}
    patch = await w.call(
        "PATCH",
        f"Condition/{doc['id']}",
        w.admin,
        [{"op": "remove", "path": "/meta/security"}],
        {"Content-Type": "application/json-patch+json"},
    )
    assert patch.status == 403, str(patch)


async def test_role_holder_may_change_other_elements_of_a_sensitive_condition(
    world: World, created: list[tuple[str, str]]
) -> None:
    w = world
    doc = await _create(w, _condition(w, "edit"), created)
    edited = {**doc, "note": [{"text": "reviewed"}]}
    answer = await w.call("PUT", f"Condition/{doc['id']}", w.admin, edited)
    assert answer.status == 200, str(answer)


@pytest.mark.parametrize("who", ["admin", "writer"])
async def test_clinician_cannot_release_a_preliminary_lab_without_release_by(
    world: World, created: list[tuple[str, str]], who: str
) -> None:
    """``policies/unreleased-labs.yaml`` declares no ``release_by``: per docs/policies.md
    ("Without release_by, nobody can release a resource through the gateway") changing the
    status to final is refused with 403, for every clinician."""
    w = world
    doc = await _create(w, _lab(w), created)
    token = getattr(w, who)
    read = await w.get(f"Observation/{doc['id']}", token)
    assert read.status == 200, str(read)  # clinicians see unreleased labs
    final = {**doc, "status": "final"}
    answer = await w.call("PUT", f"Observation/{doc['id']}", token, final)
    assert answer.status == 403, f"a preliminary lab was released: {answer}"
    assert (await _stored(w, "Observation", doc["id"]))["status"] == "preliminary"
    # a write that keeps it preliminary is fine
    amended = {**doc, "valueQuantity": {"value": 4.2, "unit": "mmol/L"}}
    ok = await w.call("PUT", f"Observation/{doc['id']}", token, amended)
    assert ok.status == 200, str(ok)


async def test_conditional_create_is_no_oracle_for_a_withheld_condition(
    world: World, created: list[tuple[str, str]]
) -> None:
    """A clinician without the role may create Conditions; ``If-None-Exist`` must not tell it
    whether a sensitive Condition matching any criteria exists (201 vs an answer about the
    existing one)."""
    w = world
    sensitive_ident = quote("urn:fhir-gateway:demo|sensitive-condition-1")
    nothing_ident = quote(f"{TEST_SYSTEM}|nothing-{uuid.uuid4().hex}")
    answers = []
    for ident in (sensitive_ident, nothing_ident):
        body = _condition(w, "ifnoneexist", labelled=False, code="38341003")
        answer = await w.call(
            "POST", "Condition", w.writer, body, {"If-None-Exist": f"identifier={ident}"}
        )
        if answer.status == 201:
            created.append(("Condition", answer.json()["id"]))
        answers.append(answer)
    hit, miss = answers
    w.assert_nothing_withheld(hit)
    assert hit.status == miss.status, (
        f"If-None-Exist reveals the withheld Condition: {hit.status} vs {miss.status}"
    )


async def test_elements_cannot_hide_the_code_a_policy_matches_on(
    world: World, created: list[tuple[str, str]]
) -> None:
    """A Condition sensitive by its code only (no label): ``_elements``/``_summary`` must not
    strip ``code`` before the policy judges it (the reader without the role would see it)."""
    w = world
    doc = await _create(w, _condition(w, "coded", labelled=False), created)
    rid = doc["id"]
    assert (await w.get(f"Condition/{rid}", w.plain)).status == 404
    for extra in ("_elements=id", "_elements=subject", "_summary=text"):
        answer = await w.get(f"Condition?_id={rid}&{extra}", w.plain)
        assert answer.status in (200, 403), str(answer)
        if answer.status == 200:
            bundle = answer.json()
            assert rid not in ids(bundle), f"{extra} bypasses the code condition: {bundle}"
            assert bundle.get("total", 0) == 0, bundle
