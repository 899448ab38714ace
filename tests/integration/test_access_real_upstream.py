"""Cross-patient leak tests against the real sekmet-fhir server (decisions 2-12).

Patient A (``patient(1)``) holds a patient-context token; patient B (``patient(2)``) is the
victim. B's "secrets" (Patient id, identifier values, names, and the ids of B's Observations,
Conditions, DiagnosticReports and Encounters) are collected once through the gateway with an
unconfined clinician token. Every bypass attempt made with A's token must then:

(a) answer with the status the decisions require: 403 for a search naming B (decision 4),
    404 for a read of one of B's resources (decision 3, same as a nonexistent id), 400 for a
    malformed request; and
(b) carry none of B's secrets in its body or in any header.

Allowed requests (narrowed searches, includes, paging, ``$everything``) are checked entry by
entry: every Patient reference anywhere in every returned resource must be ``Patient/A``.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
from multidict import CIMultiDictProxy
from yarl import URL

from tests.support.gateway import PUBLIC_BASE, RunningGateway, make_config, run_gateway
from tests.support.issuer import TestIssuer
from tests.support.sekmet import RealUpstream, real_upstream

__all__ = ["real_upstream"]

pytestmark = pytest.mark.real_upstream

FHIR_JSON = "application/fhir+json"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
TEST_SYSTEM = "urn:fhir-gateway:access-test"
MISSING_ID = "no-such-resource-0000"
STABLE_HEADERS = ("Content-Type", "Cache-Control", "WWW-Authenticate", "ETag", "Last-Modified")


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
        return f"{self.method} {self.path} -> {self.status} {self.raw[:300]!r}"


@dataclass
class Secrets:
    """What A must never learn about B."""

    patient_id: str
    identifiers: list[str]
    names: list[str]
    observation_ids: list[str]
    condition_ids: list[str]
    report_ids: list[str]
    encounter_ids: list[str]
    all: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.all = [
            self.patient_id,
            *self.identifiers,
            *self.names,
            *self.observation_ids,
            *self.condition_ids,
            *self.report_ids,
            *self.encounter_ids,
        ]


@dataclass
class World:
    gw: RunningGateway
    up: RealUpstream
    issuer: TestIssuer
    a: str
    b: str
    secrets: Secrets
    a_token: str
    clinician: str  # user/*.rs, no patient: sees everyone
    admin: str  # user/*.cruds, no patient: for setup and cleanup only

    @property
    def b_obs(self) -> str:
        return self.secrets.observation_ids[0]

    def fill(self, template: str) -> str:
        s = self.secrets
        return template.format(
            A=self.a,
            B=self.b,
            B_obs=self.b_obs,
            B_cond=s.condition_ids[0],
            B_dr=s.report_ids[0],
            B_enc=s.encounter_ids[0],
            B_family=quote(_family(s.names)),
            B_ident=quote(s.identifiers[0]),
            public=quote(PUBLIC_BASE, safe=""),
            upstream=quote(self.up.base_url, safe=""),
            missing=MISSING_ID,
        )


async def call(
    gw: RunningGateway,
    method: str,
    path: str,
    token: str | None,
    *,
    body: Any = None,
    content_type: str = FHIR_JSON,
    headers: dict[str, str] | None = None,
) -> Answer:
    """One request; ``path`` is relative to the FHIR base and already percent-encoded."""
    url = path if path.startswith("http") else f"{gw.base}/{path}" if path else gw.base
    hdrs = {"Accept": FHIR_JSON, **(headers or {})}
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    data: bytes | None = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs["Content-Type"] = content_type
    async with gw.session.request(
        method, URL(url, encoded=True), headers=hdrs, data=data, allow_redirects=False
    ) as resp:
        raw = await resp.read()
        return Answer(method, path, resp.status, resp.headers, raw)


def to_gateway(gw: RunningGateway, public_url: str) -> str:
    assert public_url.startswith(PUBLIC_BASE), public_url
    return gw.base + public_url[len(PUBLIC_BASE) :]


def _family(names: list[str]) -> str:
    return names[0]


def assert_clean(answer: Answer, secrets: Secrets) -> None:
    """No secret of B in the body or in any header of the answer."""
    for secret in secrets.all:
        assert secret.encode() not in answer.raw, f"B's {secret!r} leaked in the body: {answer}"
        for name, value in answer.headers.items():
            assert secret not in value, f"B's {secret!r} leaked in header {name}: {answer}"


def patient_refs(node: Any) -> set[str]:
    """Every ``Patient/...`` reference (relative or absolute) anywhere in a JSON document."""
    found: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == "reference" and isinstance(value, str) and "Patient/" in value:
                    found.add(value.rsplit("Patient/", 1)[1].split("/")[0])
                elif isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
    return found


def assert_only_a(bundle: dict[str, Any], a: str) -> list[dict[str, Any]]:
    """Every returned resource is A's: a Patient must be A, every Patient reference names A."""
    resources = [e["resource"] for e in bundle.get("entry", []) if "resource" in e]
    for res in resources:
        if res["resourceType"] == "Patient":
            assert res["id"] == a, res["id"]
        assert patient_refs(res) <= {a}, (res["resourceType"], res.get("id"), patient_refs(res))
    return resources


