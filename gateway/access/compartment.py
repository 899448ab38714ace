"""Patient-compartment membership of FHIR resources, as pure functions over decoded JSON.

Membership follows the official R4 Patient CompartmentDefinition (decision 10): a resource of a
compartment type belongs to patient P when ANY of its type's compartment parameters references
``Patient/P``. The element paths come from ``PATIENT_COMPARTMENT`` (generated from the search
parameter definitions) and are compiled once per type at import.

Rules the gateway relies on (the tests pin each of them):

- **Only provable references count.** A reference is a Patient reference only in the forms
  ``Patient/{id}``, ``Patient/{id}/_history/{v}`` and ``{base}/Patient/{id}[/_history/{v}]``
  where ``{base}`` is one of the known bases passed in (the gateway's public base and the
  upstream base), compared exactly (scheme and host case included). Contained (``#p1``),
  ``urn:uuid:``/``urn:oid:``, query-form (``Patient?identifier=...``), identifier-only and
  foreign-host references never make a resource a member of anyone's compartment: a resource
  whose only patient link is one of those is hidden from patient-context callers (fail closed).
- **Any parameter is enough.** An Observation with ``subject`` A and ``performer`` B is in both
  A's and B's compartment, so both may see it: that is the specification's semantics and the
  gateway does not narrow it. Note that such resources reveal the other patient's id (for
  example ``Group.member``, ``CareTeam.participant``, ``Appointment.participant``); privacy
  policies are the place to narrow that further.
- **A Patient belongs only to itself** (decision 11). The CompartmentDefinition lists
  ``Patient.link`` (``link.other``), but following it would let a linked record widen access,
  so membership of a Patient is its own ``id`` and nothing else. ``link.other`` references are
  still reported by :func:`foreign_patient_refs` and :func:`unverifiable_compartment_refs`,
  so writes cannot link to another patient.
- **Unknown types fail closed.** A resource without a ``resourceType`` string, or with a type
  that is not an R4 resource type, is treated as a compartment type that belongs to nobody
  (empty set), never as "outside the compartment" (which would make it readable, decision 10).
"""

from __future__ import annotations

import functools
import re
from typing import Any

from gateway.fhir.references import reference_holders
from gateway.fhir.tables import PATIENT_COMPARTMENT, RESOURCE_TYPES

__all__ = [
    "COMPARTMENT_TYPES",
    "compartment_patients",
    "foreign_patient_refs",
    "in_patient_compartment",
    "is_compartment_type",
    "patient_ref_id",
    "strip_foreign_contained_patients",
    "unverifiable_compartment_refs",
    "values_at",
]

_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_id_ok = _ID.fullmatch
_PATIENT_PREFIX = "Patient/"

Path = tuple[str, ...]


def _compile() -> dict[str, tuple[tuple[str, Path], ...]]:
    """type -> ((dotted path, split path), ...), every distinct path of every parameter."""
    out: dict[str, tuple[tuple[str, Path], ...]] = {}
    for rtype, params in PATIENT_COMPARTMENT.items():
        seen: dict[str, Path] = {}
        for paths in params.values():
            for dotted in paths:
                seen.setdefault(dotted, tuple(dotted.split(".")))
        out[rtype] = tuple(seen.items())
    return out


_PATHS = _compile()
#: Types that are in the Patient compartment (the others are outside it: decision 10).
COMPARTMENT_TYPES: frozenset[str] = frozenset(_PATHS)


def is_compartment_type(resource_type: str) -> bool:
    """True if resources of this type can belong to a Patient compartment."""
    return resource_type in COMPARTMENT_TYPES


# ------------------------------------------------------------------------------ references


def _split_id(rest: str) -> str | None:
    """``{id}`` or ``{id}/_history/{v}`` -> id, else None."""
    if "/" not in rest:
        return rest if _id_ok(rest) else None
    parts = rest.split("/")
    if len(parts) == 3 and parts[1] == "_history" and _id_ok(parts[0]) and _id_ok(parts[2]):
        return parts[0]
    return None


