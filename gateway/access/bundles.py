"""Batch and transaction: every entry classified and authorized like a standalone request.

Entry URLs go through the same canonicaliser as request targets (relative only: absolute
URLs, other hosts and dot segments are refused). A transaction with any denied entry is
refused whole (403) and nothing is sent; a batch sends the allowed entries only, and each
denied one gets its own OperationOutcome entry in the ``batch-response``, in its position.
Nested Bundles and Bundles that are neither batch nor transaction are refused (400).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.access.authorize import Access, authorize_any
from gateway.access.decision import Decision, deny
from gateway.access.policy_gate import apply_policies
from gateway.access.writes import check_body
from gateway.errors import BadRequest, GatewayError
from gateway.fhir.request import FhirRequest, Interaction, classify
from gateway.fhir.target import encode_path, encode_query, parse_target
from gateway.policy.engine import BoundPolicies

BUNDLE_TYPES = frozenset({"batch", "transaction"})
ENTRY_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class EntryDecision:
    index: int
    request: FhirRequest | None
    decision: Decision

    @property
    def url(self) -> str:
        """The entry URL rebuilt from validated parts and the decision's parameters."""
        assert self.request is not None
        path = encode_path(self.request.target.segments)
        query = encode_query(self.decision.params)
        return f"{path}?{query}" if query else path


def bundle_type(doc: Any) -> str:
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        raise BadRequest("Only batch or transaction Bundles may be posted to the base.")
    btype = doc.get("type")
    if not isinstance(btype, str) or btype not in BUNDLE_TYPES:
        raise BadRequest("Only batch or transaction Bundles may be posted to the base.")
    entries = doc.get("entry", [])
    if not isinstance(entries, list):
        raise BadRequest("Bundle.entry must be a list.")
    for entry in entries:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") == "Bundle":
            raise BadRequest("Nested Bundles are not accepted in a batch or transaction.")
    return str(btype)


#: binds the privacy policies for one view of the caller
Binder = Callable[[Access], BoundPolicies]
#: whether any privacy policy concerns a type (its writes must be judged alone)
Guarded = Callable[[str], bool]


def authorize_entries(
    accesses: tuple[Access, ...],
    doc: dict[str, Any],
    bases: tuple[str, ...],
    bind: Binder | None = None,
    guarded: Guarded | None = None,
) -> list[EntryDecision]:
    entries = doc.get("entry", [])
    return [_entry(accesses, i, entry, bases, bind, guarded) for i, entry in enumerate(entries)]


#: the entry interactions whose ``resource`` is the request body (everything else: none);
#: an operation's ``Parameters`` are judged with the operation itself by ``authorize``
BODY_ENTRIES = frozenset(
    {
        Interaction.CREATE,
        Interaction.UPDATE,
        Interaction.PATCH,
        Interaction.OPERATION_TYPE,
        Interaction.OPERATION_INSTANCE,
        Interaction.OPERATION_SYSTEM,
    }
)


def _entry(
    accesses: tuple[Access, ...],
    index: int,
    entry: Any,
    bases: tuple[str, ...],
    bind: Binder | None = None,
    guarded: Guarded | None = None,
) -> EntryDecision:
    request = entry.get("request") if isinstance(entry, dict) else None
    method = request.get("method") if isinstance(request, dict) else None
    url = request.get("url") if isinstance(request, dict) else None
    if not isinstance(method, str) or method not in ENTRY_METHODS:
        return EntryDecision(index, None, deny("bundle.entry-invalid", 400))
    if not isinstance(url, str) or not url:
        return EntryDecision(index, None, deny("bundle.entry-invalid", 400))
    if "://" in url or url.startswith("/"):
        return EntryDecision(index, None, deny("bundle.entry-absolute-url", 400))
    try:
        target = parse_target("/" + url, "")
        assert target is not None
        req = classify(str(method), target)
    except GatewayError as exc:
        return EntryDecision(index, None, deny(exc.reason, exc.status))
    if req.interaction in (Interaction.BATCH, Interaction.DISCOVERY, Interaction.PAGE):
        return EntryDecision(index, req, deny("bundle.entry-invalid", 400))
    if isinstance(entry, dict) and "resource" in entry and req.interaction not in BODY_ENTRIES:
        # e.g. POST Observation/_search carrying a resource: judged as a search, a server may
        # still execute it as a create (sekmet does): an entry's resource only with a write
        return EntryDecision(index, req, deny("bundle.entry-unexpected-resource", 400))
    decision, access = authorize_any(accesses, req)
    bound = bind(access) if bind is not None and decision.allowed else None
    if bound is not None:
        decision = apply_policies(req, decision, bound)
    if (
        guarded is not None
        and decision.allowed
        and req.interaction in (Interaction.UPDATE, Interaction.PATCH, Interaction.DELETE)
        and req.resource_type is not None
        and guarded(req.resource_type)
    ):
        # the stored version must be judged by the policies first: only as its own request
        decision = deny("bundle.entry-needs-own-request")
    if decision.allowed and decision.prefetch is not None:
        # a confined update/patch/delete needs the stored version checked first: only alone
        decision = deny("bundle.entry-needs-own-request")
    elif decision.allowed and req.method == "PATCH" and access.patient is not None:
        decision = deny("bundle.entry-needs-own-request")
    elif (
        decision.allowed
        and req.method in ("POST", "PUT")
        and req.interaction in (Interaction.CREATE, Interaction.UPDATE)
    ):
        restricted = bound is not None and bound.may_restrict(str(req.resource_type))
        conditional = isinstance(request, dict) and request.get("ifNoneExist")
        if (access.patient is not None or restricted) and conditional:
            decision = deny("write.conditional")
        else:
            denial = check_body(access, req, entry.get("resource"), None, bases)
            decision = denial or decision
    return EntryDecision(index, req, decision)


#: single-resource reads: a 404 entry is always the gateway's own (decision 3)
SINGLE_READS = frozenset({Interaction.READ, Interaction.VREAD, Interaction.HISTORY_INSTANCE})


def not_found_entry() -> dict[str, Any]:
    """One 404 entry for "hidden" and "does not exist" alike (decision 3)."""
    return {
        "response": {
            "status": "404 Not Found",
            "outcome": {
                "resourceType": "OperationOutcome",
                "issue": [
                    {
                        "severity": "error",
                        "code": "not-found",
                        "diagnostics": "The requested resource was not found.",
                    }
                ],
            },
        }
    }


def denied_entry(decision: Decision) -> dict[str, Any]:
    if decision.status == 404:
        return not_found_entry()
    status = {400: "400 Bad Request", 404: "404 Not Found"}.get(decision.status, "403 Forbidden")
    code = {400: "invalid", 404: "not-found"}.get(decision.status, "forbidden")
    return {
        "response": {
            "status": status,
            "outcome": {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": code, "diagnostics": "Entry refused."}],
            },
        }
    }