def assert_outcome(answer: Answer, status: int) -> None:
    assert answer.status == status, str(answer)
    if answer.method != "HEAD":
        assert answer.json()["resourceType"] == "OperationOutcome", str(answer)


async def all_pages(w: World, path: str, token: str) -> list[dict[str, Any]]:
    """Follow ``next`` to the end; every page is checked for B's secrets on the way."""
    url = path
    bundles: list[dict[str, Any]] = []
    while url:
        answer = await call(w.gw, "GET", url, token)
        assert answer.status == 200, str(answer)
        if token != w.clinician:
            assert_clean(answer, w.secrets)
        bundle = answer.json()
        bundles.append(bundle)
        links = {link["relation"]: link["url"] for link in bundle.get("link", [])}
        url = to_gateway(w.gw, links["next"]) if "next" in links else ""
        assert len(bundles) < 100
    return bundles


_SECRETS: dict[str, Secrets] = {}


async def collect_secrets(gw: RunningGateway, b: str, clinician: str) -> Secrets:
    """B's secrets, read through the gateway with an unconfined token."""

    async def ids(rtype: str) -> list[str]:
        out: list[str] = []
        url = f"{rtype}?patient={b}&_count=100"
        while url:
            answer = await call(gw, "GET", url, clinician)
            assert answer.status == 200, str(answer)
            bundle = answer.json()
            out += [e["resource"]["id"] for e in bundle.get("entry", [])]
            links = {link["relation"]: link["url"] for link in bundle.get("link", [])}
            url = to_gateway(gw, links["next"]) if "next" in links else ""
        return out

    answer = await call(gw, "GET", f"Patient/{b}", clinician)
    assert answer.status == 200, str(answer)
    patient = answer.json()
    identifiers = [i["value"] for i in patient.get("identifier", []) if i.get("value")]
    names: list[str] = []
    for name in patient.get("name", []):
        if name.get("family"):
            names.append(name["family"])
        names += [g for g in name.get("given", []) if len(g) >= 4]
        full = " ".join([*name.get("given", []), name.get("family", "")]).strip()
        if full:
            names.append(full)
    secrets = Secrets(
        patient_id=b,
        identifiers=identifiers,
        names=names,
        observation_ids=await ids("Observation"),
        condition_ids=await ids("Condition"),
        report_ids=await ids("DiagnosticReport"),
        encounter_ids=await ids("Encounter"),
    )
    assert secrets.identifiers and secrets.names
    assert secrets.observation_ids and secrets.condition_ids
    assert secrets.report_ids and secrets.encounter_ids
    return secrets


@pytest.fixture
async def w(real_upstream: RealUpstream, issuer: TestIssuer) -> AsyncIterator[World]:
    cfg = make_config(
        real_upstream.base_url,
        auth={"jwt": [{"issuer": issuer.url, "jwks_uri": issuer.jwks_uri}]},
    )
    gw = await run_gateway(cfg)
    a = real_upstream.patient(1)["patient_id"]
    b = real_upstream.patient(2)["patient_id"]
    clinician = issuer.mint(scope="openid fhirUser user/*.rs", patient=None)
    secrets = _SECRETS.get(real_upstream.base_url)
    if secrets is None:
        secrets = _SECRETS[real_upstream.base_url] = await collect_secrets(gw, b, clinician)
    a_token = issuer.mint(
        scope="launch/patient openid fhirUser patient/*.rs", patient=a, fhirUser=f"Patient/{a}"
    )
    admin = issuer.mint(scope="openid fhirUser user/*.cruds", patient=None)
    yield World(gw, real_upstream, issuer, a, b, secrets, a_token, clinician, admin)
    await gw.close()