def _relative(reference: str, bases: tuple[str, ...]) -> str | None:
    """The relative part (``Type/id...``) of a local or known-base reference, else None."""
    if "://" not in reference:
        return reference
    for base in bases:
        if base.endswith("/"):
            base = base[:-1]
        if base and reference.startswith(base) and reference[len(base) : len(base) + 1] == "/":
            return reference[len(base) + 1 :]
    return None


def patient_ref_id(reference: object, bases: tuple[str, ...] = ()) -> str | None:
    """The Patient id ``reference`` points to, or None if it is not a provable Patient reference.

    Accepted: ``Patient/{id}``, ``Patient/{id}/_history/{v}``, and the same after one of the
    known ``bases`` (``https://fhir.example.org/r4/Patient/{id}``). Ids and versions must match
    ``[A-Za-z0-9\\-.]{1,64}``. Everything else is None: ``#contained``, ``urn:uuid:``,
    other types, other hosts, query form, percent-encoding, trailing slashes, whitespace.
    """
    if not isinstance(reference, str):
        return None
    return _patient_ref_id(reference, bases)


@functools.lru_cache(maxsize=16_384)  # a Bundle repeats the same few references many times
def _patient_ref_id(reference: str, bases: tuple[str, ...]) -> str | None:
    if reference.startswith(_PATIENT_PREFIX):
        return _split_id(reference[8:])
    rel = _relative(reference, bases) if "://" in reference else None
    if rel is None or not rel.startswith(_PATIENT_PREFIX):
        return None
    return _split_id(rel[8:])


def _is_resolvable(reference: str, bases: tuple[str, ...]) -> bool:
    """True for ``Type/id[/_history/v]`` (R4 type) locally or on a known base."""
    rel = _relative(reference, bases)
    if rel is None:
        return False
    rtype, sep, rest = rel.partition("/")
    return bool(sep) and rtype in RESOURCE_TYPES and _split_id(rest) is not None


# ------------------------------------------------------------------------------ path walking


def values_at(resource: dict[str, Any], path: Path) -> list[Any]:
    """Every value at ``path``, flattening lists at each step (non-objects are skipped)."""
    if len(path) == 1:  # the common case: `subject`, `patient`, `category`
        value = resource.get(path[0])
        if value is None:
            return []
        return value if isinstance(value, list) else [value]
    current: list[Any] = [resource]
    for key in path:
        found: list[Any] = []
        for node in current:
            if isinstance(node, dict):
                value = node.get(key)
                if value is None:
                    continue
                if isinstance(value, list):
                    found.extend(value)
                else:
                    found.append(value)
        if not found:
            return found
        current = found
    return current


def _resource_paths(resource: dict[str, Any]) -> tuple[tuple[str, Path], ...] | None:
    """The compiled paths of the resource's type; () for unknown types, None for non-members."""
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or rtype not in RESOURCE_TYPES:
        return ()  # unknown: a compartment type that belongs to nobody
    return _PATHS.get(rtype)


def _own_patient_id(resource: dict[str, Any]) -> str | None:
    rid = resource.get("id")
    return rid if isinstance(rid, str) and _id_ok(rid) else None


# ------------------------------------------------------------------------------ public API


def compartment_patients(resource: dict[str, Any], bases: tuple[str, ...] = ()) -> set[str] | None:
    """Ids of the patients whose compartment ``resource`` is in; None if its type is outside.

    A Patient is in its own compartment only (``Patient.link`` is not followed: decision 11).
    A resource without a valid ``resourceType`` is in nobody's compartment (empty set).
    """
    rtype = resource.get("resourceType")
    if rtype == "Patient":
        own = _own_patient_id(resource)
        return {own} if own is not None else set()
    paths = _resource_paths(resource)
    if paths is None:
        return None
    ids: set[str] = set()
    for _, path in paths:
        for ref in values_at(resource, path):
            if isinstance(ref, dict):
                text = ref.get("reference")
                if isinstance(text, str):
                    pid = patient_ref_id(text, bases)
                    if pid is not None:
                        ids.add(pid)
    return ids


