"""Verify every resource that comes back, whatever path it took (the filter stage's core).

Matches, ``_include``/``_revinclude`` (``:iterate`` and wildcards too), history versions,
``$everything`` entries, batch-response entries and stored Bundles are all judged the same way:

1. its type must be granted by a scope (plainly, or by a granular scope it matches);
2. for a confined caller, a Patient-compartment type must be in the patient's compartment;
3. contained Patients are removed for a confined caller (they cannot be proven to be the
   patient in context).

A failing entry is dropped from its Bundle (never a whole-request 403); a failing single
resource is answered 404 exactly like a nonexistent one (decision 3). ``Bundle.total`` follows
decision 5, and nothing marks that something was hidden (decision 6). The answer to a narrowed
search must prove that the upstream applied the narrowing (``narrowing.py``), else it is
replaced whole: only then can an untouched ``total`` (``_count=0``) be passed on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from gateway.access.compartment import (
    compartment_patients,
    names_other_patient,
    strip_foreign_contained_patients,
)
from gateway.access.decision import Verify
from gateway.access.granular import matches_query
from gateway.access.narrowing import UNPROVEN_REASON, narrowing_applied, unproven_searchset
from gateway.errors import NotFound
from gateway.fhir.tables import RESOURCE_TYPES
from gateway.policy.engine import Outcome

#: Bundles that are the server's answer (an envelope), not a stored resource of type Bundle
ENVELOPES = frozenset({"searchset", "history", "batch-response", "transaction-response"})


@dataclass
class PolicyTally:
    """What policies did to one answer, for the audit trail (ids and counts, no contents)."""

    withheld: Counter[str] = field(default_factory=Counter)
    redacted: Counter[str] = field(default_factory=Counter)
    break_glass: set[str] = field(default_factory=set)
    errors: int = 0

    def add(self, outcome: Outcome) -> None:
        self.withheld.update(outcome.withheld_by)
        self.redacted.update(outcome.redacted_by)
        if outcome.break_glass:
            self.break_glass.update(outcome.allowed_by)
        self.errors += len(outcome.errors)


#: the compartment members computed for each resource object of one answer, keyed by ``id()``
#: with the object itself (held, so no id is reused): verification computes them, the audit
#: record reuses them
Members = dict[int, "tuple[dict[str, Any], set[str] | None]"]


def known_members(memo: Members | None, resource: dict[str, Any]) -> tuple[bool, set[str] | None]:
    """(True, members) when ``memo`` holds them for this very object, else (False, None)."""
    found = memo.get(id(resource)) if memo else None
    if found is None or found[0] is not resource:
        return False, None
    return True, found[1]


class ResourceCheck:
    def __init__(
        self,
        verify: Verify,
        bases: tuple[str, ...],
        tally: PolicyTally | None = None,
        members: Members | None = None,
    ) -> None:
        self._v = verify
        self._bases = bases
        self.removed = 0
        self.changed = False
        self.tally = tally if tally is not None else PolicyTally()
        self.members: Members = members if members is not None else {}
        self._plain: dict[str, bool] = {}  # resource type -> granted plainly (scopes are fixed)
        self._depth = 0  # nesting of filter_bundle: 0 is the answer's own envelope
        #: set when the answer to a narrowed search did not prove the narrowing
        self.unproven = False

    def in_compartment(self, resource: dict[str, Any]) -> bool:
        """For a confined caller: not a compartment type, or in the patient's compartment."""
        patient = self._v.patient
        if patient is None:
            return True
        members = compartment_patients(resource, self._bases)
        return members is None or patient in members

    def visible(self, resource: Any) -> bool:
        """Whether the caller may see this resource (may strip contained Patients in place)."""
        if not isinstance(resource, dict):
            return False
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str) or rtype not in RESOURCE_TYPES:
            return False
        if rtype == "OperationOutcome":
            return True
        if rtype == "Bundle" and resource.get("type") in ENVELOPES:
            self.filter_bundle(resource)  # e.g. a search answered inside a batch-response
            return True
        v = self._v
        plain = self._plain.get(rtype)
        if plain is None:
            plain = self._plain[rtype] = any(
                v.scopes.plain(lv, rtype, p) for lv in v.levels for p in v.permissions
            )
        if not plain:
            granular = [
                s for lv in v.levels for p in v.permissions for s in v.scopes.granular(lv, rtype, p)
            ]
            if not any(matches_query(resource, rtype, s.query) for s in granular):
                return False
        if v.patient is not None:
            members = compartment_patients(resource, self._bases)
            self.members[id(resource)] = (resource, members)
            if members is not None and v.patient not in members:
                return False
            if (  # outside the compartment, yet another patient's (Device.patient); a stored
                # Bundle is judged entry by entry below instead
                members is None
                and rtype != "Bundle"
                and names_other_patient(resource, v.patient, self._bases)
            ):
                return False
            if strip_foreign_contained_patients(resource, v.patient, self._bases):
                self.changed = True
        if v.policies is not None:
            outcome = v.policies.evaluate(resource)  # redactions are applied in place
            if outcome.policy_ids or outcome.errors:
                self.tally.add(outcome)
            if not outcome.visible:
                return False
            if outcome.changed:
                self.changed = True
        if rtype == "Bundle":
            self.filter_bundle(resource)
        return True

    def filter_bundle(self, bundle: dict[str, Any], *, suppress_total: bool = False) -> None:
        """Drop every entry the caller may not see; fix ``total`` (decision 5).

        The answer to a narrowed search (the first Bundle this check sees, a ``searchset``)
        must first prove the narrowing was applied upstream, else it is replaced whole by a
        fixed empty searchset: entries, ``total`` and paging links of a search
        over every patient would all describe records outside the compartment.
        """
        narrowing, patient = self._v.narrowing, self._v.patient
        if (
            self._depth == 0
            and narrowing is not None
            and patient is not None
            and bundle.get("type") == "searchset"
            and not narrowing_applied(bundle, narrowing, patient)
        ):
            bundle.clear()
            bundle.update(unproven_searchset())
            self.unproven = self.changed = True
            return
        self._depth += 1
        try:
            self._filter_entries(bundle, suppress_total=suppress_total)
        finally:
            self._depth -= 1

    def _filter_entries(self, bundle: dict[str, Any], *, suppress_total: bool) -> None:
        entries = bundle.get("entry")
        if entries is None:
            entries = []
        if not isinstance(entries, list):
            raise ValueError("Bundle.entry is not a list")
        kept: list[Any] = []
        removed_here = 0
        positional = bundle.get("type") in ("batch-response", "transaction-response")
        for entry in entries:
            if not isinstance(entry, dict):
                removed_here += 1
                continue
            if "resource" not in entry:
                kept.append(entry)  # a batch/transaction response entry: status only
                continue
            if self.visible(entry["resource"]):
                kept.append(entry)
            elif positional:  # batch/transaction answers keep one entry per request
                kept.append({"response": {"status": "404 Not Found"}})
                removed_here += 1
            else:
                removed_here += 1
        if removed_here:
            self.removed += removed_here
            self.changed = True
            if kept:
                bundle["entry"] = kept
            else:
                bundle.pop("entry", None)
        if (
            bundle.get("type") in ("searchset", "history")
            and "total" in bundle
            and (removed_here or suppress_total)
        ):
            relations = {
                link.get("relation") for link in bundle.get("link", []) if isinstance(link, dict)
            }
            if relations & {"next", "previous", "prev"}:
                del bundle["total"]  # other pages may hold withheld entries: no honest count
            else:
                bundle["total"] = sum(
                    1 for e in kept if (e.get("search") or {}).get("mode", "match") == "match"
                )
            self.changed = True


def verify_document(
    doc: dict[str, Any],
    verify: Verify,
    bases: tuple[str, ...],
    *,
    suppress_total: bool = False,
    whole: bool = False,
    tally: PolicyTally | None = None,
    members: Members | None = None,
    reasons: list[str] | None = None,
) -> bool:
    """Verify a decoded response body in place. Returns True if it changed.

    Raises NotFound when the body is a single resource the caller may not see, or when
    ``whole`` (an instance history) and any entry had to be hidden. ``members`` collects the
    compartment members computed on the way (for the audit record); ``reasons`` receives
    :data:`UNPROVEN_REASON` when a narrowed search's answer was withheld.
    """
    check = ResourceCheck(verify, bases, tally, members)
    if doc.get("resourceType") == "Bundle" and doc.get("type") in ENVELOPES:
        check.filter_bundle(doc, suppress_total=suppress_total)  # the envelope, not a resource
        if whole and (check.removed or not doc.get("entry")):
            raise NotFound()  # hidden, or no versions at all: the same 404 either way
    elif not check.visible(doc):
        raise NotFound()
    if check.unproven and reasons is not None:
        reasons.append(UNPROVEN_REASON)
    return check.changed
