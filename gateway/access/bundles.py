"""Batch and transaction: every entry classified and authorized like a standalone request.

Entry URLs go through the same canonicaliser as request targets (relative only: absolute
URLs, other hosts and dot segments are refused). A transaction with any denied entry is
refused whole (403) and nothing is sent; a batch sends the allowed entries only, and each
denied one gets its own OperationOutcome entry in the ``batch-response``, in its position.
Nested Bundles and Bundles that are neither batch nor transaction are refused (400).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.access.authorize import Access, authorize_any
from gateway.access.decision import Decision, deny
from gateway.access.writes import check_body
from gateway.errors import BadRequest, GatewayError
from gateway.fhir.request import FhirRequest, Interaction, classify
from gateway.fhir.target import encode_path, encode_query, parse_target

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
    if btype not in BUNDLE_TYPES:
        raise BadRequest("Only batch or transaction Bundles may be posted to the base.")
    entries = doc.get("entry", [])
    if not isinstance(entries, list):
        raise BadRequest("Bundle.entry must be a list.")
    for entry in entries:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") == "Bundle":
            raise BadRequest("Nested Bundles are not accepted in a batch or transaction.")
    return str(btype)


def authorize_entries(
    accesses: tuple[Access, ...], doc: dict[str, Any], bases: tuple[str, ...]
) -> list[EntryDecision]:
    return [_entry(accesses, i, entry, bases) for i, entry in enumerate(doc.get("entry", []))]


def _entry(
    accesses: tuple[Access, ...], index: int, entry: Any, bases: tuple[str, ...]
) -> EntryDecision:
    request = entry.get("request") if isinstance(entry, dict) else None
    method = request.get("method") if isinstance(request, dict) else None
    url = request.get("url") if isinstance(request, dict) else None
    if method not in ENTRY_METHODS or not isinstance(url, str) or not url:
        return EntryDecision(index, None, deny("bundle.entry-invalid", 400))
    if "://" in url or url.startswith("/"):
        return EntryDecision(index, None, deny("bundle.entry-absolute-url", 400))
    try:
        target = parse_target("/" + url, "")
        assert target is not None
        req = classify(str(method), target)
    except GatewayError as exc:
        return EntryDecision(index, None, deny(exc.reason, exc.status))
    if req.interaction in (Interaction.BATCH, Interaction.DISCOVERY):
        return EntryDecision(index, req, deny("bundle.entry-invalid", 400))
    decision, access = authorize_any(accesses, req)
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
        if access.patient is not None and isinstance(request, dict) and request.get("ifNoneExist"):
            decision = deny("write.conditional")
        else:
            denial = check_body(access, req, entry.get("resource"), None, bases)
            decision = denial or decision
    return EntryDecision(index, req, decision)


def denied_entry(decision: Decision) -> dict[str, Any]:
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