def writer_token(w: World) -> str:
    """A's token with write permissions (same confinement)."""
    return w.issuer.mint(
        scope="launch/patient openid fhirUser patient/*.cruds",
        patient=w.a,
        fhirUser=f"Patient/{w.a}",
    )


def a_observation(w: World, subject: str, marker: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "identifier": [{"system": TEST_SYSTEM, "value": marker}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{subject}"},
        "valueQuantity": {"value": 72, "unit": "/min"},
    }


async def count_marker(w: World, marker: str) -> int:
    answer = await call(
        w.gw, "GET", f"Observation?identifier={quote(TEST_SYSTEM + '|' + marker)}", w.admin
    )
    assert answer.status == 200, str(answer)
    return len(answer.json().get("entry", []))


# --------------------------------------------------------------------------- B's secrets


async def test_clinician_sees_both_patients(w: World) -> None:
    for pid in (w.a, w.b):
        answer = await call(w.gw, "GET", f"Patient/{pid}", w.clinician)
        assert answer.status == 200 and answer.json()["id"] == pid
    answer = await call(w.gw, "GET", f"Observation?patient={w.b}&_count=5", w.clinician)
    assert answer.status == 200
    assert patient_refs(answer.json()) == {w.b}
    answer = await call(w.gw, "GET", f"Observation/{w.b_obs}", w.clinician)
    assert answer.status == 200 and answer.json()["id"] == w.b_obs


# --------------------------------------------------------------------------- refusals

#: searches naming B, joins that act as oracles, system/type level: 403 (decisions 4, 5, 12)
FORBIDDEN = [
    ("GET", "Observation?patient={B}"),
    ("GET", "Observation?patient=Patient/{B}"),
    ("GET", "Observation?subject=Patient/{B}"),
    ("GET", "Observation?subject={public}%2FPatient%2F{B}"),
    ("GET", "Observation?subject={upstream}%2FPatient%2F{B}"),
    ("GET", "Observation?patient={A},{B}"),
    ("GET", "Observation?patient={A}&patient={B}"),
    ("GET", "Observation?subject:Patient={B}"),
    ("GET", "Observation?performer=Patient/{B}"),
    ("GET", "Condition?asserter=Patient/{B}"),
    ("GET", "Condition?patient={B}"),
    ("GET", "Encounter?patient={B}"),
    ("GET", "DiagnosticReport?subject=Patient/{B}"),
    ("GET", "Observation?_has:DiagnosticReport:result:subject={B}"),
    ("GET", "Patient?_has:Observation:patient:_id={B_obs}"),
    ("GET", "Observation?subject.name={B_family}"),
    ("GET", "Observation?subject:Patient.identifier={B_ident}"),
    ("GET", "Observation?patient.name={B_family}"),
    ("GET", "Observation?_filter=subject%20eq%20Patient%2F{B}"),
    ("GET", "Observation?_list=some-list"),
    ("GET", "Observation?_query=everything"),
    ("GET", "Observation?_content={B_family}"),
    ("GET", "Observation?_text={B_family}"),
    ("GET", "Observation?_summary=count"),
    ("GET", "Patient?_id={B}"),
    ("GET", "Patient?_id={A},{B}"),
    ("GET", "Patient/{B}/Observation"),
    ("GET", "Patient/{B}/*"),
    ("GET", "Patient/{A}/Observation?patient={B}"),
    ("GET", "Patient/{A}/Observation?subject=Patient/{B}"),
    ("GET", "Patient/{A}/Observation?subject.name={B_family}"),
    ("GET", "Observation/_history"),
    ("GET", "_history"),
    ("GET", "?_type=Observation"),
    ("GET", "?_type=Observation&patient={B}"),
    ("GET", "$export"),
    ("GET", "Patient/$export"),
    ("GET", "Patient/{B}/$export"),
    ("GET", "$graphql?query=%7BPatient(id%3A%22{B}%22)%7Bname%7D%7D"),
    ("GET", "Observation/$lastn?patient={B}"),
    ("GET", "Encounter/{B_enc}/Observation"),
    ("DELETE", "Observation?identifier={B_ident}"),
    ("DELETE", "Observation?patient={B}"),
]


@pytest.mark.parametrize(("method", "template"), FORBIDDEN)
async def test_forbidden_for_patient_a(w: World, method: str, template: str) -> None:
    token = writer_token(w) if method != "GET" else w.a_token
    answer = await call(w.gw, method, w.fill(template), token)
    assert_outcome(answer, 403)
    assert_clean(answer, w.secrets)


async def test_post_search_forbidden(w: World) -> None:
    form = "application/x-www-form-urlencoded"
    for path, body in [
        ("_search", "_type=Observation"),
        ("_search", f"_type=Observation&patient={w.b}"),
        ("Observation/_search", f"patient={w.b}"),
        ("Observation/_search", f"subject.name={quote(_family(w.secrets.names))}"),
        ("Observation/_search", "_filter=subject%20eq%20x"),
    ]:
        answer = await call(w.gw, "POST", path, w.a_token, body=body.encode(), content_type=form)
        assert_outcome(answer, 403)
        assert_clean(answer, w.secrets)


#: reads of B's resources: 404, exactly like a nonexistent id (decision 3)
NOT_FOUND = [
    ("GET", "Patient/{B}"),
    ("GET", "Observation/{B_obs}"),
    ("GET", "Condition/{B_cond}"),
    ("GET", "DiagnosticReport/{B_dr}"),
    ("GET", "Encounter/{B_enc}"),
    ("GET", "Observation/{B_obs}/_history/1"),
    ("GET", "Patient/{B}/_history"),
    ("GET", "Patient/{B}/_history/1"),
    ("GET", "Patient/{B}/$everything"),
    ("HEAD", "Observation/{B_obs}"),
    ("HEAD", "Patient/{B}"),
]


@pytest.mark.parametrize(("method", "template"), NOT_FOUND)
async def test_not_found_for_patient_a(w: World, method: str, template: str) -> None:
    answer = await call(w.gw, method, w.fill(template), w.a_token)
    assert_outcome(answer, 404)
    assert_clean(answer, w.secrets)


async def test_instance_history_of_b_is_404(w: World) -> None:
    """Decision 3: the history of one of B's resources is a specific resource A may not see.

    BUG: answered 200 with an empty history Bundle (the envelope is filtered, not refused).
    On servers that answer a nonexistent id's history with 404, that is an existence oracle.
    """
    answer = await call(w.gw, "GET", f"Observation/{w.b_obs}/_history", w.a_token)
    assert_clean(answer, w.secrets)
    assert_outcome(answer, 404)


async def test_read_of_b_looks_exactly_like_a_missing_id(w: World) -> None:
    for rtype, rid in [
        ("Observation", w.b_obs),
        ("Condition", w.secrets.condition_ids[0]),
        ("Patient", w.b),
    ]:
        hidden = await call(w.gw, "GET", f"{rtype}/{rid}", w.a_token)
        missing = await call(w.gw, "GET", f"{rtype}/{MISSING_ID}", w.a_token)
        assert hidden.status == missing.status == 404
        assert hidden.raw == missing.raw
        assert set(hidden.headers) - {"Date", "X-Request-Id"} == set(missing.headers) - {
            "Date",
            "X-Request-Id",
        }
        for name in STABLE_HEADERS:
            assert hidden.headers.get(name) == missing.headers.get(name), name


MALFORMED = [
    "Patient/..%2F{B}",
    "Patient/{B}%2F_history",
    "Observation?patient=%ZZ",
    "Patient/{B}/_history/1/extra",
    "Observation/{B_obs}/Patient/{B}",
    "Patient/not%20an%20id",
]


@pytest.mark.parametrize("template", MALFORMED)
async def test_malformed_is_400(w: World, template: str) -> None:
    answer = await call(w.gw, "GET", w.fill(template), w.a_token)
    assert_outcome(answer, 400)
    assert_clean(answer, w.secrets)


# --------------------------------------------------------------------------- narrowed answers

NARROWED = [
    "Observation",
    "Observation?_count=200",
    "Observation?code=http%3A%2F%2Floinc.org%7C2951-2",
    "Observation?patient={A}",
    "Observation?subject=Patient/{A}",
    "Observation?_include=Observation:subject",
    "Observation?_include=*",
    "Observation?_include=Observation:encounter&_include:iterate=Encounter:subject",
    "Condition?_include=Condition:subject",
    "DiagnosticReport?_include=DiagnosticReport:result",
    "Encounter?_revinclude=Observation:encounter",
    "Patient",
    "Patient?_revinclude=Observation:subject",
    "Patient?_revinclude=Observation:subject&_revinclude:iterate=DiagnosticReport:result",
    "Patient?_revinclude:iterate=Observation:subject",
    "Patient?name={B_family}",
    "Patient?identifier={B_ident}",
    "Patient?_id={A}",
    "Patient/{A}/Observation",
    "Patient/{A}/Condition",
    "Patient/{A}/$everything",
    "Observation?_elements=id",
    "Observation?_elements=id,code",
    "Observation?_summary=true",
    "Observation?_summary=data",
    "Patient?_summary=true",
]


@pytest.mark.parametrize("template", NARROWED)
async def test_narrowed_answers_hold_only_a(w: World, template: str) -> None:
    answer = await call(w.gw, "GET", w.fill(template), w.a_token)
    assert answer.status == 200, str(answer)
    assert_clean(answer, w.secrets)
    bundle = answer.json()
    assert bundle["resourceType"] == "Bundle"
    assert_only_a(bundle, w.a)


async def test_plain_search_returns_all_of_a_and_none_of_b(w: World) -> None:
    mine = {
        r["id"]
        for page in await all_pages(w, f"Observation?patient={w.a}&_count=100", w.clinician)
        for r in assert_only_a(page, w.a)
    }
    seen = {
        r["id"]
        for page in await all_pages(w, "Observation?_count=100", w.a_token)
        for r in assert_only_a(page, w.a)
    }
    assert seen == mine and seen
    assert not seen & set(w.secrets.observation_ids)


async def test_name_search_for_b_returns_nothing(w: World) -> None:
    answer = await call(w.gw, "GET", w.fill("Patient?name={B_family}"), w.a_token)
    assert answer.status == 200
    assert not answer.json().get("entry")


async def test_include_brings_only_a_patient(w: World) -> None:
    for include in ("Observation:subject", "*"):
        answer = await call(w.gw, "GET", f"Observation?_include={include}", w.a_token)
        assert answer.status == 200, str(answer)
        patients = {
            e["resource"]["id"]
            for e in answer.json().get("entry", [])
            if e["resource"]["resourceType"] == "Patient"
        }
        assert patients == {w.a}


async def test_elements_and_summary_do_not_widen(w: World) -> None:
    mine = {
        r["id"]
        for page in await all_pages(w, "Observation?_count=200", w.a_token)
        for r in assert_only_a(page, w.a)
    }
    for extra in ("_elements=id", "_summary=true"):
        seen = {
            e["resource"]["id"]
            for page in await all_pages(w, f"Observation?{extra}&_count=200", w.a_token)
            for e in page.get("entry", [])
        }
        assert seen == mine


async def test_paging_to_the_end_stays_with_a(w: World) -> None:
    pages = await all_pages(w, "Observation?_count=7", w.a_token)
    assert len(pages) > 1
    ids: list[str] = []
    for page in pages:
        ids += [r["id"] for r in assert_only_a(page, w.a)]
    assert len(ids) == len(set(ids))
    assert not set(ids) & set(w.secrets.observation_ids)


async def _next_link(w: World, path: str, token: str) -> str:
    answer = await call(w.gw, "GET", path, token)
    assert answer.status == 200, str(answer)
    links = {link["relation"]: link["url"] for link in answer.json()["link"]}
    assert "?_cursor=" in links["next"], links  # decision 14: opaque cursors
    return links["next"]


async def test_paging_cursor_tampered_is_refused(w: World) -> None:
    link = await _next_link(w, "Observation?_count=7", w.a_token)
    head, cursor = link.split("?_cursor=")
    for forged in (
        cursor[:-4] + ("AAAA" if not cursor.endswith("AAAA") else "BBBB"),
        cursor[:20],
        "x" + cursor,
        "",
    ):
        answer = await call(w.gw, "GET", to_gateway(w.gw, f"{head}?_cursor={forged}"), w.a_token)
        assert_outcome(answer, 400)
        assert_clean(answer, w.secrets)


@pytest.mark.parametrize("same_subject", [True, False])
async def test_clinician_cursor_for_b_replayed_by_a(w: World, same_subject: bool) -> None:
    """A cursor issued for a search of B's data does not work for A: it is bound to its caller
    and the original request is re-authorized on every page."""
    clinician = w.clinician
    if not same_subject:
        clinician = w.issuer.mint(scope="openid user/*.rs", patient=None, sub="dr-who")
    link = await _next_link(w, f"Observation?patient={w.b}&_count=5", clinician)
    answer = await call(w.gw, "GET", to_gateway(w.gw, link), w.a_token)
    assert answer.status in (403, 404), str(answer)
    assert_outcome(answer, answer.status)
    assert_clean(answer, w.secrets)
    answer = await call(w.gw, "GET", to_gateway(w.gw, link), clinician)
    assert answer.status == 200 and patient_refs(answer.json()) == {w.b}


async def test_cursor_of_a_is_useless_to_another_caller(w: World) -> None:
    link = await _next_link(w, "Observation?_count=7", w.a_token)
    other = w.issuer.mint(
        scope="launch/patient patient/*.rs", patient=w.b, fhirUser=f"Patient/{w.b}", sub="b-user"
    )
    answer = await call(w.gw, "GET", to_gateway(w.gw, link), other)
    assert_outcome(answer, 404)


async def test_all_compartment_search(w: World) -> None:
    """``Patient/A/*`` (sekmet does not implement it and answers 400): never B's data."""
    answer = await call(w.gw, "GET", f"Patient/{w.a}/*", w.a_token)
    assert answer.status in (200, 400), str(answer)
    assert_clean(answer, w.secrets)
    if answer.status == 200:
        assert_only_a(answer.json(), w.a)


# --------------------------------------------------------------------------- batch / transaction


async def test_batch_entries_are_judged_one_by_one(w: World) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Observation?patient={w.b}"}},
            {"request": {"method": "GET", "url": f"Patient/{w.b}"}},
            {"request": {"method": "GET", "url": "Observation?_count=5"}},
            {"request": {"method": "GET", "url": f"Patient/{w.a}"}},
            {"request": {"method": "GET", "url": f"Observation/{w.b_obs}"}},
            {"request": {"method": "GET", "url": f"Observation?subject.name={w.b}"}},
            {"request": {"method": "GET", "url": "Patient?_revinclude=Observation:subject"}},
        ],
    }
    answer = await call(w.gw, "POST", "", w.a_token, body=bundle)
    assert answer.status == 200, str(answer)
    assert_clean(answer, w.secrets)
    reply = answer.json()
    assert reply["type"] == "batch-response"
    entries = reply["entry"]
    assert len(entries) == 7
    assert entries[0]["response"]["status"].startswith("403")
    assert entries[0]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert entries[1]["response"]["status"].startswith("404")
    assert entries[2]["response"]["status"].startswith("200")
    assert_only_a(entries[2]["resource"], w.a)
    assert entries[3]["response"]["status"].startswith("200")
    assert entries[3]["resource"]["id"] == w.a
    assert entries[4]["response"]["status"].startswith("404")
    assert "resource" not in entries[4]
    assert entries[5]["response"]["status"].startswith("403")
    assert_only_a(entries[6]["resource"], w.a)


