"""What a patient-facing app may receive through the gateway: one list of assertions for
every e2e flow that launches with a patient in context (browser standalone, EHR launch,
Python app).

Each flow reduces what it received to :func:`summary` records (the browser page builds the
same shape in ``app/app.js``) and calls :func:`assert_patient_facing_view`, which knows the
launched patient's dataset summary (``PatientSummary``: its sensitive Condition ids and
preliminary lab ids, for the privacy-policy checks).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gateway.demo import PatientSummary

Summary = dict[str, Any]


def _codes(concepts: Any) -> list[str]:
    return [
        str(c.get("code"))
        for concept in concepts or []
        for c in (concept.get("coding") or [])
        if isinstance(c, dict)
    ]


def summary(resource: Mapping[str, Any]) -> Summary:
    """A resource as the app page reports it (``summarize`` in ``app/app.js``)."""
    meta = resource.get("meta") or {}
    subject = resource.get("subject") or {}
    code = resource.get("code")
    return {
        "resourceType": resource.get("resourceType"),
        "id": resource.get("id"),
        "subject": subject.get("reference"),
        "status": resource.get("status"),
        "category": _codes(resource.get("category")),
        "code": _codes([code] if code else []),
        "security": [str(s.get("code")) for s in meta.get("security") or []],
    }


def assert_patient_facing_view(patient: PatientSummary, received: Iterable[Summary]) -> None:
    """Everything a patient-context app received belongs to the launched patient.

    The expectations of the privacy policies (issue 6) go here too, against
    ``patient["sensitive_condition_ids"]``, ``patient["preliminary_observation_ids"]`` and
    ``patient["preliminary_report_ids"]``.
    """
    records = list(received)
    assert records, "the app received no data at all"
    mine = f"Patient/{patient['patient_id']}"
    for record in records:
        if record["resourceType"] == "Patient":
            assert record["id"] == patient["patient_id"], record
        else:
            assert record["subject"] == mine, record
    keys = [(r["resourceType"], r["id"]) for r in records]
    assert all(k[1] for k in keys), "a resource without an id"
    # the shipped privacy policies (issue 6): patient-facing apps never get these
    withheld = (
        {("Condition", i) for i in patient["sensitive_condition_ids"]}
        | {("Observation", i) for i in patient["preliminary_observation_ids"]}
        | {("DiagnosticReport", i) for i in patient["preliminary_report_ids"]}
    )
    assert not withheld & set(keys), "a resource withheld by a privacy policy was received"
    for record in records:
        assert "PSY" not in record.get("security", []), record
        if record["resourceType"] in ("Observation", "DiagnosticReport"):
            assert record.get("status") not in ("registered", "preliminary", "partial"), record
