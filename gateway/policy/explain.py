"""``fhir-gateway explain``: which policies match a caller and a resource, and the decision.

The claims file is the JSON payload of an access token (or an introspection answer): the same
claims the gateway would build its ``Principal`` from (``exp`` may be left out). The scope
level in use is the narrowest level whose scopes grant read on the resource's type (patient,
then user, then system) unless ``--level`` says otherwise.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from gateway.auth.bearer import TokenRejected
from gateway.auth.principal import Principal, build_principal
from gateway.config import ClaimNames
from gateway.policy.engine import CompiledPolicy, Outcome, PolicySet, PrincipalView
from gateway.policy.model import PolicyError
from gateway.policy.store import load_policy_set
from gateway.smart.scopes import Level, parse_scopes


@dataclass(frozen=True, slots=True)
class PolicyLine:
    policy: CompiledPolicy
    principal_matches: bool
    resource_matches: bool


@dataclass(frozen=True, slots=True)
class Explanation:
    resource_type: str
    view: PrincipalView
    lines: tuple[PolicyLine, ...]
    outcome: Outcome
    result: dict[str, Any]  # the resource as the caller would receive it (redactions applied)


def principal_from_claims(claims: Mapping[str, Any], names: ClaimNames) -> Principal:
    data = dict(claims)
    data.setdefault("exp", time.time() + 3600)
    return build_principal(data, names=names, token_fingerprint="explain", token_kind="jwt")  # noqa: S106


def level_for(principal: Principal, resource_type: str) -> Level | None:
    """The narrowest scope level granting read or search on the type, or None."""
    scopes = parse_scopes(principal.scopes)
    order: tuple[Level, ...] = ("patient", "user", "system")
    for level in order:
        if scopes.grants(level, resource_type, "r") or scopes.grants(level, resource_type, "s"):
            return level
    return None


def _safe(fn: Any, arg: Any) -> bool:
    try:
        return bool(fn(arg))
    except Exception:  # noqa: BLE001 - shown as a match, as the engine fails closed
        return True


def explain(policies: PolicySet, view: PrincipalView, resource: dict[str, Any]) -> Explanation:
    rtype = str(resource.get("resourceType"))
    lines = tuple(
        PolicyLine(p, _safe(p.matches_principal, view), _safe(p.matches_resource, resource))
        for p in policies.for_type(rtype)
    )
    result = copy.deepcopy(resource)
    outcome = policies.evaluate(result, view)
    return Explanation(rtype, view, lines, outcome, result)


def _why(line: PolicyLine, outcome: Outcome) -> str:
    pid = line.policy.id
    if not line.principal_matches:
        return "does not apply: principal condition not met"
    if not line.resource_matches:
        return "does not apply: resource condition not met"
    if line.policy.effect == "allow":
        if pid in outcome.allowed_by:
            return "APPLIES: exception granted" + (
                " (BREAK-THE-GLASS, audited)" if line.policy.break_glass else ""
            )
        return "matches, but cancels nothing that applies"
    if pid in outcome.withheld_by or pid in outcome.redacted_by:
        return "APPLIES"
    if outcome.withheld_by and line.policy.effect == "redact":
        return "matches (moot: the resource is withheld)"
    return "matches, cancelled by an exception"


def format_explanation(ex: Explanation) -> str:
    v = ex.view
    out = [
        f"resource type: {ex.resource_type}",
        f"principal: level={v.level} fhirUser type={v.fhir_user_type} client_id={v.client_id} "
        f"patient-facing={'yes' if v.patient_facing else 'no'}",
    ]
    if not ex.lines:
        out.append("policies: none apply to this resource type")
    else:
        out.append("policies:")
        for line in ex.lines:
            p = line.policy
            out.append(f"  - {p.id} [{p.effect}] ({p.pos}): {_why(line, ex.outcome)}")
    o = ex.outcome
    if not o.visible:
        decision = f"WITHHELD by {', '.join(o.withheld_by)} (a read answers 404)"
    elif o.redacted_by:
        decision = f"VISIBLE, REDACTED by {', '.join(o.redacted_by)}"
    else:
        decision = "VISIBLE"
    if o.allowed_by:
        decision += f"; exceptions: {', '.join(o.allowed_by)}"
    if o.break_glass:
        decision += "; break-the-glass access (audited)"
    if o.errors:
        decision += f"; predicate errors (failed closed): {', '.join(o.errors)}"
    out.append(f"decision: {decision}")
    return "\n".join(out)


def run_explain(
    paths: Sequence[Path],
    claim_names: ClaimNames,
    claims_path: str | Path,
    resource_path: str | Path,
    *,
    level: str | None = None,
    out: TextIO | None = None,
) -> int:
    """The ``explain`` command: 0 when it ran (whatever the decision), 2 on bad input.

    From the CLI: ``run_explain(cfg.policies.paths, cfg.auth.claims, claims, resource,
    level=args.level)``.
    """
    stdout = out if out is not None else sys.stdout
    try:
        policies = load_policy_set(paths)
    except PolicyError as exc:
        print(f"{len(exc.items)} policy problem(s):", file=stdout)
        for problem in exc.items:
            print(f"  - {problem}", file=stdout)
        return 2
    try:
        claims = json.loads(Path(claims_path).read_text(encoding="utf-8"))
        resource = json.loads(Path(resource_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"cannot read input: {exc}", file=stdout)
        return 2
    if not isinstance(claims, dict) or not isinstance(resource, dict):
        print("the claims and the resource must both be JSON objects", file=stdout)
        return 2
    try:
        principal = principal_from_claims(claims, claim_names)
    except TokenRejected as exc:
        print(f"the claims would be refused by the gateway ({exc.detail})", file=stdout)
        return 2
    if level is not None and level not in ("patient", "user", "system"):
        print("--level must be patient, user or system", file=stdout)
        return 2
    rtype = str(resource.get("resourceType"))
    chosen: Level | None = level if level is not None else level_for(principal, rtype)  # type: ignore[assignment]
    if chosen is None:
        print(
            f"note: no scope grants read on {rtype}; the gateway would refuse with 403", file=stdout
        )
    view = PrincipalView.from_principal(principal, chosen)
    print(format_explanation(explain(policies, view, resource)), file=stdout)
    return 0