async def test_batch_hidden_entry_looks_like_a_missing_one(w: World) -> None:
    """Decision 3 inside a batch: B's Observation and a nonexistent id must be answered alike.

    BUG: B's entry is rewritten to ``{"status": "404 Not Found"}`` while a nonexistent id keeps
    the upstream's ``outcome`` — the presence of ``outcome`` tells A that B's resource exists.
    """
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Observation/{w.b_obs}"}},
            {"request": {"method": "GET", "url": f"Observation/{MISSING_ID}"}},
        ],
    }
    answer = await call(w.gw, "POST", "", w.a_token, body=bundle)
    assert answer.status == 200, str(answer)
    assert_clean(answer, w.secrets)
    hidden, missing = (e["response"] for e in answer.json()["entry"])
    assert hidden["status"] == missing["status"]
    assert set(hidden) == set(missing), (hidden, missing)


async def test_batch_if_none_match_is_no_existence_oracle(w: World) -> None:
    """BUG: ``request.ifNoneMatch`` is passed on in batch entries; the upstream answers B's
    Observation with ``304 Not Modified`` and its ETag, no resource to verify, and the gateway
    relays it — A learns that B's Observation exists, and its version."""
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "request": {
                    "method": "GET",
                    "url": f"Observation/{w.b_obs}",
                    "ifNoneMatch": 'W/"1"',
                }
            },
        ],
    }
    answer = await call(w.gw, "POST", "", w.a_token, body=bundle)
    assert answer.status == 200, str(answer)
    assert_clean(answer, w.secrets)
    (entry,) = answer.json()["entry"]
    assert entry["response"]["status"].startswith("404"), entry


