"""The audit trail's records: exactly one per FHIR request, the one place that names patients.

The record (:class:`AuditRecord`) is built by the edge middleware in its ``finally``, once the
response is decided, from the request's :class:`~gateway.context.Exchange`: ``note_request``
and ``note_document`` fill the exchange on the way (what was asked, what the caller actually
got after verification), ``build_record`` turns it into the record. Logs and metrics never
name patients or resources.

Where records go: :mod:`gateway.ops.audit_sinks` (JSON lines; FHIR AuditEvent batches, whose
shape is :mod:`gateway.ops.audit_event`).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, fields
from typing import Any

from gateway.access.compartment import compartment_patients, patient_ref_id
from gateway.access.verify import Members, known_members
from gateway.context import Exchange

#: interactions whose audit action is "E" (execute) and whose named patients are noted
SEARCH_INTERACTIONS = frozenset({"search-type", "search-system", "search-compartment", "page"})
_PATIENT_PARAMS = frozenset({"patient", "subject", "_id"})


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """Who saw what, when, under which rule. Never the token: its SHA-256 fingerprint."""

    time: str
    request_id: str
    client_id: str | None
    subject: str | None
    fhir_user: str | None
    issuer: str | None
    token_fingerprint: str | None
    context_patient: str | None
    source_address: str
    method: str
    interaction: str | None
    resource_type: str | None
    route: str
    entities: tuple[str, ...]
    patients: tuple[str, ...]
    status: int
    reason: str | None
    policies: dict[str, dict[str, int]] = field(default_factory=dict)
    break_glass: bool = False
    break_glass_policies: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        # a shallow copy (asdict deep-copies every value: measurable on the hot path)
        out = {name: getattr(self, name) for name in _RECORD_FIELDS}
        out["policies"] = {k: dict(v) for k, v in self.policies.items()}
        out["entities"] = list(self.entities)
        out["patients"] = list(self.patients)
        out["break_glass_policies"] = list(self.break_glass_policies)
        return out


_RECORD_FIELDS = tuple(f.name for f in fields(AuditRecord))


_second: list[Any] = [-1, ""]  # the last whole second and its formatted prefix


def _now() -> str:
    t = time.time()
    whole = int(t)
    if whole != _second[0]:
        _second[:] = [whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))]
    return f"{_second[1]}.{int((t - whole) * 1000):03d}Z"


# --------------------------------------------------------------------------- recording


def note_request(ex: Exchange, req: Any) -> None:
    """What the client asked for (a ``FhirRequest``): interaction, type, named resources."""
    ex.interaction = str(req.interaction)
    ex.resource_type = req.compartment_type or req.resource_type
    if ex.resource_type == "*":
        ex.resource_type = req.resource_type
    if req.resource_type and req.id:
        ex.entities[f"{req.resource_type}/{req.id}"] = None
        if req.resource_type == "Patient":
            ex.patients.add(req.id)
    if ex.interaction in SEARCH_INTERACTIONS:  # the patients a search names (even a refused one)
        for name, value in req.params:
            base = name.partition(":")[0].partition(".")[0]
            if base not in _PATIENT_PARAMS or (base == "_id" and req.resource_type != "Patient"):
                continue
            for item in value.split(","):
                pid = item if base == "_id" else patient_ref_id(item)
                if pid is None and base == "patient" and "/" not in item:
                    pid = item
                if pid:
                    ex.patients.add(pid)


def note_document(
    ex: Exchange, doc: dict[str, Any], bases: tuple[str, ...] = (), memo: Members | None = None
) -> None:
    """The resources an answer carries after verification (what the client actually got);
    ``memo``: compartment members verification already computed."""
    if doc.get("resourceType") == "Bundle" and doc.get("type") in (
        "searchset",
        "history",
        "batch-response",
        "transaction-response",
    ):
        for entry in doc.get("entry") or ():
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(resource, dict):
                _note_resource(ex, resource, bases, memo)
    else:
        _note_resource(ex, doc, bases, memo)


def _note_resource(
    ex: Exchange, resource: dict[str, Any], bases: tuple[str, ...], memo: Members | None
) -> None:
    rtype, rid = resource.get("resourceType"), resource.get("id")
    if not isinstance(rtype, str) or rtype == "OperationOutcome":
        return
    if isinstance(rid, str):
        ex.entities[f"{rtype}/{rid}"] = None
    known, members = known_members(memo, resource)
    if known:
        ex.patients.update(members or ())
        return
    # malformed data: the ids already noted are what can be said
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        ex.patients.update(compartment_patients(resource, bases) or ())


def build_record(
    ex: Exchange, *, method: str, status: int, source_address: str, started: str | None = None
) -> AuditRecord:
    p = ex.principal
    tally = ex.policies
    policies: dict[str, dict[str, int]] = {}
    glass: tuple[str, ...] = ()
    if tally is not None:
        for pid in sorted(set(tally.withheld) | set(tally.redacted)):
            policies[pid] = {"withheld": tally.withheld[pid], "redacted": tally.redacted[pid]}
        glass = tuple(sorted(tally.break_glass))
    return AuditRecord(
        time=started or _now(),
        request_id=ex.request_id,
        client_id=getattr(p, "client_id", None),
        subject=getattr(p, "subject", None),
        fhir_user=getattr(p, "fhir_user", None),
        issuer=getattr(p, "issuer", None),
        token_fingerprint=getattr(p, "fingerprint", None),
        context_patient=getattr(p, "patient", None),
        source_address=source_address,
        method=method,
        interaction=ex.interaction,
        resource_type=ex.resource_type,
        route=ex.route,
        entities=tuple(ex.entities),
        patients=tuple(sorted(ex.patients)),
        status=status,
        reason=ex.reason,
        policies=policies,
        break_glass=bool(glass),
        break_glass_policies=glass,
    )