def in_patient_compartment(
    resource: dict[str, Any], patient_id: str, bases: tuple[str, ...] = ()
) -> bool:
    """True iff ``resource`` is in ``patient_id``'s compartment.

    False for types outside the compartment as well: callers decide about those with
    :func:`is_compartment_type` (they are readable when a scope grants the type, decision 10).
    """
    patients = compartment_patients(resource, bases)
    return patients is not None and patient_id in patients


def foreign_patient_refs(
    resource: dict[str, Any], patient_id: str, bases: tuple[str, ...] = ()
) -> set[str]:
    """Ids of every other patient referenced through the compartment paths (for write checks).

    For a Patient this covers ``link.other`` and the resource's own ``id`` when it is not
    ``patient_id``. Types outside the compartment give an empty set.
    """
    paths = _resource_paths(resource)
    foreign: set[str] = set()
    if resource.get("resourceType") == "Patient":
        own = resource.get("id")
        if isinstance(own, str) and own != patient_id:
            foreign.add(own)
    if not paths:
        return foreign
    for _, path in paths:
        for ref in values_at(resource, path):
            if isinstance(ref, dict):
                text = ref.get("reference")
                if isinstance(text, str):
                    pid = patient_ref_id(text, bases)
                    if pid is not None and pid != patient_id:
                        foreign.add(pid)
    return foreign


def unverifiable_compartment_refs(
    resource: dict[str, Any], bases: tuple[str, ...] = ()
) -> list[str]:
    """Compartment-path references whose target cannot be proven (for write checks).

    Each entry is ``"{element path}={reference}"``; ``"{path}=(identifier)"`` for a logical
    reference without ``reference`` and ``"{path}=(malformed)"`` for a value that is not a
    Reference object or whose ``reference`` is not a string. Unverifiable: contained ``#x``,
    ``urn:`` references, query form, absolute URLs on unknown hosts, malformed ids, unknown types.
    Display-only references (no ``reference``, no ``identifier``) name no target and are not
    listed. The entries may contain PHI (query-form references): never log them.
    """
    paths = _resource_paths(resource)
    if not paths:
        return []
    bad: list[str] = []
    for dotted, path in paths:
        for ref in values_at(resource, path):
            if not isinstance(ref, dict):
                bad.append(f"{dotted}=(malformed)")
                continue
            text = ref.get("reference")
            if text is None:
                if ref.get("identifier") is not None:
                    bad.append(f"{dotted}=(identifier)")
            elif not isinstance(text, str):
                bad.append(f"{dotted}=(malformed)")
            elif not _is_resolvable(text, bases):
                bad.append(f"{dotted}={text}")
    return bad


def strip_foreign_contained_patients(
    resource: dict[str, Any], patient_id: str, bases: tuple[str, ...] = ()
) -> bool:
    """Remove contained resources that could disclose another patient; True if any was removed.

    - every contained ``Patient`` is removed: its id is local to the container, so it can never
      be proven to be ``patient_id`` (the real Patient is read as ``Patient/{id}``);
    - a contained resource of a compartment type that references another patient through its
      compartment paths (:func:`foreign_patient_refs`) is removed too.

    Other contained resources (Medication, Practitioner, an Observation without a patient
    reference) stay: they share the container's compartment. ``contained`` is deleted when it
    becomes empty (an empty array is not valid FHIR JSON). The resource is changed in place.
    """
    contained = resource.get("contained")
    if not isinstance(contained, list) or not contained:
        return False
    kept = [
        item
        for item in contained
        if isinstance(item, dict)
        and item.get("resourceType") != "Patient"
        and not foreign_patient_refs(item, patient_id, bases)
    ]
    if len(kept) == len(contained):
        return False
    if kept:
        resource["contained"] = kept
    else:
        del resource["contained"]
    return True


def names_other_patient(
    resource: dict[str, Any], patient_id: str, bases: tuple[str, ...] = ()
) -> bool:
    """True if any reference anywhere in ``resource`` is a Patient other than ``patient_id``.

    For types outside the Patient compartment (Device, Linkage, GuidanceResponse...), which a
    confined caller may otherwise read: one that names another patient is that patient's data.
    """
    return any(
        (pid := patient_ref_id(holder["reference"], bases)) is not None and pid != patient_id
        for holder in reference_holders(resource)
    )
