"""Patient-compartment membership (decisions 10 and 11), pinned on realistic FHIR JSON."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

import pytest

from gateway.access.compartment import (
    COMPARTMENT_TYPES,
    compartment_patients,
    foreign_patient_refs,
    in_patient_compartment,
    is_compartment_type,
    patient_ref_id,
    strip_foreign_contained_patients,
    unverifiable_compartment_refs,
)
from gateway.fhir.tables import PATIENT_COMPARTMENT, RESOURCE_TYPES

PUBLIC = "https://gateway.example.org/fhir"
UPSTREAM = "http://upstream.internal:8080/fhir/"  # trailing slash on purpose
BASES = (PUBLIC, UPSTREAM)

A = "pat-a"
B = "pat-b"


def ref(target: str, **extra: Any) -> dict[str, Any]:
    return {"reference": target, **extra}


# --------------------------------------------------------------------------- patient_ref_id

REF_CASES = [
    ("Patient/123", "123"),
    ("Patient/a.b-C9", "a.b-C9"),
    ("Patient/" + "x" * 64, "x" * 64),
    ("Patient/123/_history/2", "123"),
    ("Patient/123/_history/v.2-a", "123"),
    (f"{PUBLIC}/Patient/123", "123"),
    (f"{PUBLIC}/Patient/123/_history/7", "123"),
    ("http://upstream.internal:8080/fhir/Patient/123", "123"),
    # everything below is not a provable Patient reference
    ("Patient/" + "x" * 65, None),
    ("Patient/", None),
    ("Patient", None),
    ("Patient/123/", None),
    ("Patient/123/_history", None),
    ("Patient/123/_history/", None),
    ("Patient/123/_history/2/extra", None),
    ("Patient/123/foo/2", None),
    ("Patient/12_3", None),
    ("Patient/12%33", None),
    ("Patient/123?x=1", None),
    ("Patient/123#frag", None),
    (" Patient/123", None),
    ("Patient/123 ", None),
    ("patient/123", None),
    ("Patient?identifier=http://hospital.example.org/mrn|123", None),
    ("#p1", None),
    ("urn:uuid:3f2504e0-4f89-11d3-9a0c-0305e82c3301", None),
    ("urn:oid:1.2.3.4", None),
    ("Practitioner/123", None),
    ("Group/123", None),
    ("RelatedPerson/123", None),
    ("https://evil.example.com/fhir/Patient/123", None),
    ("https://gateway.example.org/fhirX/Patient/123", None),
    ("https://gateway.example.org/Patient/123", None),
    (f"{PUBLIC}/Practitioner/123", None),
    (f"{PUBLIC}/other/Patient/123", None),
    (f"{PUBLIC}/Patient/123/", None),
    ("HTTPS://GATEWAY.EXAMPLE.ORG/fhir/Patient/123", None),  # exact comparison: fail closed
    ("//gateway.example.org/fhir/Patient/123", None),
    ("/fhir/Patient/123", None),
    ("", None),
]


@pytest.mark.parametrize(("reference", "expected"), REF_CASES)
def test_patient_ref_id(reference: str, expected: str | None) -> None:
    assert patient_ref_id(reference, BASES) == expected


def test_absolute_references_need_a_known_base() -> None:
    assert patient_ref_id(f"{PUBLIC}/Patient/123") is None
    assert patient_ref_id(f"{PUBLIC}/Patient/123", ("",)) is None
    assert patient_ref_id("https://x/Patient/1", ("https://x",)) == "1"
    assert patient_ref_id("https://x/Patient/1", ("https://x/",)) == "1"


# --------------------------------------------------------------------------- realistic resources

LAB = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "laboratory",
        }
    ]
}

OBSERVATION = {
    "resourceType": "Observation",
    "id": "obs-1",
    "meta": {"versionId": "3", "lastUpdated": "2024-01-02T03:04:05Z"},
    "status": "final",
    "category": [LAB],
    "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0", "display": "Glucose"}]},
    "subject": {"reference": f"Patient/{A}", "display": "Alice"},
    "effectiveDateTime": "2024-01-02T03:00:00Z",
    "valueQuantity": {
        "value": Decimal("5.50"),
        "unit": "mmol/L",
        "system": "http://unitsofmeasure.org",
    },
    "performer": [{"reference": "Practitioner/dr-1"}, {"reference": "Organization/lab"}],
}


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(base)
    out.update(changes)
    return out


MEMBERSHIP = [
    ("observation subject", OBSERVATION, {A}),
    (
        "observation subject absolute on public base",
        with_(OBSERVATION, subject=ref(f"{PUBLIC}/Patient/{A}")),
        {A},
    ),
    (
        "observation subject absolute on upstream base",
        with_(OBSERVATION, subject=ref(f"http://upstream.internal:8080/fhir/Patient/{A}")),
        {A},
    ),
    (
        "observation subject on unknown host",
        with_(OBSERVATION, subject=ref(f"https://evil.example.com/fhir/Patient/{A}")),
        set(),
    ),
    (
        "observation subject versioned",
        with_(OBSERVATION, subject=ref(f"Patient/{A}/_history/4")),
        {A},
    ),
    (
        "observation subject A, performer B: in both compartments",
        with_(OBSERVATION, performer=[ref("Practitioner/dr-1"), ref(f"Patient/{B}")]),
        {A, B},
    ),
    (
        "observation performer only",
        with_(OBSERVATION, subject=ref("Group/g1"), performer=[ref(f"Patient/{B}")]),
        {B},
    ),
    ("observation subject contained", with_(OBSERVATION, subject=ref("#p1")), set()),
    (
        "observation subject urn:uuid",
        with_(OBSERVATION, subject=ref("urn:uuid:3f2504e0-4f89-11d3-9a0c-0305e82c3301")),
        set(),
    ),
    (
        "observation subject identifier only",
        with_(
            OBSERVATION,
            subject={
                "type": "Patient",
                "identifier": {"system": "http://hospital.example.org/mrn", "value": "12345"},
            },
        ),
        set(),
    ),
    (
        "observation subject query form",
        with_(OBSERVATION, subject=ref("Patient?identifier=http://hospital.example.org/mrn|1")),
        set(),
    ),
    ("observation subject a Device", with_(OBSERVATION, subject=ref("Device/d1")), set()),
    ("observation without subject", {"resourceType": "Observation", "status": "final"}, set()),
    (
        "observation subject not an object",
        with_(OBSERVATION, subject=f"Patient/{A}"),
        set(),
    ),
    (
        "encounter subject",
        {"resourceType": "Encounter", "status": "finished", "subject": ref(f"Patient/{A}")},
        {A},
    ),
    (
        "condition subject (param patient) and asserter",
        {
            "resourceType": "Condition",
            "subject": ref(f"Patient/{A}"),
            "asserter": ref(f"Patient/{B}"),
        },
        {A, B},
    ),
    (
        "condition asserter practitioner",
        {
            "resourceType": "Condition",
            "subject": ref(f"Patient/{A}"),
            "asserter": ref("Practitioner/dr-1"),
        },
        {A},
    ),
    (
        "allergy patient/recorder/asserter",
        {
            "resourceType": "AllergyIntolerance",
            "patient": ref(f"Patient/{A}"),
            "recorder": ref("Practitioner/dr-1"),
            "asserter": ref(f"Patient/{A}"),
        },
        {A},
    ),
    (
        "allergy recorded by the patient about no one",
        {"resourceType": "AllergyIntolerance", "recorder": ref(f"Patient/{B}")},
        {B},
    ),
    (
        "diagnostic report subject",
        {
            "resourceType": "DiagnosticReport",
            "status": "final",
            "code": {"text": "CBC"},
            "subject": ref(f"Patient/{A}"),
            "result": [ref("Observation/obs-1")],
        },
        {A},
    ),
    (
        "medication request subject, medication reference is not a patient",
        {
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "medicationReference": ref("Medication/m1"),
            "subject": ref(f"Patient/{A}"),
            "requester": ref("Practitioner/dr-1"),
        },
        {A},
    ),
    (
        "immunization patient",
        {"resourceType": "Immunization", "status": "completed", "patient": ref(f"Patient/{A}")},
        {A},
    ),
    (
        "person link target",
        {
            "resourceType": "Person",
            "link": [
                {"target": ref("Practitioner/dr-1")},
                {"target": ref(f"Patient/{A}"), "assurance": "level3"},
            ],
        },
        {A},
    ),
    (
        "group member entity",
        {
            "resourceType": "Group",
            "type": "person",
            "actual": True,
            "member": [{"entity": ref(f"Patient/{A}")}, {"entity": ref(f"Patient/{B}")}],
        },
        {A, B},
    ),
    (
        "provenance target",
        {
            "resourceType": "Provenance",
            "target": [ref("Observation/obs-1"), ref(f"Patient/{A}/_history/1")],
            "recorded": "2024-01-02T03:04:05Z",
            "agent": [{"who": ref("Practitioner/dr-1")}],
        },
        {A},
    ),
    (
        "audit event agent who and entity what",
        {
            "resourceType": "AuditEvent",
            "agent": [{"who": ref(f"Patient/{A}"), "requestor": True}],
            "entity": [{"what": ref(f"Patient/{B}")}],
        },
        {A, B},
    ),
    (
        "account subject",
        {"resourceType": "Account", "status": "active", "subject": [ref(f"Patient/{A}")]},
        {A},
    ),
    (
        "care team participant member",
        {
            "resourceType": "CareTeam",
            "subject": ref("Group/g1"),
            "participant": [
                {"member": ref("Practitioner/dr-1")},
                {"member": ref(f"Patient/{A}")},
            ],
        },
        {A},
    ),
    (
        "care plan activity detail performer (list -> object -> list)",
        {
            "resourceType": "CarePlan",
            "activity": [
                {"detail": {"performer": [ref("Practitioner/dr-1")]}},
                {"detail": {"performer": [ref(f"Patient/{B}")]}},
            ],
        },
        {B},
    ),
    (
        "task for",
        {"resourceType": "Task", "status": "ready", "intent": "order", "for": ref(f"Patient/{A}")},
        {A},
    ),
    (
        "unknown resource type belongs to nobody",
        {"resourceType": "Spaceship", "subject": ref(f"Patient/{A}")},
        set(),
    ),
    ("missing resourceType belongs to nobody", {"subject": ref(f"Patient/{A}")}, set()),
    ("non-string resourceType", {"resourceType": 7, "subject": ref(f"Patient/{A}")}, set()),
]


@pytest.mark.parametrize(
    ("resource", "expected"),
    [pytest.param(r, e, id=name) for name, r, e in MEMBERSHIP],
)
def test_compartment_patients(resource: dict[str, Any], expected: set[str]) -> None:
    snapshot = copy.deepcopy(resource)
    assert compartment_patients(resource, BASES) == expected
    for pid in (A, B, "nobody"):
        assert in_patient_compartment(resource, pid, BASES) is (pid in expected)
    assert resource == snapshot  # pure


@pytest.mark.parametrize(
    "resource",
    [
        {"resourceType": "Medication", "id": "m1", "code": {"text": "aspirin"}},
        {"resourceType": "Practitioner", "id": "dr-1"},
        {"resourceType": "Organization", "id": "lab"},
        {"resourceType": "Location", "id": "ward", "managingOrganization": ref("Organization/x")},
        # listed without parameters in the CompartmentDefinition: never in the compartment
        {"resourceType": "Linkage", "item": [{"type": "source", "resource": ref(f"Patient/{A}")}]},
    ],
    ids=lambda r: r["resourceType"],
)
def test_types_outside_the_compartment(resource: dict[str, Any]) -> None:
    assert compartment_patients(resource, BASES) is None
    assert not is_compartment_type(resource["resourceType"])
    assert in_patient_compartment(resource, A, BASES) is False
    assert foreign_patient_refs(resource, A, BASES) == set()
    assert unverifiable_compartment_refs(resource, BASES) == []


# --------------------------------------------------------------------------- Patient (decision 11)


PATIENT_A = {
    "resourceType": "Patient",
    "id": A,
    "name": [{"family": "Smith", "given": ["Alice"]}],
    "link": [
        {"other": ref(f"Patient/{B}"), "type": "seealso"},
        {"other": ref("RelatedPerson/rp1"), "type": "seealso"},
    ],
}


def test_patient_belongs_only_to_itself() -> None:
    assert compartment_patients(PATIENT_A, BASES) == {A}
    assert in_patient_compartment(PATIENT_A, A, BASES)
    assert not in_patient_compartment(PATIENT_A, B, BASES)  # Patient.link does not widen access


def test_patient_foreign_refs_cover_link_and_own_id() -> None:
    assert foreign_patient_refs(PATIENT_A, A, BASES) == {B}
    assert foreign_patient_refs(PATIENT_A, B, BASES) == {A}
    assert foreign_patient_refs({"resourceType": "Patient", "id": A}, A) == set()


@pytest.mark.parametrize(
    "patient",
    [
        {"resourceType": "Patient"},
        {"resourceType": "Patient", "id": ""},
        {"resourceType": "Patient", "id": "a/b"},
        {"resourceType": "Patient", "id": 5},
        {"resourceType": "Patient", "id": "x" * 65},
    ],
)
def test_patient_without_a_valid_id_belongs_to_nobody(patient: dict[str, Any]) -> None:
    assert compartment_patients(patient, BASES) == set()


def test_patient_link_unverifiable_refs_are_reported() -> None:
    patient = with_(PATIENT_A, link=[{"other": ref("#p2")}])
    assert unverifiable_compartment_refs(patient, BASES) == ["link.other=#p2"]


# --------------------------------------------------------------------------- generated: every type


def _place(path: list[str], value: Any, *, lists: bool) -> Any:
    """Build the nested JSON that puts ``value`` at ``path`` (optionally a list at each level)."""
    node: Any = value
    for key in reversed(path):
        node = {key: [node] if lists else node}
    return node


def _merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    for key, value in other.items():
        if key in into and isinstance(into[key], dict) and isinstance(value, dict):
            _merge(into[key], value)
        elif key in into and isinstance(into[key], list) and isinstance(value, list):
            into[key].extend(value)
        else:
            into[key] = value


GENERATED = [
    pytest.param(rtype, param, path, lists, id=f"{rtype}.{param}:{path}{'[]' if lists else ''}")
    for rtype, params in sorted(PATIENT_COMPARTMENT.items())
    if rtype != "Patient"
    for param, paths in sorted(params.items())
    for path in paths
    for lists in (False, True)
]


@pytest.mark.parametrize(("rtype", "param", "path", "lists"), GENERATED)
def test_every_compartment_path_gives_membership(
    rtype: str, param: str, path: str, lists: bool
) -> None:
    def build(pid: str) -> dict[str, Any]:
        resource: dict[str, Any] = {"resourceType": rtype, "id": "r1"}
        _merge(resource, _place(path.split("."), ref(f"Patient/{pid}"), lists=lists))
        return resource

    mine = build(A)
    assert compartment_patients(mine, BASES) == {A}
    assert in_patient_compartment(mine, A, BASES)
    assert not in_patient_compartment(mine, B, BASES)
    assert foreign_patient_refs(mine, A, BASES) == set()
    assert unverifiable_compartment_refs(mine, BASES) == []

    other = build(B)
    assert not in_patient_compartment(other, A, BASES)
    assert in_patient_compartment(other, B, BASES)
    assert foreign_patient_refs(other, A, BASES) == {B}

    absolute = build(A)
    text = json.dumps(absolute).replace(f'"Patient/{A}"', f'"{PUBLIC}/Patient/{A}"')
    assert in_patient_compartment(json.loads(text), A, BASES)
    assert not in_patient_compartment(json.loads(text), A)  # base not known: not provable

    contained = json.loads(json.dumps(build(A)).replace(f'"Patient/{A}"', '"#p1"'))
    assert compartment_patients(contained, BASES) == set()
    assert unverifiable_compartment_refs(contained, BASES) == [f"{path}=#p1"]


@pytest.mark.parametrize("rtype", sorted(t for t in PATIENT_COMPARTMENT if t != "Patient"))
def test_every_compartment_type_all_paths_at_once(rtype: str) -> None:
    resource: dict[str, Any] = {"resourceType": rtype}
    paths = {p for ps in PATIENT_COMPARTMENT[rtype].values() for p in ps}
    for i, path in enumerate(sorted(paths)):
        _merge(resource, _place(path.split("."), ref(f"Patient/p{i}"), lists=True))
    assert compartment_patients(resource, BASES) == {f"p{i}" for i in range(len(paths))}
    assert foreign_patient_refs(resource, "p0", BASES) == {f"p{i}" for i in range(1, len(paths))}


def test_compartment_types_match_the_table() -> None:
    assert frozenset(PATIENT_COMPARTMENT) == COMPARTMENT_TYPES
    assert COMPARTMENT_TYPES <= RESOURCE_TYPES
    assert len(COMPARTMENT_TYPES) == 67
    for rtype, params in PATIENT_COMPARTMENT.items():
        if rtype != "Patient":
            assert params, rtype
            assert all(paths for paths in params.values()), rtype


# The table's freshness against the official definitions is checked by
# `scripts/generate_fhir_tables.py --check`, which `make test` runs.


# --------------------------------------------------------------------------- writes


def test_foreign_patient_refs() -> None:
    obs = with_(
        OBSERVATION,
        performer=[ref(f"Patient/{B}"), ref(f"{PUBLIC}/Patient/c"), ref("Practitioner/x")],
    )
    assert foreign_patient_refs(obs, A, BASES) == {B, "c"}
    assert foreign_patient_refs(obs, A) == {B}  # without bases the absolute one is unproven
    assert foreign_patient_refs(OBSERVATION, A, BASES) == set()


def test_unverifiable_compartment_refs() -> None:
    obs = with_(
        OBSERVATION,
        subject={"identifier": {"system": "http://hospital.example.org/mrn", "value": "1"}},
        performer=[
            ref("#p1"),
            ref("urn:uuid:3f2504e0-4f89-11d3-9a0c-0305e82c3301"),
            ref("Patient?identifier=x|1"),
            ref("https://evil.example.com/fhir/Patient/1"),
            ref("Spaceship/1"),
            ref("Practitioner/bad id"),
            {"reference": 5},
            "Patient/1",
            {"display": "Dr Who"},  # names no target: not listed
            ref("Practitioner/ok"),
            ref(f"{PUBLIC}/Organization/ok"),
            ref(f"Patient/{B}"),  # provable (and foreign: see foreign_patient_refs)
        ],
    )
    assert unverifiable_compartment_refs(obs, BASES) == [
        "subject=(identifier)",
        "performer=#p1",
        "performer=urn:uuid:3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        "performer=Patient?identifier=x|1",
        "performer=https://evil.example.com/fhir/Patient/1",
        "performer=Spaceship/1",
        "performer=Practitioner/bad id",
        "performer=(malformed)",
        "performer=(malformed)",
    ]
    assert unverifiable_compartment_refs(OBSERVATION, BASES) == []


# --------------------------------------------------------------------------- contained


def test_strip_contained_patients() -> None:
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "subject": ref(f"Patient/{A}"),
        "contained": [
            {"resourceType": "Patient", "id": "p1", "name": [{"family": "Other"}]},
            {"resourceType": "Patient", "id": A},  # local id: still not provably A
            {"resourceType": "Medication", "id": "m1"},
            {"resourceType": "Observation", "id": "o1", "subject": ref(f"Patient/{A}")},
            {"resourceType": "Observation", "id": "o2", "subject": ref(f"Patient/{B}")},
            {"resourceType": "Observation", "id": "o3", "status": "final"},
            "garbage",
        ],
    }
    assert strip_foreign_contained_patients(report, A, BASES) is True
    assert [c["id"] for c in report["contained"]] == ["m1", "o1", "o3"]
    assert strip_foreign_contained_patients(report, A, BASES) is False


def test_strip_removes_an_emptied_contained_array() -> None:
    obs = with_(OBSERVATION, contained=[{"resourceType": "Patient", "id": "p1"}])
    assert strip_foreign_contained_patients(obs, A) is True
    assert "contained" not in obs


@pytest.mark.parametrize("contained", [None, [], "x", {"resourceType": "Patient"}])
def test_strip_without_contained_list(contained: Any) -> None:
    obs = with_(OBSERVATION, contained=contained)
    assert strip_foreign_contained_patients(obs, A) is False
    assert obs["contained"] == contained
