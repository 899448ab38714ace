"""Searches that could count or detect what a privacy policy withholds (issue 6, decision 5).

Pure, like ``authorize``: given the request and which types policies may restrict for this
caller (``BoundPolicies.may_restrict``), refuse the probes and say whether ``total`` can be
trusted:

- ``_summary=count`` on a type policies may restrict -> 403 (the gateway cannot count honestly
  without reading every match);
- ``_has:Type:...`` where ``Type`` may be restricted -> 403 (a reverse chain is an existence
  oracle on the withheld resources);
- a chain (``subject.code=...``, ``result:Observation.status=...``) that may join into a
  restricted type -> 403, for the same reason;
- ``total`` is suppressed (decision 5) whenever the matches may be restricted;
- type ``_history`` of a type policies may restrict, and system ``_history`` when any type may
  be restricted -> 403 (``policy.history``): a policy judges each version on its own, so an
  older, unlabelled version of a withheld resource would be returned; judging each entry's
  current version would cost one upstream read per entry;
- vread and instance history of a type policies may restrict: the current version must be
  readable too (``Prefetch.CURRENT_VISIBLE``, checked in ``prechecks``), else the same 404 as
  for a nonexistent resource.

``_security`` / ``_tag`` probes need no rule of their own: their matches are filtered like any
other, and ``total`` is suppressed.
"""

from __future__ import annotations

from dataclasses import replace

from gateway.access.decision import Decision, Prefetch, deny
from gateway.fhir.params import parse_params
from gateway.fhir.request import FhirRequest, Interaction
from gateway.fhir.tables import REFERENCE_TARGETS
from gateway.policy.engine import BoundPolicies

_SEARCHING = frozenset(
    {
        Interaction.SEARCH_TYPE,
        Interaction.SEARCH_SYSTEM,
        Interaction.SEARCH_COMPARTMENT,
        Interaction.HISTORY_TYPE,
        Interaction.OPERATION_TYPE,
        Interaction.OPERATION_INSTANCE,
    }
)
#: answers made of stored versions of one resource: judged on its current version as well
VERSIONED = frozenset({Interaction.VREAD, Interaction.HISTORY_INSTANCE})


def match_types(req: FhirRequest) -> tuple[str, ...] | None:
    """The types a search matches (None: any type)."""
    if req.interaction is Interaction.SEARCH_COMPARTMENT:
        return None if req.compartment_type == "*" else (str(req.compartment_type),)
    if req.interaction is Interaction.SEARCH_SYSTEM:
        types = tuple(v for p in parse_params(req.params) if p.name == "_type" for v in p.values)
        return types or None
    if req.operation == "$everything":
        return None
    return (str(req.resource_type),) if req.resource_type else None


def gate(req: FhirRequest, bound: BoundPolicies) -> Decision | None:
    """A denial for a probe on policy-restricted data, else None."""
    restricted, may_restrict = bound.restricted_types, bound.may_restrict
    if not restricted:
        return None
    if req.interaction is Interaction.HISTORY_SYSTEM or (
        req.interaction is Interaction.HISTORY_TYPE
        and (req.resource_type is None or may_restrict(req.resource_type))
    ):  # old versions escape a label added later; each current version would cost a read
        return deny("policy.history")
    if req.interaction not in _SEARCHING:
        return None
    types = match_types(req)
    any_restricted = restricted if types is None else {t for t in types if may_restrict(t)}
    for p in parse_params(req.params):
        if p.name == "_summary" and p.value == "count" and any_restricted:
            return deny("count.policy")
        if p.name == "_has" and p.modifier:
            joined = p.modifier.split(":", 1)[0]
            if may_restrict(joined):
                return deny("policy.probe")
        if p.chain:
            for t in _chain_targets(types, p.name, p.modifier):
                if may_restrict(t):
                    return deny("policy.probe")
    return None


def judges_current(req: FhirRequest, bound: BoundPolicies) -> bool:
    """A vread or instance history whose current version must be readable too."""
    return (
        req.interaction in VERSIONED
        and req.resource_type is not None
        and bound.may_restrict(req.resource_type)
    )


def total_suppressed(req: FhirRequest, bound: BoundPolicies) -> bool:
    if not bound.restricted_types:
        return False
    types = match_types(req)
    return types is None or any(bound.may_restrict(t) for t in types)


def _chain_targets(types: tuple[str, ...] | None, name: str, modifier: str | None) -> set[str]:
    if modifier:  # subject:Patient.name: the modifier names the joined type
        return {modifier}
    targets: set[str] = set()
    for t in types if types is not None else tuple(REFERENCE_TARGETS):
        targets.update(REFERENCE_TARGETS.get(t, {}).get(name, ()))
    return targets


def apply_policies(req: FhirRequest, decision: Decision, bound: BoundPolicies) -> Decision:
    """Attach the caller's bound policies to an allowance; refuse probes and histories;
    suppress totals; have versioned reads judged on their current version."""
    if not decision.allowed or decision.verify is None or not bound.restricted_types:
        return decision
    denial = gate(req, bound)
    if denial is not None:
        return denial
    params = tuple(  # policies judge whole resources: no element may be left out upstream
        p
        for p in decision.params
        if not (p[0] == "_elements" or (p[0] == "_summary" and p[1] != "count"))
    )
    return replace(
        decision,
        params=params,
        verify=replace(decision.verify, policies=bound),
        suppress_total=decision.suppress_total or total_suppressed(req, bound),
        prefetch=decision.prefetch  # a Binary's own check judges its current version
        or (Prefetch.CURRENT_VISIBLE if judges_current(req, bound) else None),
    )