async def test_transaction_with_a_denied_entry_is_refused_whole(w: World) -> None:
    marker = f"tx-{uuid.uuid4().hex[:10]}"
    for denied in (
        {"request": {"method": "GET", "url": f"Observation?patient={w.b}"}},
        {"request": {"method": "GET", "url": f"Patient/{w.b}"}},
        {"request": {"method": "DELETE", "url": f"Observation/{w.b_obs}"}},
        {
            "resource": a_observation(w, w.b, marker),
            "request": {"method": "POST", "url": "Observation"},
        },
    ):
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                    "resource": a_observation(w, w.a, marker),
                    "request": {"method": "POST", "url": "Observation"},
                },
                denied,
            ],
        }
        answer = await call(w.gw, "POST", "", writer_token(w), body=bundle)
        assert answer.status in (403, 404), str(answer)
        if denied["request"]["method"] != "DELETE" and "Patient/" not in denied["request"]["url"]:
            assert answer.status == 403, str(answer)
        assert_clean(answer, w.secrets)
        assert await count_marker(w, marker) == 0
    answer = await call(w.gw, "GET", f"Observation/{w.b_obs}", w.clinician)
    assert answer.status == 200


# --------------------------------------------------------------------------- writes


async def test_create_for_b_is_refused_and_nothing_is_stored(w: World) -> None:
    marker = f"w-{uuid.uuid4().hex[:10]}"
    answer = await call(
        w.gw, "POST", "Observation", writer_token(w), body=a_observation(w, w.b, marker)
    )
    assert_outcome(answer, 403)
    assert_clean(answer, w.secrets)
    mixed = a_observation(w, w.a, marker)
    mixed["performer"] = [{"reference": f"Patient/{w.b}"}]
    answer = await call(w.gw, "POST", "Observation", writer_token(w), body=mixed)
    assert_outcome(answer, 403)
    assert await count_marker(w, marker) == 0


