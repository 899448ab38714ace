"""FHIR R4 ``AuditEvent`` for one audit record, in the shape of the IHE Basic Audit Log
Patterns (BALP) RESTful activity: type ``rest``, subtype the FHIR interaction, agents for the
user and the client app, entities for the patient(s), the data and the request id.
"""

from __future__ import annotations

from typing import Any

from gateway.ops.audit import SEARCH_INTERACTIONS, AuditRecord

OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
BALP_ENTITY_TYPE = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
_ACTIONS = {
    "create": "C",
    "read": "R",
    "vread": "R",
    "update": "U",
    "patch": "U",
    "delete": "D",
    "history-instance": "R",
    "history-type": "R",
    "history-system": "R",
    "capabilities": "R",
    "smart-discovery": "R",
}


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def _outcome(status: int) -> str:
    if status < 400:
        return "0"  # success
    return "4" if status < 500 else "8"  # minor failure / serious failure


def audit_event(record: AuditRecord, source_id: str) -> dict[str, Any]:
    """An R4 AuditEvent for one record (IHE BALP RESTful-activity shape)."""
    interaction = record.interaction or "unknown"
    action = "E" if interaction in SEARCH_INTERACTIONS else _ACTIONS.get(interaction, "E")
    user: dict[str, Any] = {
        "type": {
            "coding": [
                _coding(
                    "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                    "IRCP",
                    "information recipient",
                )
            ]
        },
        "requestor": True,
        "network": {"address": record.source_address, "type": "2"},
    }
    if record.fhir_user:
        user["who"] = {"reference": record.fhir_user}
    elif record.subject:
        user["who"] = {"identifier": {"system": record.issuer, "value": record.subject}}
    else:
        user["who"] = {"display": "anonymous"}
    agents = [user]
    if record.client_id:
        agents.append(
            {
                "type": {
                    "coding": [
                        _coding(
                            "http://dicom.nema.org/resources/ontology/DCM", "110150", "Application"
                        )
                    ]
                },
                "who": {"identifier": {"system": record.issuer, "value": record.client_id}},
                "requestor": False,
            }
        )
    entities: list[dict[str, Any]] = [
        {
            "what": {"identifier": {"value": record.request_id}},
            "type": _coding(BALP_ENTITY_TYPE, "XrequestId"),
        }
    ]
    for pid in record.patients:
        entities.append(
            {
                "what": {"reference": f"Patient/{pid}"},
                "type": _coding(
                    "http://terminology.hl7.org/CodeSystem/audit-entity-type", "1", "Person"
                ),
                "role": _coding(OBJECT_ROLE, "1", "Patient"),
            }
        )
    for ref in record.entities:
        if ref.startswith("Patient/") and ref[8:] in record.patients:
            continue
        entities.append(
            {
                "what": {"reference": ref},
                "type": _coding(
                    "http://terminology.hl7.org/CodeSystem/audit-entity-type", "2", "System Object"
                ),
                "role": _coding(OBJECT_ROLE, "4", "Domain Resource"),
            }
        )
    for pid, counts in record.policies.items():
        entities.append(
            {
                "what": {"identifier": {"value": pid}},
                "type": _coding(BALP_ENTITY_TYPE, "PolicyId"),
                "detail": [
                    {"type": name, "valueString": str(n)} for name, n in counts.items() if n
                ],
            }
        )
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": _coding(
            "http://terminology.hl7.org/CodeSystem/audit-event-type", "rest", "Restful Operation"
        ),
        "subtype": [_coding("http://hl7.org/fhir/restful-interaction", interaction)],
        "action": action,
        "recorded": record.time,
        "outcome": _outcome(record.status),
        "outcomeDesc": f"{record.status} {record.reason or 'ok'}",
        "agent": agents,
        "source": {
            "observer": {"display": source_id},
            "type": [
                _coding(
                    "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "4",
                    "Application Server",
                )
            ],
        },
        "entity": entities,
    }
    if record.break_glass:
        event["purposeOfEvent"] = [
            {
                "coding": [
                    _coding(
                        "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                        "BTG",
                        "break the glass",
                    )
                ],
                "text": "break-the-glass: " + ", ".join(record.break_glass_policies),
            }
        ]
    return event
