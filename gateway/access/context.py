"""From a Principal to ``Access``: parsed scopes and the patient in context (decision 8).

- ``patient`` claim, or a ``fhirUser`` that is a Patient: that patient. Both present and
  different: refused (which one would be meant is unclear; fail closed).
- ``fhirUser`` a RelatedPerson: the patient that RelatedPerson points to, looked up once
  upstream and cached (bounded, 5 minutes). Unresolvable: refused.
- Scope strings are parsed once per distinct scope set (bounded cache).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Any

from cachetools import TTLCache

from gateway.access.authorize import ALL_LEVELS, UNCONFINED_LEVELS, Access
from gateway.access.compartment import patient_ref_id
from gateway.auth.principal import Principal
from gateway.errors import Forbidden
from gateway.policy import BoundPolicies, PolicySet
from gateway.smart.scopes import Level, ScopeSet, parse_scopes

#: fetches a resource from the upstream as JSON: (type, id) -> resource or None if absent
Fetch = Callable[[str, str], Awaitable[dict[str, Any] | None]]


@lru_cache(maxsize=4096)
def scope_set(scopes: tuple[str, ...]) -> ScopeSet:
    return parse_scopes(scopes)


class AccessResolver:
    def __init__(self, fetch: Fetch, bases: tuple[str, ...]) -> None:
        self._fetch = fetch
        self._bases = bases
        self._related: TTLCache[str, str] = TTLCache(maxsize=10000, ttl=300)

    async def accesses_for(self, principal: Principal) -> tuple[Access, ...]:
        """The caller's views, the unconfined one first (see ``authorize_any``)."""
        scopes = scope_set(principal.scopes)
        patient = principal.patient
        user = principal.fhir_user_reference()
        user_type = user[0] if user is not None else None
        if user is not None and user_type == "Patient":
            if patient is not None and patient != user[1]:
                raise Forbidden(reason="context.conflict")
            patient = user[1]
        elif user is not None and user_type == "RelatedPerson":
            related = await self._related_patient(user[1])
            if patient is not None and patient != related:
                raise Forbidden(reason="context.conflict")
            patient = related
        unconfined = Access(scopes, None, UNCONFINED_LEVELS)
        if patient is None:
            return (unconfined,)
        if user_type in ("Patient", "RelatedPerson"):
            return (Access(scopes, patient, ALL_LEVELS),)  # a patient-facing user: all confined
        return (unconfined, Access(scopes, patient, ("patient",)))

    async def _related_patient(self, related_id: str) -> str:
        cached = self._related.get(related_id)
        if cached is not None:
            return cached
        resource = await self._fetch("RelatedPerson", related_id)
        ref = resource.get("patient") if isinstance(resource, dict) else None
        pid = (
            patient_ref_id(ref.get("reference", ""), self._bases) if isinstance(ref, dict) else None
        )
        if pid is None:
            raise Forbidden(
                "The user's RelatedPerson record names no patient.", reason="context.related-person"
            )
        self._related[related_id] = pid
        return pid


def policy_level(access: Access) -> Level:
    """The scope level policies judge this view by (decisions 15-16: patient-facing or not)."""
    if access.patient is not None and "patient" in access.levels:
        return "patient"
    return "user" if "user" in access.scopes.levels else "system"


def bind_policies(policies: PolicySet, principal: Principal, access: Access) -> BoundPolicies:
    return policies.bind_principal(principal, policy_level(access))