async def test_create_for_a_succeeds(w: World) -> None:
    marker = f"w-{uuid.uuid4().hex[:10]}"
    answer = await call(
        w.gw, "POST", "Observation", writer_token(w), body=a_observation(w, w.a, marker)
    )
    try:
        assert answer.status == 201, str(answer)
        assert_clean(answer, w.secrets)
        assert answer.headers["Location"].startswith(PUBLIC_BASE + "/Observation/")
    finally:
        created = answer.json() if answer.status == 201 else None
        if created:
            gone = await call(w.gw, "DELETE", f"Observation/{created['id']}", w.admin)
            assert gone.status in (200, 204)
    assert await count_marker(w, marker) == 0


async def test_writes_to_b_are_404_and_change_nothing(w: World) -> None:
    before = await call(w.gw, "GET", f"Observation/{w.b_obs}", w.clinician)
    assert before.status == 200
    stored = before.json()
    token = writer_token(w)

    changed = dict(stored, status="cancelled")
    answer = await call(w.gw, "PUT", f"Observation/{w.b_obs}", token, body=changed)
    assert_outcome(answer, 404)
    assert_clean(answer, w.secrets)

    moved = dict(stored, subject={"reference": f"Patient/{w.a}"})
    answer = await call(w.gw, "PUT", f"Observation/{w.b_obs}", token, body=moved)
    assert_outcome(answer, 404)

    patch = [{"op": "replace", "path": "/status", "value": "cancelled"}]
    answer = await call(
        w.gw,
        "PATCH",
        f"Observation/{w.b_obs}",
        token,
        body=patch,
        content_type="application/json-patch+json",
    )
    assert_outcome(answer, 404)
    assert_clean(answer, w.secrets)

    answer = await call(w.gw, "DELETE", f"Observation/{w.b_obs}", token)
    assert_outcome(answer, 404)
    assert_clean(answer, w.secrets)

    after = await call(w.gw, "GET", f"Observation/{w.b_obs}", w.clinician)
    assert after.status == 200
    assert after.raw == before.raw


