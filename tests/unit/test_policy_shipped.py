"""The shipped policies (decisions 15, 16) and the ``explain`` command."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ClaimNames
from gateway.policy.engine import PolicySet
from gateway.policy.explain import explain, format_explanation, run_explain
from gateway.policy.store import load_policy_set
from tests.unit.policy_helpers import (
    ACT,
    CLINICIAN,
    CONF,
    ICD,
    LAB,
    PATIENT,
    PLAIN_CLINICIAN,
    SCT,
    SHIPPED,
    coded,
    condition,
    view,
)

V2_LAB = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB"}]}


@pytest.fixture(scope="module")
def shipped() -> PolicySet:
    return load_policy_set([SHIPPED])


def labelled(system: str, code: str) -> dict[str, Any]:
    return condition(meta={"security": [{"system": system, "code": code}]})


SENSITIVE = [
    labelled(CONF, "R"),
    labelled(CONF, "V"),
    *(labelled(ACT, c) for c in ("ETH", "HIV", "PSY", "SDV", "SEX", "STD", "SUD", "BH")),
    condition(code=coded(SCT, "35489007")),  # depressive disorder
    condition(code=coded(SCT, "7200002")),  # alcoholism
    condition(code=coded(SCT, "86406008")),  # HIV infection
    condition(code=coded(SCT, "76272004")),  # syphilis
    condition(code=coded(ICD, "F33.1")),
    condition(code=coded(ICD, "F1020")),
    condition(code=coded(ICD, "B20")),
    condition(code=coded(ICD, "O03.9")),
]
ORDINARY = [
    labelled(CONF, "N"),
    condition(code=coded(SCT, "38341003")),  # hypertension
    condition(code=coded(ICD, "F17.210")),  # nicotine: deliberately not listed
    condition(code=coded(ICD, "I10")),
]


@pytest.mark.parametrize("resource", SENSITIVE)
def test_sensitive_conditions(shipped: PolicySet, resource: dict[str, Any]) -> None:
    assert shipped.evaluate(resource, PATIENT).withheld_by == ("sensitive-conditions",)
    representative = view("user", "RelatedPerson", roles=["sensitive-data-reader"])
    assert not shipped.evaluate(resource, representative).visible
    assert not shipped.evaluate(resource, PLAIN_CLINICIAN).visible
    assert not shipped.evaluate(resource, view("system", None)).visible
    assert shipped.evaluate(resource, CLINICIAN).visible


@pytest.mark.parametrize("resource", ORDINARY)
def test_ordinary_conditions_are_visible(shipped: PolicySet, resource: dict[str, Any]) -> None:
    assert shipped.evaluate(resource, PATIENT).visible


def test_break_the_glass(shipped: PolicySet) -> None:
    r = labelled(ACT, "PSY")
    btg = "http://terminology.hl7.org/CodeSystem/v3-ActReason|BTG"
    out = shipped.evaluate(r, view("user", "Practitioner", purpose_of_use=btg))
    assert out.visible and out.break_glass
    assert out.allowed_by == ("sensitive-conditions-break-the-glass",)
    assert shipped.evaluate(r, view("user", "Practitioner", purpose_of_use=["BTG"])).break_glass
    # a patient cannot break the glass, nor can a practitioner on patient scopes
    assert not shipped.evaluate(r, view("user", "Patient", purpose_of_use="BTG")).visible
    assert not shipped.evaluate(r, view("patient", "Practitioner", purpose_of_use="BTG")).visible
    # a reader with the role needs no exception: nothing to report
    assert shipped.evaluate(r, view("user", "Practitioner", roles=["sensitive-data-reader"],
                                    purpose_of_use="BTG")).allowed_by == ()  # fmt: skip


@pytest.mark.parametrize("rtype", ["Observation", "DiagnosticReport"])
@pytest.mark.parametrize("status", ["registered", "preliminary", "partial"])
@pytest.mark.parametrize("category", [LAB, V2_LAB])
def test_unreleased_labs(shipped: PolicySet, rtype: str, status: str, category: Any) -> None:
    r = {"resourceType": rtype, "status": status, "category": [category]}
    assert shipped.evaluate(r, PATIENT).withheld_by == ("unreleased-labs",)
    assert not shipped.evaluate(r, view("user", "Patient")).visible
    assert not shipped.evaluate(r, view("user", "RelatedPerson")).visible
    assert shipped.evaluate(r, PLAIN_CLINICIAN).visible
    assert shipped.evaluate(r, view("system", None)).visible


@pytest.mark.parametrize("status", ["final", "amended", "corrected"])
def test_released_labs_and_other_categories_are_visible(shipped: PolicySet, status: str) -> None:
    final = {"resourceType": "Observation", "status": status, "category": [LAB]}
    assert shipped.evaluate(final, PATIENT).visible
    vital = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                         "code": "vital-signs"}]}  # fmt: skip
    r = {"resourceType": "Observation", "status": "preliminary", "category": [vital]}
    assert shipped.evaluate(r, PATIENT).visible


def test_unreleased_labs_cannot_be_written_free(shipped: PolicySet) -> None:
    stored = {"resourceType": "Observation", "status": "preliminary", "category": [LAB]}
    assert shipped.write_escapes(stored, {**stored, "status": "final"}, PLAIN_CLINICIAN) == (
        "unreleased-labs",
    )
    sensitive = labelled(ACT, "HIV")
    assert shipped.write_escapes(sensitive, condition(), CLINICIAN) == ("sensitive-conditions",)


def test_explain_lists_every_policy_and_the_decision(shipped: PolicySet) -> None:
    text = format_explanation(explain(shipped, PATIENT, labelled(ACT, "HIV")))
    lines = text.splitlines()
    assert lines[0] == "resource type: Condition"
    assert lines[1] == (
        "principal: level=patient fhirUser type=Patient client_id=app patient-facing=yes"
    )
    assert lines[2] == "policies:"
    assert lines[3].startswith("  - sensitive-conditions [withhold] (")
    assert lines[3].endswith("sensitive-conditions.yaml:14:5): APPLIES")
    assert lines[4].endswith("does not apply: principal condition not met")
    assert lines[5] == "decision: WITHHELD by sensitive-conditions (a read answers 404)"


def test_run_explain_end_to_end(tmp_path: Path) -> None:
    claims = {
        "sub": "dr",
        "scope": "user/Condition.rs openid",
        "fhirUser": "Practitioner/7",
        "client_id": "ehr",
        "purpose_of_use": "BTG",
    }
    (tmp_path / "claims.json").write_text(json.dumps(claims))
    (tmp_path / "r.json").write_text(json.dumps(labelled(ACT, "SUD")))
    out = io.StringIO()
    claims_file, resource_file = tmp_path / "claims.json", tmp_path / "r.json"
    assert run_explain([SHIPPED], ClaimNames(), claims_file, resource_file, out=out) == 0
    text = out.getvalue()
    assert "principal: level=user fhirUser type=Practitioner client_id=ehr" in text
    assert "sensitive-conditions-break-the-glass [allow]" in text
    assert "APPLIES: exception granted (BREAK-THE-GLASS, audited)" in text
    assert text.rstrip().endswith(
        "decision: VISIBLE; exceptions: sensitive-conditions-break-the-glass; "
        "break-the-glass access (audited)"
    )


def test_run_explain_reports_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("policies: [{id: x}]\n")
    out = io.StringIO()
    assert run_explain([bad], ClaimNames(), "c.json", "r.json", out=out) == 2
    assert f"{bad}:1:12: policy: 'description' is required" in out.getvalue()
    (tmp_path / "claims.json").write_text(json.dumps({"sub": "x"}))  # no scope claim
    (tmp_path / "r.json").write_text("{}")
    out = io.StringIO()
    claims_file, resource_file = tmp_path / "claims.json", tmp_path / "r.json"
    assert run_explain([SHIPPED], ClaimNames(), claims_file, resource_file, out=out) == 2
    assert "would be refused" in out.getvalue()
