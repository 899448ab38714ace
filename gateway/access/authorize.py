"""``authorize()``: SMART scopes x interaction x patient compartment, as a pure function.

Inputs are plain data (``Access``: parsed scopes and the patient in context; ``FhirRequest``);
the output is a ``Decision``. No I/O, no clock: every rule here is tested with tables.

Rules (SMART App Launch 2.x; decisions 2-12 in the design notes):

- Interaction -> permission: ``r`` read, vread, instance history; ``s`` searches and type
  history; ``c`` create; ``u`` update and patch; ``d`` delete. A type the scopes do not grant
  -> 403 ``insufficient_scope`` before anything is sent upstream.
- Patient context (``Access.patient``): every level is confined to that patient's compartment.
  Without one, ``patient/`` scopes grant nothing (decision 9).
- Confined searches: the client may name only the patient in context in compartment/patient
  parameters (else 403); oracle parameters (``_has``, chains, ``_filter``, ...) are refused;
  the gateway adds one typed narrowing constraint (``Verify.narrowing``: the answer must prove
  the upstream applied it, the narrowing proof); every returned resource is verified.
- Reads of ``Patient/{other}`` -> 404 (no existence oracle); other types are fetched and
  verified (404 when outside the compartment).
- Operations: only an allow-list (``Patient/{id}/$everything``, ``Observation/$lastn``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gateway.access.decision import Decision, Prefetch, Verify, deny
from gateway.fhir.params import SearchParam, parse_params
from gateway.fhir.request import FhirRequest, Interaction
from gateway.fhir.tables import PATIENT_COMPARTMENT, SEARCH_PARAMS
from gateway.fhir.target import Param
from gateway.smart.scopes import Level, Scope, ScopeSet

PERMISSION: dict[Interaction, str] = {
    Interaction.READ: "r",
    Interaction.VREAD: "r",
    Interaction.HISTORY_INSTANCE: "r",
    Interaction.SEARCH_TYPE: "s",
    Interaction.SEARCH_SYSTEM: "s",
    Interaction.SEARCH_COMPARTMENT: "s",
    Interaction.HISTORY_TYPE: "s",
    Interaction.HISTORY_SYSTEM: "s",
    Interaction.CREATE: "c",
    Interaction.UPDATE: "u",
    Interaction.PATCH: "u",
    Interaction.DELETE: "d",
}

#: joins that can act as oracles on data a confined caller cannot see (decision 12)
CONFINED_FORBIDDEN = frozenset(
    {"_has", "_filter", "_query", "_list", "_contained", "_containedType", "_content", "_text"}
)
#: result parameters the gateway does not let hide the elements verification needs
STRIPPED_WHEN_VERIFYING = frozenset({"_elements", "_summary"})
#: operations allowed at all: (resource type, name, level of the call)
OPERATIONS = frozenset({("Patient", "$everything", "instance"), ("Observation", "$lastn", "type")})
ALL_LEVELS: tuple[Level, ...] = ("patient", "user", "system")
UNCONFINED_LEVELS: tuple[Level, ...] = ("user", "system")


@dataclass(frozen=True, slots=True)
class Access:
    """The caller in access terms: which scope levels count, and whom they are confined to.

    ``patient`` set: every request is confined to that patient's compartment. ``levels``: the
    scope levels that grant access under this confinement (decision 8: ``patient/`` scopes
    need a patient context; a Patient or RelatedPerson user's ``user/`` scopes are confined
    too; clinicians' ``user/`` and ``system/`` scopes are not).
    """

    scopes: ScopeSet
    patient: str | None = None
    levels: tuple[Level, ...] = UNCONFINED_LEVELS

    def plain(self, rtype: str, perm: str) -> bool:
        return any(self.scopes.plain(level, rtype, perm) for level in self.levels)

    def granular(self, rtype: str, perm: str) -> tuple[Scope, ...]:
        return tuple(s for lv in self.levels for s in self.scopes.granular(lv, rtype, perm))

    def grants(self, rtype: str, perm: str) -> bool:
        return self.plain(rtype, perm) or bool(self.granular(rtype, perm))

    def verify(self, permissions: frozenset[str] = frozenset({"r", "s"})) -> Verify:
        return Verify(self.scopes, self.levels, self.patient, permissions)


def required_scope(access: Access, rtype: str, perm: str) -> str:
    level = "patient" if access.patient is not None else "user"
    return f"{level}/{rtype}.{perm}"


def authorize_any(accesses: tuple[Access, ...], req: FhirRequest) -> tuple[Decision, Access]:
    """The first view of the caller that allows the request (an unconfined view is listed
    first), with that view. Otherwise the denial of the first view whose scopes cover the
    type (its reason is the real one: another patient, a refused parameter), else the first.
    """
    assert accesses
    denials: list[tuple[Decision, Access]] = []
    for access in accesses:
        decision = authorize(access, req)
        if decision.allowed:
            return decision, access
        denials.append((decision, access))
    relevant = [d for d in denials if d[0].reason not in ("scope.missing", "scope.none")]
    return (relevant or denials)[0]


def authorize(access: Access, req: FhirRequest) -> Decision:
    """Decide one (non-bundle) request. Batch/transaction entries come here one by one."""
    i = req.interaction
    if i in (Interaction.CAPABILITIES, Interaction.DISCOVERY):
        return Decision(True, "public", params=req.params)
    if not access.scopes.scopes:
        return deny("scope.none")
    if i in (
        Interaction.OPERATION_SYSTEM,
        Interaction.OPERATION_TYPE,
        Interaction.OPERATION_INSTANCE,
    ):
        return _operation(access, req)
    if i is Interaction.BATCH:
        return deny("bundle.needs-body", 400)
    if i is Interaction.PAGE:
        return deny("page.not-here", 400)  # a cursor is opened by the handler, never here
    perm = PERMISSION[i]
    if i is Interaction.HISTORY_SYSTEM or i is Interaction.SEARCH_SYSTEM:
        return _system_level(access, req, perm)
    if i is Interaction.SEARCH_COMPARTMENT:
        return _compartment_search(access, req)
    rtype = req.resource_type
    assert rtype is not None
    if not access.grants(rtype, perm):
        return deny("scope.missing", 403, required_scope(access, rtype, perm))
    if i is Interaction.SEARCH_TYPE:
        return _search(access, req, rtype)
    if i is Interaction.HISTORY_TYPE:
        if access.patient is not None:
            return deny("interaction.history-type")
        return Decision(
            True,
            "allowed",
            params=req.params,
            verify=access.verify(),
            suppress_total=not access.plain(rtype, perm),
        )
    if i in (Interaction.READ, Interaction.VREAD, Interaction.HISTORY_INSTANCE):
        return _read(access, req, rtype)
    return _write(access, req, rtype)


def _read(access: Access, req: FhirRequest, rtype: str) -> Decision:
    pid = access.patient
    if pid is not None and rtype == "Patient" and req.id != pid:
        return deny("compartment.other-patient", 404)
    prefetch = Prefetch.BINARY_SECURITY_CONTEXT if pid and rtype == "Binary" else None
    return Decision(
        True,
        "allowed",
        params=_result_params(req.params),
        verify=access.verify(),
        prefetch=prefetch,
        whole=req.interaction is Interaction.HISTORY_INSTANCE,
    )


#: a write's answer shows what the caller just wrote (its body was judged before storage)
WRITE_ANSWER = frozenset("cruds")


def _write(access: Access, req: FhirRequest, rtype: str) -> Decision:
    verify = access.verify(WRITE_ANSWER)
    if access.patient is None:
        return Decision(True, "allowed", params=req.params, verify=verify)
    if req.interaction is not Interaction.CREATE and req.id is None:
        return deny("write.conditional")  # conditional update/patch/delete: not narrowable
    if rtype == "Binary":
        return deny("write.binary")  # Binary has no compartment reference to verify
    if rtype != "Patient" and rtype not in PATIENT_COMPARTMENT:
        # Device, Practitioner, Organization, Linkage...: no compartment to confine the write
        # to (a Device naming another patient, a shared Practitioner): not the patient's data
        return deny("write.outside-compartment")
    prefetch = None if req.interaction is Interaction.CREATE else Prefetch.STORED_IN_COMPARTMENT
    return Decision(True, "allowed", params=req.params, verify=verify, prefetch=prefetch)


def _system_level(access: Access, req: FhirRequest, perm: str) -> Decision:
    if access.patient is not None:
        return deny(f"interaction.{req.interaction.value}")
    sparams = parse_params(req.params)
    types = [v for p in sparams if p.name == "_type" for v in p.values]
    if req.interaction is Interaction.HISTORY_SYSTEM or not types:
        if not access.plain("*", perm):
            return deny("scope.missing", 403, f"user/*.{perm}")
    else:
        for rtype in types:
            if rtype not in SEARCH_PARAMS:
                return deny("request.unknown-type", 400)
            if not access.grants(rtype, perm):
                return deny("scope.missing", 403, required_scope(access, rtype, perm))
    granular_only = any(not access.plain(t, perm) for t in types)
    if granular_only and any(p.name == "_summary" and p.value == "count" for p in sparams):
        return deny("count.granular")
    return Decision(
        True,
        "allowed",
        params=_result_params(req.params) if granular_only else req.params,
        verify=access.verify(),
        suppress_total=granular_only,
    )


def _compartment_search(access: Access, req: FhirRequest) -> Decision:
    ctype = req.compartment_type
    assert ctype is not None
    pid = access.patient
    if pid is not None and (req.resource_type != "Patient" or req.id != pid):
        return deny("compartment.other-patient")
    if ctype != "*" and not access.grants(ctype, "s"):
        return deny("scope.missing", 403, required_scope(access, ctype, "s"))
    if ctype == "*" and not any(
        s.permissions >= {"s"}
        for lv in access.levels
        for s in access.scopes.scopes
        if s.level == lv
    ):
        return deny("scope.missing", 403, required_scope(access, "*", "s"))
    sparams = parse_params(req.params)
    refusal = None
    if pid is not None:
        types = (ctype,) if ctype != "*" else tuple(PATIENT_COMPARTMENT)
        refusal = _confined_param_refusal(sparams) or next(
            (r for t in types if (r := _named_patients_refusal(t, sparams, pid))), None
        )
    if refusal:
        return refusal
    params = list(_result_params(req.params) if pid else req.params)
    suppress_total = ctype == "*"
    if ctype != "*" and not access.plain(ctype, "s"):
        if any(p.name == "_summary" and p.value == "count" for p in sparams):
            return deny("count.granular")
        params = [p for p in params if p[0] not in STRIPPED_WHEN_VERIFYING]
        granular = access.granular(ctype, "s")
        if len(granular) == 1:
            params += list(granular[0].query)  # exact, as in _search
        else:
            suppress_total = True
    return Decision(
        True,
        "allowed",
        params=tuple(params),
        verify=access.verify(),
        suppress_total=suppress_total,
    )


def _search(access: Access, req: FhirRequest, rtype: str) -> Decision:
    pid = access.patient
    if pid is not None and rtype == "Binary":
        return deny("interaction.binary-search")  # decision 7: only via its securityContext
    sparams = parse_params(req.params)
    params: list[Param] = list(req.params)
    suppress_total = False
    narrowing: Param | None = None
    if pid is not None:
        refusal = _confined_param_refusal(sparams) or _named_patients_refusal(rtype, sparams, pid)
        if refusal:
            return refusal
        params = list(_result_params(req.params))
        narrowing = _narrowing(rtype, pid)
        if narrowing is not None:
            params.append(narrowing)
    if not access.plain(rtype, "s"):
        granular = access.granular(rtype, "s")
        if any(p.name == "_summary" and p.value == "count" for p in sparams):
            return deny("count.granular")
        params = [p for p in params if p[0] not in STRIPPED_WHEN_VERIFYING]
        if len(granular) == 1:
            params += list(granular[0].query)  # exact: the scope's own token constraints
        else:
            suppress_total = True  # an OR of different constraints: verified locally only
    return Decision(
        True,
        "allowed",
        params=tuple(params),
        verify=replace(access.verify(), narrowing=narrowing),  # proven in the answer
        suppress_total=suppress_total,
    )


def _confined_param_refusal(sparams: tuple[SearchParam, ...]) -> Decision | None:
    for p in sparams:
        if p.name in CONFINED_FORBIDDEN or p.chain:
            return deny("param.forbidden")
        if p.name == "_summary" and p.value == "count":
            return deny("count.confined")  # decision 5: refused rather than miscounted
    return None


def _named_patients_refusal(
    rtype: str, sparams: tuple[SearchParam, ...], pid: str
) -> Decision | None:
    """Decision 4: a search naming any patient but the one in context is refused (403)."""
    compartment = PATIENT_COMPARTMENT.get(rtype, {})
    references = {n for n, t in SEARCH_PARAMS.get(rtype, {}).items() if t == "reference"}
    for p in sparams:
        if rtype == "Patient" and p.name == "_id":
            if any(v != pid for v in p.values):
                return deny("compartment.other-patient")
            continue
        strict = p.name in compartment or p.name == "patient"
        if not strict and p.name not in references:
            continue
        if strict and p.modifier not in (None, "Patient"):
            return deny("param.modifier")
        for value in p.values:
            typed = strict or p.modifier == "Patient"  # `focus:Patient=B` is Patient/B
            named = _patient_in_value(value, bare_is_patient=typed)
            if named is not None and named != pid:
                return deny("compartment.other-patient")
            if strict and named is None:
                return deny("compartment.other-patient")
    return None


def _patient_in_value(value: str, *, bare_is_patient: bool) -> str | None:
    """The patient id a reference search value names, or None if it names no patient."""
    path = value.split("?", 1)[0].rstrip("/")
    parts = path.split("/")
    if len(parts) >= 2 and parts[-2] == "Patient":
        return parts[-1]
    if len(parts) >= 4 and parts[-4] == "Patient" and parts[-2] == "_history":
        return parts[-3]
    if "/" not in path and bare_is_patient:
        return path
    return None


def _narrowing(rtype: str, pid: str) -> Param | None:
    """The one typed constraint that confines a search to the patient (None: not a
    compartment type, e.g. Medication or Practitioner, readable when a scope grants it)."""
    if rtype == "Patient":
        return ("_id", pid)
    params = SEARCH_PARAMS.get(rtype, {})
    if rtype in PATIENT_COMPARTMENT and params.get("patient") == "reference":
        return ("patient", f"Patient/{pid}")
    for name in PATIENT_COMPARTMENT.get(rtype, {}):
        return (name, f"Patient/{pid}")
    return None


def _result_params(params: tuple[Param, ...]) -> tuple[Param, ...]:
    """Drop result parameters that could hide the elements verification reads."""
    return tuple(p for p in params if p[0] not in STRIPPED_WHEN_VERIFYING)


def _operation(access: Access, req: FhirRequest) -> Decision:
    level = {
        Interaction.OPERATION_SYSTEM: "system",
        Interaction.OPERATION_TYPE: "type",
        Interaction.OPERATION_INSTANCE: "instance",
    }[req.interaction]
    if (req.resource_type, req.operation, level) not in OPERATIONS:
        return deny("operation.not-allowed")
    assert req.resource_type is not None
    pid = access.patient
    if req.operation == "$everything":
        if not access.grants("Patient", "r"):
            return deny("scope.missing", 403, required_scope(access, "Patient", "r"))
        if pid is not None and req.id != pid:
            return deny("compartment.other-patient", 404)
        return Decision(
            True,
            "allowed",
            params=_result_params(req.params),
            verify=access.verify(),
            suppress_total=True,
        )
    # $lastn: a search on Observation in all but name
    if not access.grants("Observation", "s"):
        return deny("scope.missing", 403, required_scope(access, "Observation", "s"))
    return _search(access, req, "Observation")