async def test_write_404_is_the_same_as_for_a_missing_id(w: World) -> None:
    token = writer_token(w)
    hidden = await call(w.gw, "DELETE", f"Observation/{w.b_obs}", token)
    missing = await call(w.gw, "DELETE", f"Observation/{MISSING_ID}", token)
    assert hidden.status == missing.status == 404
    assert hidden.raw == missing.raw


# --------------------------------------------------------------------------- tokens and scopes


async def test_patient_scope_without_patient_context_grants_nothing(w: World) -> None:
    token = w.issuer.mint(scope="openid patient/*.rs", patient=None)
    for path in ("Observation", f"Observation?patient={w.b}", f"Patient/{w.b}", "Patient"):
        answer = await call(w.gw, "GET", path, token)
        assert answer.status in (401, 403), str(answer)
        assert answer.status == 403, str(answer)  # decision 9 (a valid token: 403)
        assert_clean(answer, w.secrets)


async def test_observation_only_scope_cannot_read_patient(w: World) -> None:
    token = w.issuer.mint(
        scope="launch/patient patient/Observation.rs", patient=w.a, fhirUser=f"Patient/{w.a}"
    )
    for path in (f"Patient/{w.a}", f"Patient/{w.b}", "Patient", "Condition"):
        answer = await call(w.gw, "GET", path, token)
        assert_outcome(answer, 403)
        challenge = answer.headers.get("WWW-Authenticate", "")
        assert 'error="insufficient_scope"' in challenge, challenge
        assert_clean(answer, w.secrets)
    answer = await call(w.gw, "GET", "Observation?_include=Observation:subject", token)
    assert answer.status == 200
    types = {e["resource"]["resourceType"] for e in answer.json().get("entry", [])}
    assert types == {"Observation"}


