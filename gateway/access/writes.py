"""Writes judged before they are stored: the new body, and for updates the stored version.

Pure functions over decoded JSON. For a confined caller (a patient context):

- create/update bodies of Patient-compartment types must reference the patient in context
  through their compartment paths, reference no other patient there, and carry no reference
  that cannot be verified (``#contained``, ``urn:uuid:`` outside a transaction, inline match
  URLs like ``Patient?identifier=...``, identifier-only references);
- a Patient may not be created, and an update may not change ``Patient.link``;
- an update may not remove a security label the stored version carries;
- JSON Patch is applied locally (``jsonpatch``) to the stored version and the result judged
  like an update body; FHIRPath Patch is refused.

Every caller: the body's ``resourceType`` must match the URL, and an update's ``id`` the URL id.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch

from gateway.access.authorize import Access
from gateway.access.compartment import (
    compartment_patients,
    foreign_patient_refs,
    unverifiable_compartment_refs,
)
from gateway.access.decision import Decision, deny
from gateway.fhir.references import reference_holders
from gateway.fhir.request import FhirRequest, Interaction


def check_body(
    access: Access,
    req: FhirRequest,
    body: Any,
    stored: dict[str, Any] | None,
    bases: tuple[str, ...],
) -> Decision | None:
    """None when the write may go ahead, else the denial."""
    if not isinstance(body, dict) or body.get("resourceType") != req.resource_type:
        return deny("write.type-mismatch", 400)
    if req.interaction is Interaction.UPDATE and req.id is not None and body.get("id") != req.id:
        return deny("write.id-mismatch", 400)
    pid = access.patient
    if pid is None:
        return None
    if req.resource_type == "Patient":
        if req.interaction is Interaction.CREATE:
            return deny("write.patient-create")
        if stored is not None and body.get("link") != stored.get("link"):
            return deny("write.patient-link")
        if stored is not None and body.get("identifier") != stored.get("identifier"):
            return deny("write.patient-identifier")  # an MRN names a patient: not the app's
    if stored is not None and _removed_labels(stored, body):
        return deny("write.security-label-removed")
    if unverifiable_compartment_refs(body, bases):
        return deny("write.unverifiable-reference")
    if has_conditional_reference(body):
        return deny("write.conditional-reference")
    if foreign_patient_refs(body, pid, bases):
        return deny("compartment.other-patient")
    members = compartment_patients(body, bases)
    if members is not None and pid not in members:
        return deny("compartment.not-referenced")
    return None


def has_conditional_reference(node: Any) -> bool:
    """True if any ``reference`` in the document (contained resources and extensions too) is a
    conditional reference, ``Type?criteria``.

    A server resolves it by searching across all patients (in a transaction): it can link the
    resource to another patient's record, and its 404/412 answers count their matches. The
    compartment-path check cannot see them outside the type's compartment paths (``focus``,
    ``derivedFrom``, ``basedOn`` ...), so a confined caller may send none at all.
    """
    return any("?" in holder["reference"] for holder in reference_holders(node))


def apply_patch(stored: dict[str, Any], patch: Any) -> dict[str, Any] | None:
    """The stored resource with a JSON Patch applied, or None if the patch does not apply."""
    if not isinstance(patch, list):
        return None
    try:
        result = jsonpatch.apply_patch(copy.deepcopy(stored), patch)
    except (
        jsonpatch.JsonPatchException,
        jsonpatch.JsonPointerException,
        TypeError,
        KeyError,
        ValueError,
        IndexError,
        RecursionError,  # a patch that nests the document too deeply to copy or judge
    ):
        return None
    return result if isinstance(result, dict) else None


def _labels(resource: dict[str, Any]) -> set[tuple[str, str]]:
    meta = resource.get("meta")
    security = meta.get("security") if isinstance(meta, dict) else None
    if not isinstance(security, list):
        return set()
    # canonical JSON text: a malformed (unhashable) system or code must not raise
    return {
        (json.dumps(c.get("system"), sort_keys=True), json.dumps(c.get("code"), sort_keys=True))
        for c in security
        if isinstance(c, dict)
    }


def _removed_labels(stored: dict[str, Any], body: dict[str, Any]) -> bool:
    return not _labels(stored) <= _labels(body)
