"""Evaluating compiled policies: pure, allocation-free on the common path.

Precedence (``docs/policies.md``, "Precedence"):

1. A policy *applies* to a resource when its principal condition matches the caller and its
   resource condition matches the resource. Principal conditions do not depend on the resource,
   so :meth:`PolicySet.bind` evaluates them once per caller; a resource is then only checked
   against the resource conditions of its own type's applicable policies.
2. An applicable ``allow`` exception cancels every applicable ``withhold``/``redact`` policy it
   names in ``overrides`` (``*``: all of them for its types). Exceptions cannot be cancelled.
3. Of what is left, any ``withhold`` removes the resource (redactions are moot); otherwise every
   ``redact`` removes its elements, replaces the narrative by a notice and adds the
   ``REDACTED`` security label.
4. A predicate that raises (malformed data, FHIRPath runtime error) fails closed: a restricting
   policy counts as matching, an exception as not matching. The policy id is in ``errors``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cachetools import LRUCache

from gateway.auth.principal import Principal
from gateway.fhir.references import reference_holders
from gateway.policy.model import Effect, Pos
from gateway.smart.scopes import Level

ResourcePredicate = Callable[[dict[str, Any]], bool]
PrincipalPredicate = Callable[["PrincipalView"], bool]

PATIENT_FACING_USERS = frozenset({"Patient", "RelatedPerson"})
REDACTED_LABEL = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "REDACTED",
    "display": "redacted",
}
NOTICE_DIV = (
    '<div xmlns="http://www.w3.org/1999/xhtml"><p>Parts of this resource are not shown '
    "under a privacy policy. This text was generated in place of the original narrative.</p></div>"
)


@dataclass(frozen=True, slots=True)
class PrincipalView:
    """What policies may know about the caller (built once per request)."""

    level: Level | None  # the scope level in use: patient, user or system
    fhir_user_type: str | None  # "Practitioner", "Patient", ...
    client_id: str | None
    subject: str | None
    patient: str | None
    claims: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_principal(cls, principal: Principal, level: Level | None) -> PrincipalView:
        ref = principal.fhir_user_reference()
        return cls(
            level=level,
            fhir_user_type=None if ref is None else ref[0],
            client_id=principal.client_id,
            subject=principal.subject,
            patient=principal.patient,
            claims=principal.claims,
        )

    @property
    def patient_facing(self) -> bool:
        """Scope level patient, or a Patient / RelatedPerson user (decisions 15, 16)."""
        return self.level == "patient" or self.fhir_user_type in PATIENT_FACING_USERS


@dataclass(frozen=True, slots=True)
class Outcome:
    """The decision for one resource. Only ids and flags: never resource contents."""

    visible: bool = True
    withheld_by: tuple[str, ...] = ()
    redacted_by: tuple[str, ...] = ()  # elements removed in place (or contained withheld)
    allowed_by: tuple[str, ...] = ()  # exceptions that changed the result
    break_glass: bool = False  # one of allowed_by is a break-the-glass exception: audit it
    errors: tuple[str, ...] = ()  # policies whose predicate raised (failed closed)

    @property
    def changed(self) -> bool:
        """The resource was modified in place (re-serialize it)."""
        return bool(self.redacted_by)

    @property
    def policy_ids(self) -> tuple[str, ...]:
        """Every policy that took effect, for the audit record."""
        return self.withheld_by + self.redacted_by + self.allowed_by


VISIBLE = Outcome()


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    id: str
    description: str
    effect: Effect
    resource_types: tuple[str, ...]
    matches_resource: ResourcePredicate
    matches_principal: PrincipalPredicate
    redact: tuple[tuple[str, ...], ...]
    overrides: frozenset[str] | None  # allow: ids it cancels; None = all
    break_glass: bool
    release_by: PrincipalPredicate | None
    pos: Pos


@dataclass(frozen=True, slots=True)
class _TypePolicies:
    restricting: tuple[CompiledPolicy, ...]  # withhold and redact
    exceptions: tuple[CompiledPolicy, ...]  # allow


def _safe(pred: ResourcePredicate, resource: dict[str, Any], on_error: bool) -> tuple[bool, bool]:
    """``(matched, raised)``; a raising predicate counts as ``on_error``."""
    try:
        return bool(pred(resource)), False
    except Exception:  # noqa: BLE001 - fail closed on any data the predicate cannot handle
        return on_error, True


class BoundPolicies:
    """A :class:`PolicySet` bound to one caller: principal conditions already evaluated."""

    __slots__ = ("_by_type", "_withheld", "restricted_types", "view")

    def __init__(self, by_type: dict[str, _TypePolicies], view: PrincipalView) -> None:
        self._by_type = by_type
        self._withheld: dict[tuple[str, ...], Outcome] = {}  # shared, immutable outcomes
        #: types for which this caller may have resources withheld or redacted
        self.restricted_types = frozenset(by_type)
        self.view = view

    def may_restrict(self, resource_type: str) -> bool:
        """True when a policy could withhold or redact a resource of this type for this caller
        (then ``Bundle.total`` cannot be passed through and ``_summary=count`` must not be
        answered from the upstream's count: decision 5)."""
        return resource_type in self._by_type

    def evaluate(self, resource: dict[str, Any]) -> Outcome:
        """Judge one resource; redactions are applied to it in place."""
        by_type = self._by_type
        if not by_type:
            return VISIBLE
        tp = by_type.get(resource.get("resourceType"))  # type: ignore[arg-type]
        outcome = VISIBLE if tp is None else self._judge(resource, tp)
        if outcome.visible and "contained" in resource:
            return self._contained(resource, outcome)
        return outcome

    def _judge(self, resource: dict[str, Any], tp: _TypePolicies) -> Outcome:
        hits: list[CompiledPolicy] | None = None
        errors: list[str] | None = None
        for p in tp.restricting:
            try:
                hit = p.matches_resource(resource)
            except Exception:  # noqa: BLE001 - fail closed
                hit = True
                errors = [*(errors or ()), p.id]
            if hit:
                if hits is None:
                    hits = [p]
                else:
                    hits.append(p)
        if hits is None:
            return VISIBLE
        cancelled: set[str] = set()
        allowed: list[str] = []
        break_glass = False
        for e in tp.exceptions:
            names = {h.id for h in hits if e.overrides is None or h.id in e.overrides}
            if not names - cancelled:
                continue
            matched, raised = _safe(e.matches_resource, resource, False)
            if raised:
                errors = [*(errors or ()), e.id]
            if matched:
                cancelled |= names
                allowed.append(e.id)
                break_glass = break_glass or e.break_glass
        errs = tuple(errors or ())
        withheld = tuple(h.id for h in hits if h.effect == "withhold" and h.id not in cancelled)
        if withheld:
            if errs:
                return Outcome(visible=False, withheld_by=withheld, errors=errs)
            cached = self._withheld.get(withheld)
            if cached is None:
                cached = self._withheld[withheld] = Outcome(visible=False, withheld_by=withheld)
            return cached
        redacts = [h for h in hits if h.effect == "redact" and h.id not in cancelled]
        if redacts:
            for h in redacts:
                for path in h.redact:
                    remove_path(resource, path)
            mark_redacted(resource)
        return Outcome(
            visible=True,
            redacted_by=tuple(h.id for h in redacts),
            allowed_by=tuple(allowed),
            break_glass=break_glass,
            errors=errs,
        )

    def _contained(self, resource: dict[str, Any], outcome: Outcome) -> Outcome:
        """Contained resources are judged too: withheld ones are removed, others redacted."""
        contained = resource["contained"]
        if not isinstance(contained, list):
            return outcome
        kept: list[Any] = []
        ids: list[str] = []
        removed: set[str] = set()  # local references (``#id``) to what is withheld
        extra = VISIBLE
        for inner in contained:
            if not isinstance(inner, dict):
                continue
            tp = self._by_type.get(inner.get("resourceType"))  # type: ignore[arg-type]
            sub = VISIBLE if tp is None else self._judge(inner, tp)
            if sub.visible:
                kept.append(inner)
            elif isinstance(inner.get("id"), str):
                removed.add("#" + inner["id"])
            ids.extend(sub.withheld_by + sub.redacted_by)
            if sub.allowed_by or sub.errors:
                extra = Outcome(
                    allowed_by=extra.allowed_by + sub.allowed_by,
                    break_glass=extra.break_glass or sub.break_glass,
                    errors=extra.errors + sub.errors,
                )
        if not ids and extra is VISIBLE:
            return outcome
        if len(kept) != len(contained):
            if kept:
                resource["contained"] = kept
            else:
                del resource["contained"]
            _withhold_local_references(resource, removed)
            mark_redacted(resource)
        return Outcome(
            visible=True,
            redacted_by=tuple(dict.fromkeys(outcome.redacted_by + tuple(ids))),
            allowed_by=outcome.allowed_by + extra.allowed_by,
            break_glass=outcome.break_glass or extra.break_glass,
            errors=outcome.errors + extra.errors,
        )


class PolicySet:
    """An immutable, compiled set of policies, grouped by resource type."""

    def __init__(
        self,
        policies: tuple[CompiledPolicy, ...] = (),
        *,
        files: tuple[str, ...] = (),
    ) -> None:
        self.policies = policies
        self.files = files
        grouped: dict[str, list[CompiledPolicy]] = {}
        for p in policies:
            for t in p.resource_types:
                grouped.setdefault(t, []).append(p)
        self._by_type: dict[str, tuple[CompiledPolicy, ...]] = {
            t: tuple(ps) for t, ps in grouped.items()
        }
        # bound sets per caller, reused across requests: keyed by the caller's token and scope
        # level, valid for the very Principal object (verified tokens are cached as one object)
        self._bound: LRUCache[tuple[str, Level | None], tuple[Principal, BoundPolicies]]
        self._bound = LRUCache(maxsize=4096)

    def __len__(self) -> int:
        return len(self.policies)

    def for_type(self, resource_type: str) -> tuple[CompiledPolicy, ...]:
        return self._by_type.get(resource_type, ())

    def bind(self, view: PrincipalView) -> BoundPolicies:
        """Evaluate principal conditions once for this caller (O(number of policies))."""
        applies: dict[str, bool] = {}
        out: dict[str, _TypePolicies] = {}
        for rtype, policies in self._by_type.items():
            restricting: list[CompiledPolicy] = []
            exceptions: list[CompiledPolicy] = []
            for p in policies:
                ok = applies.get(p.id)
                if ok is None:
                    try:
                        ok = bool(p.matches_principal(view))
                    except Exception:  # noqa: BLE001 - fail closed
                        ok = p.effect != "allow"
                    applies[p.id] = ok
                if ok:
                    (exceptions if p.effect == "allow" else restricting).append(p)
            if restricting:
                out[rtype] = _TypePolicies(tuple(restricting), tuple(exceptions))
        return BoundPolicies(out, view)

    def bind_principal(self, principal: Principal, level: Level | None) -> BoundPolicies:
        """:meth:`bind` for this principal at this level, remembered for the same principal."""
        key = (principal.fingerprint, level)
        found = self._bound.get(key)
        if found is not None and found[0] is principal:
            return found[1]
        bound = self.bind(PrincipalView.from_principal(principal, level))
        self._bound[key] = (principal, bound)
        return bound

    def evaluate(self, resource: dict[str, Any], view: PrincipalView) -> Outcome:
        """One-off evaluation; for many resources, :meth:`bind` once and reuse."""
        return self.bind(view).evaluate(resource)

    def write_escapes(
        self, stored: dict[str, Any], proposed: dict[str, Any], view: PrincipalView
    ) -> tuple[str, ...]:
        """Ids of withhold/redact policies that match ``stored`` but would no longer match
        ``proposed`` (a label removed, a status changed...). Not empty -> refuse with 403.

        Every caller is checked (a policy protects *other* readers), except those matching the
        policy's ``release_by`` condition. An unreadable ``proposed`` counts as escaping.
        """
        rtype = stored.get("resourceType")
        if not isinstance(rtype, str):
            return ()
        out: list[str] = []
        for p in self._by_type.get(rtype, ()):
            if p.effect == "allow":
                continue
            if p.release_by is not None and _principal_ok(p.release_by, view):
                continue
            before, _ = _safe(p.matches_resource, stored, True)
            if not before:
                continue
            after, _ = _safe(p.matches_resource, proposed, False)
            if not after or proposed.get("resourceType") != rtype:
                out.append(p.id)
        return tuple(out)

    def guarding(self, stored: dict[str, Any]) -> tuple[str, ...]:
        """Ids of withhold/redact policies whose resource condition matches ``stored`` (for a
        write whose result cannot be computed, e.g. a FHIRPath Patch)."""
        rtype = stored.get("resourceType")
        if not isinstance(rtype, str):
            return ()
        return tuple(
            p.id
            for p in self._by_type.get(rtype, ())
            if p.effect != "allow" and _safe(p.matches_resource, stored, True)[0]
        )


def _principal_ok(pred: PrincipalPredicate, view: PrincipalView) -> bool:
    try:
        return bool(pred(view))
    except Exception:  # noqa: BLE001 - a release permission never fails open
        return False


# --------------------------------------------------------------------------- redaction


def remove_path(node: Any, path: tuple[str, ...]) -> None:
    """Remove the element at ``path`` wherever it occurs (lists are walked); ``name[x]``
    removes every choice-type variant (``value[x]``: valueQuantity, valueString, ...)."""
    parents = [node]
    for name in path[:-1]:
        nxt: list[Any] = []
        for obj in parents:
            if isinstance(obj, dict):
                value = obj.get(name)
                if isinstance(value, list):
                    nxt.extend(value)
                elif value is not None:
                    nxt.append(value)
        parents = nxt
    last = path[-1]
    for obj in parents:
        if not isinstance(obj, dict):
            continue
        if last.endswith("[x]"):
            stem = last[:-3]
            for key in [k for k in obj if _is_choice(k, stem)]:
                del obj[key]
        else:
            obj.pop(last, None)
            obj.pop("_" + last, None)  # the primitive's id/extension sibling


def _is_choice(key: str, stem: str) -> bool:
    if key.startswith("_"):
        key = key[1:]
    return key.startswith(stem) and len(key) > len(stem) and key[len(stem)].isupper()


#: what a reference to a withheld contained resource shows instead (the resource is labelled
#: REDACTED already, so this marks nothing new)
WITHHELD_REFERENCE_DISPLAY = "Withheld"


def _withhold_local_references(resource: dict[str, Any], removed: set[str]) -> None:
    """References to removed contained resources keep no trace of them: their ``reference``
    and ``display`` (often the withheld diagnosis in words) become a fixed notice."""
    if not removed:
        return
    for holder in reference_holders(resource):
        if holder["reference"] in removed:
            holder.clear()
            holder["display"] = WITHHELD_REFERENCE_DISPLAY


def mark_redacted(resource: dict[str, Any]) -> None:
    """Replace the narrative by a notice and add the REDACTED security label."""
    if "text" in resource:
        resource["text"] = {"status": "generated", "div": NOTICE_DIV}
    meta = resource.get("meta")
    if not isinstance(meta, dict):
        meta = resource["meta"] = {}
    labels = meta.get("security")
    if not isinstance(labels, list):
        labels = meta["security"] = []
    if not any(
        isinstance(c, dict)
        and c.get("system") == REDACTED_LABEL["system"]
        and c.get("code") == "REDACTED"
        for c in labels
    ):
        labels.append(dict(REDACTED_LABEL))