async def _a_obs_by_category(w: World) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for page in await all_pages(w, f"Observation?patient={w.a}&_count=200", w.clinician):
        for e in page.get("entry", []):
            for cat in e["resource"].get("category", []):
                for c in cat.get("coding", []):
                    if c.get("system") == CATEGORY:
                        out.setdefault(c["code"], set()).add(e["resource"]["id"])
    return out


async def test_granular_category_scope(w: World) -> None:
    by_cat = await _a_obs_by_category(w)
    assert by_cat.get("laboratory") and by_cat.get("vital-signs")
    token = w.issuer.mint(
        scope=f"launch/patient patient/Observation.rs?category={CATEGORY}|laboratory",
        patient=w.a,
        fhirUser=f"Patient/{w.a}",
    )
    seen: set[str] = set()
    for page in await all_pages(w, "Observation?_count=200", token):
        for res in assert_only_a(page, w.a):
            codes = {
                (c.get("system"), c.get("code"))
                for cat in res.get("category", [])
                for c in cat.get("coding", [])
            }
            assert (CATEGORY, "laboratory") in codes, res["id"]
            assert (CATEGORY, "vital-signs") not in codes, res["id"]
            seen.add(res["id"])
    assert seen and seen <= by_cat["laboratory"]
    assert not seen & by_cat["vital-signs"]
    vital = sorted(by_cat["vital-signs"] - by_cat["laboratory"])[0]
    answer = await call(w.gw, "GET", f"Observation/{vital}", token)
    assert_outcome(answer, 404)
    lab = sorted(by_cat["laboratory"])[0]
    answer = await call(w.gw, "GET", f"Observation/{lab}", token)
    assert answer.status == 200
    answer = await call(w.gw, "GET", f"Observation?category={CATEGORY}|vital-signs", token)
    assert answer.status == 200 and not answer.json().get("entry")
    answer = await call(w.gw, "GET", f"Observation/{w.b_obs}", token)
    assert_outcome(answer, 404)


# --------------------------------------------------------------------------- Binary


async def test_binary_of_b_is_not_searchable(w: World) -> None:
    """BUG: Binary is outside the Patient compartment, so a confined ``Binary`` search is
    neither narrowed nor checked against ``securityContext`` (only reads are)."""
    secret_text = f"B-binary-{uuid.uuid4().hex}"
    binary = {
        "resourceType": "Binary",
        "contentType": "text/plain",
        "securityContext": {"reference": f"Patient/{w.b}"},
        "data": base64.b64encode(secret_text.encode()).decode(),
    }
    created = await call(w.gw, "POST", "Binary", w.admin, body=binary)
    assert created.status == 201, str(created)
    bid = created.json()["id"]
    try:
        read = await call(w.gw, "GET", f"Binary/{bid}", w.a_token)
        assert_outcome(read, 404)
        for path in (f"Binary?_id={bid}", "Binary"):
            answer = await call(w.gw, "GET", path, w.a_token)
            assert_clean(answer, w.secrets)
            leaked = secret_text.encode() in answer.raw or binary["data"].encode() in answer.raw
            assert not leaked, f"B's Binary leaked: {answer}"
            assert bid not in answer.raw.decode(), f"B's Binary id leaked: {answer}"
    finally:
        await call(w.gw, "DELETE", f"Binary/{bid}", w.admin)
