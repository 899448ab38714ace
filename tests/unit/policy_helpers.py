"""Helpers shared by the policy unit tests."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from gateway.policy.compile import compile_files
from gateway.policy.engine import PolicySet, PrincipalView
from gateway.policy.model import parse_file

SHIPPED = Path(__file__).resolve().parents[2] / "policies"
CONF = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
SCT = "http://snomed.info/sct"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
LAB = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                   "code": "laboratory"}]}  # fmt: skip


def policies(text: str, file: str = "test.yaml") -> PolicySet:
    return compile_files([parse_file(textwrap.dedent(text), file)])


def view(
    level: str | None = "user",
    fhir_user_type: str | None = "Practitioner",
    client_id: str | None = "app",
    **claims: Any,
) -> PrincipalView:
    return PrincipalView(level, fhir_user_type, client_id, "sub", None, claims)  # type: ignore[arg-type]


PATIENT = view("patient", "Patient")
CLINICIAN = view("user", "Practitioner", roles=["sensitive-data-reader"])
PLAIN_CLINICIAN = view("user", "Practitioner")


def condition(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "Condition", "id": "c1", **extra}


def coded(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}
