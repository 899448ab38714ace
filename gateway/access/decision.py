"""What ``authorize()`` decides, as plain data the later stages apply.

A Decision is either a denial (status, stable reason code, and for scope denials the scope
that would have been needed) or an allowance with obligations:

- ``params``: the exact parameters to send upstream (the client's, minus what the gateway
  applies itself, plus the narrowing constraints);
- ``verify``: the checks every returned resource must pass (type granted by a scope, patient
  compartment, granular scope match), failures dropped or, for single reads, answered 404;
  for a narrowed search, the proof that the upstream applied the narrowing;
- ``prefetch``: what must be fetched and checked before a write, a Binary read, or a vread /
  instance history of a policy-restricted type is sent;
- ``suppress_total``: ``Bundle.total`` cannot be trusted for this caller (decision 5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from gateway.fhir.target import Param
from gateway.policy.engine import BoundPolicies
from gateway.smart.scopes import Level, ScopeSet


class Prefetch(StrEnum):
    """A check the handler runs against the upstream before forwarding."""

    STORED_IN_COMPARTMENT = "stored-in-compartment"  # update/patch/delete: current version
    BINARY_SECURITY_CONTEXT = "binary-security-context"  # Binary read
    #: vread / instance history of a type policies may restrict for this caller: the current
    #: version must be readable too, else 404 (an old version escapes no later label)
    CURRENT_VISIBLE = "current-visible"


@dataclass(frozen=True, slots=True)
class Verify:
    """How to judge each resource that comes back."""

    scopes: ScopeSet
    levels: tuple[Level, ...]
    patient: str | None  # when set: compartment types must be in this patient's compartment
    permissions: frozenset[str] = frozenset({"r", "s"})
    #: privacy policies bound to this caller (None: no policy applies)
    policies: BoundPolicies | None = None
    #: the narrowing constraint a confined search was sent with: the searchset answering it
    #: must prove it was applied, else it is withheld whole (the narrowing proof, ``narrowing.py``)
    narrowing: Param | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str
    status: int = 200
    required_scope: str | None = None
    params: tuple[Param, ...] = ()
    verify: Verify | None = None
    prefetch: Prefetch | None = None
    suppress_total: bool = False
    #: instance history: one hidden version hides the whole answer (404), no partial history
    whole: bool = False
    #: for batch/transaction: one decision per entry, in order
    entries: tuple[Decision, ...] = field(default=())


def deny(reason: str, status: int = 403, required_scope: str | None = None) -> Decision:
    return Decision(allowed=False, reason=reason, status=status, required_scope=required_scope)
