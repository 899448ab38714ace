"""The real-upstream launcher and its dataset: what later tests rely on is really there.

These talk to sekmet-fhir directly (no gateway): they pin the data the privacy-policy and
compartment tests build on, and the server behaviour (search, paging, _include) they assume.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from gateway.demo import DEMO_IDENTIFIER_SYSTEM, generate_dataset, http_get_json, port_is_free
from tests.support.sekmet import SEED, RealUpstream, real_upstream, start_loaded_upstream

__all__ = ["real_upstream"]  # the session fixture, imported for pytest

pytestmark = pytest.mark.real_upstream

PSY = ("http://terminology.hl7.org/CodeSystem/v3-ActCode", "PSY")
PRELIMINARY_LOINC = {"2823-3", "2160-0", "2345-7"}


def get(upstream: RealUpstream, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    return http_get_json(upstream.url(path) + query)


def post_search(url: str, **params: str) -> Any:
    request = urllib.request.Request(
        url,
        data=urllib.parse.urlencode(params).encode(),
        method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        return json.loads(response.read())


def ids(bundle: dict[str, Any], resource_type: str | None = None) -> list[str]:
    return [
        e["resource"]["id"]
        for e in bundle.get("entry", [])
        if resource_type is None or e["resource"]["resourceType"] == resource_type
    ]


def codes(concept: dict[str, Any]) -> set[tuple[str, str]]:
    return {(c.get("system"), c.get("code")) for c in concept.get("coding", [])}


def demo_values(resource: dict[str, Any]) -> list[str]:
    return [
        i["value"] for i in resource.get("identifier", []) if i["system"] == DEMO_IDENTIFIER_SYSTEM
    ]


def test_patients_have_distinct_ids_and_demo_identifiers(real_upstream: RealUpstream) -> None:
    assert len(real_upstream.patient_ids) == 3
    assert len(set(real_upstream.patient_ids)) == 3
    for n, pid in enumerate(real_upstream.patient_ids, start=1):
        patient = get(real_upstream, f"Patient/{pid}")
        assert patient["id"] == pid
        assert demo_values(patient) == [f"patient-{n}"]


@pytest.mark.parametrize("n", [1, 2])
def test_sensitive_condition_is_psy_labelled(real_upstream: RealUpstream, n: int) -> None:
    p = real_upstream.patient(n)
    [cid] = p["sensitive_condition_ids"]
    condition = get(real_upstream, f"Condition/{cid}")
    labels = {(s["system"], s["code"]) for s in condition["meta"]["security"]}
    assert PSY in labels
    assert ("http://snomed.info/sct", "35489007") in codes(condition["code"])
    assert condition["clinicalStatus"]["coding"][0]["code"] == "active"
    assert condition["subject"]["reference"] == f"Patient/{p['patient_id']}"
    assert demo_values(condition) == [f"sensitive-condition-{n}"]
    # The server finds it by label within the patient's compartment: policy tests rely on it.
    found = get(real_upstream, "Condition", patient=p["patient_id"], _security="|".join(PSY))
    assert ids(found) == [cid]
    # ...and the patient also has ordinary (unlabelled) Conditions next to it.
    all_conditions = ids(get(real_upstream, "Condition", patient=p["patient_id"]))
    assert cid in all_conditions
    assert len(all_conditions) > 1


@pytest.mark.parametrize("n", [1, 2])
def test_preliminary_labs_and_report_reference_the_patient(
    real_upstream: RealUpstream, n: int
) -> None:
    p = real_upstream.patient(n)
    subject = f"Patient/{p['patient_id']}"
    [rid] = p["preliminary_report_ids"]
    report = get(real_upstream, f"DiagnosticReport/{rid}")
    assert report["status"] == "preliminary"
    assert ("http://terminology.hl7.org/CodeSystem/v2-0074", "LAB") in codes(report["category"][0])
    assert report["subject"]["reference"] == subject
    assert demo_values(report) == [f"preliminary-report-{n}"]
    assert sorted(r["reference"] for r in report["result"]) == sorted(
        f"Observation/{oid}" for oid in p["preliminary_observation_ids"]
    )

    loinc = set()
    for oid in p["preliminary_observation_ids"]:
        obs = get(real_upstream, f"Observation/{oid}")
        assert obs["status"] == "preliminary"
        assert obs["subject"]["reference"] == subject
        assert codes(obs["category"][0]) == {
            ("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory")
        }
        loinc |= {code for system, code in codes(obs["code"]) if system == "http://loinc.org"}
    assert loinc == PRELIMINARY_LOINC

    # Searching by status finds exactly these; everything carebundle generated is final.
    preliminary = get(real_upstream, "Observation", patient=p["patient_id"], status="preliminary")
    assert sorted(ids(preliminary)) == sorted(p["preliminary_observation_ids"])
    final = get(real_upstream, "Observation", patient=p["patient_id"], status="final", _count="1")
    assert final["total"] >= 30


def test_report_include_returns_its_results(real_upstream: RealUpstream) -> None:
    p = real_upstream.patient(1)
    [rid] = p["preliminary_report_ids"]
    bundle = get(real_upstream, "DiagnosticReport", _id=rid, _include="DiagnosticReport:result")
    assert ids(bundle, "DiagnosticReport") == [rid]
    assert sorted(ids(bundle, "Observation")) == sorted(p["preliminary_observation_ids"])


def test_third_patient_has_no_special_resources(real_upstream: RealUpstream) -> None:
    p = real_upstream.patient(3)
    assert p["sensitive_condition_ids"] == []
    assert p["preliminary_observation_ids"] == []
    assert p["preliminary_report_ids"] == []
    pid = p["patient_id"]
    assert ids(get(real_upstream, "Condition", patient=pid, _security="|".join(PSY))) == []
    assert ids(get(real_upstream, "Observation", patient=pid, status="preliminary")) == []


def test_paging_links_point_at_the_upstream_base(real_upstream: RealUpstream) -> None:
    pid = real_upstream.patient(1)["patient_id"]
    page1 = get(real_upstream, "Observation", patient=pid, _count="5")
    links = {link["relation"]: link["url"] for link in page1["link"]}
    assert {"self", "next"} <= set(links)
    for url in links.values():
        assert url.startswith(f"{real_upstream.base_url}/Observation?")
    page2 = http_get_json(links["next"])
    assert len(ids(page1)) == len(ids(page2)) == 5
    assert not set(ids(page1)) & set(ids(page2))
    # POST _search pages too, and its links also use the upstream base.
    posted = post_search(real_upstream.url("Observation/_search"), patient=pid, _count="5")
    assert ids(posted) == ids(page1)
    next_url = next(link["url"] for link in posted["link"] if link["relation"] == "next")
    assert next_url.startswith(f"{real_upstream.base_url}/")
    # fullUrls are absolute on the upstream base as well.
    assert all(
        e["fullUrl"].startswith(f"{real_upstream.base_url}/Observation/") for e in page1["entry"]
    )


def test_dataset_is_deterministic_and_cached(tmp_path: Path, real_upstream: RealUpstream) -> None:
    session = real_upstream.bundles
    fresh = generate_dataset(tmp_path, patients=len(session), seed=SEED)
    assert [p.read_bytes() for p in fresh] == [p.read_bytes() for p in session]
    before = [p.stat().st_mtime_ns for p in fresh]
    again = generate_dataset(tmp_path, patients=len(session), seed=SEED)
    assert again == fresh
    assert [p.stat().st_mtime_ns for p in again] == before  # reused, not rewritten
    # FHIR decimals in the files keep their precision (1.40 stays 1.40).
    assert b'"value": 1.40' in fresh[0].read_bytes()


def test_launcher_stops_its_server(tmp_path: Path, real_upstream: RealUpstream) -> None:
    # Reuse the session's dataset so this costs only a server start.
    dataset_dir = real_upstream.bundles[0].parent
    upstream = start_loaded_upstream(tmp_path, dataset_dir=dataset_dir)
    try:
        assert upstream.process.poll() is None
        assert not port_is_free(upstream.port)
        assert upstream.patient_ids != real_upstream.patient_ids  # a fresh server, fresh ids
    finally:
        upstream.stop()
    assert upstream.process.returncode is not None
    assert port_is_free(upstream.port)
    upstream.stop()  # idempotent
