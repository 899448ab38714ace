"""Batch and transaction Bundles through the gateway (see ``access.bundles`` for the rules).

A transaction with a denied entry is refused whole before anything is sent. A batch sends
only its allowed entries, rebuilt from their validated, narrowed URLs; the answer is merged
back into the client's order, denied entries answered with their own OperationOutcome, and
every returned resource verified with its entry's own decision.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from gateway.access.authorize import Access
from gateway.access.bundles import (
    SINGLE_READS,
    Binder,
    EntryDecision,
    Guarded,
    authorize_entries,
    bundle_type,
    denied_entry,
    not_found_entry,
)
from gateway.access.verify import ENVELOPES, PolicyTally, ResourceCheck
from gateway.errors import BadRequest, UpstreamError
from gateway.fhir import json
from gateway.fhir.outcome import CHARSET, FHIR_JSON
from gateway.ingress import Body
from gateway.prechecks import raise_denial
from gateway.respond import check_status, decode_resource, is_json_response
from gateway.upstream.client import UpstreamClient
from gateway.upstream.links import UrlRewriter


async def handle_bundle(
    upstream: UpstreamClient,
    rewriter: UrlRewriter,
    headers: CIMultiDict[str],
    accesses: tuple[Access, ...],
    body: Body | None,
    *,
    bases: tuple[str, ...],
    realm: str,
    limit: int,
    bind: Binder | None = None,
    guarded: Guarded | None = None,
    tally: PolicyTally | None = None,
    note: Callable[[dict[str, Any]], None] | None = None,
) -> web.Response:
    """Judge every entry, send the allowed ones, verify what comes back; ``note`` sees the
    verified reply (the audit record names the resources and patients it carries)."""
    doc = body.doc if body is not None else None
    btype = bundle_type(doc)
    assert isinstance(doc, dict)
    entries = authorize_entries(accesses, doc, bases, bind, guarded)
    denied = [e for e in entries if not e.decision.allowed]
    if btype == "transaction" and denied:
        raise_denial(denied[0].decision, realm)  # all or nothing: nothing is sent
    allowed = [e for e in entries if e.decision.allowed]
    results: list[Any] = [None if e.decision.allowed else denied_entry(e.decision) for e in entries]
    if allowed:
        answer, status = await _send(upstream, rewriter, headers, doc, btype, allowed, limit)
        if status >= 400:  # the upstream refused the whole Bundle: relay its outcome
            return web.Response(
                status=status, body=json.encode(answer), content_type=FHIR_JSON, charset=CHARSET
            )
        for entry, returned in zip(allowed, answer["entry"], strict=True):
            results[entry.index] = _verified(entry, returned, bases, tally)
    reply = {"resourceType": "Bundle", "type": f"{btype}-response", "entry": results}
    if note is not None:
        note(reply)
    return web.Response(body=json.encode(reply), content_type=FHIR_JSON, charset=CHARSET)


async def _send(
    upstream: UpstreamClient,
    rewriter: UrlRewriter,
    headers: CIMultiDict[str],
    doc: dict[str, Any],
    btype: str,
    allowed: list[EntryDecision],
    limit: int,
) -> tuple[dict[str, Any], int]:
    outgoing = {
        "resourceType": "Bundle",
        "type": btype,
        "entry": [_rebuilt(doc["entry"][e.index], e) for e in allowed],
    }
    headers = CIMultiDict(headers)
    headers["Content-Type"] = FHIR_JSON
    headers["Accept"] = FHIR_JSON
    call = await upstream.send("POST", upstream.url("", ""), headers, json.encode(outgoing))
    try:
        check_status(call)
        if not is_json_response(call):
            raise UpstreamError(reason="upstream.not-fhir")
        answer = decode_resource(await upstream.read_body(call, limit))
        status = call.response.status
    finally:
        call.response.release()
    rewriter.rewrite_json(answer)
    if status >= 400:
        if answer.get("resourceType") != "OperationOutcome":
            raise UpstreamError(reason="upstream.not-fhir")
        return answer, status
    returned = answer.get("entry")
    if (
        answer.get("type") != f"{btype}-response"
        or not isinstance(returned, list)
        or len(returned) != len(allowed)
        or not all(isinstance(r, dict) for r in returned)
    ):
        raise UpstreamError(reason="upstream.bundle-response")
    return answer, status


def _rebuilt(entry: dict[str, Any], decision: EntryDecision) -> dict[str, Any]:
    out = copy.copy(entry)
    request = dict(entry["request"])
    request["url"] = decision.url  # validated parts plus the gateway's narrowing
    if request.get("method") in ("GET", "HEAD"):
        # a 304 carries no resource to verify and confirms what exists (as in handler._forward)
        request.pop("ifNoneMatch", None)
        request.pop("ifModifiedSince", None)
    out["request"] = request
    return out


def _verified(
    entry: EntryDecision,
    returned: dict[str, Any],
    bases: tuple[str, ...],
    tally: PolicyTally | None = None,
) -> Any:
    verify = entry.decision.verify
    status = str((returned.get("response") or {}).get("status", ""))[:3]
    single = entry.request is not None and entry.request.interaction in SINGLE_READS
    if single and (status in ("404", "410") or "resource" not in returned):
        # the gateway's own 404, as for a hidden resource (decision 3); a read answered
        # without a resource (a 304) cannot be verified and would confirm what exists
        return not_found_entry()
    if "resource" not in returned or verify is None:
        return returned
    check = ResourceCheck(verify, bases, tally)
    resource = returned["resource"]
    if (
        isinstance(resource, dict)
        and resource.get("resourceType") == "Bundle"
        and (resource.get("type") in ENVELOPES)
    ):  # a search or history answer: decision 5 and "whole" as for a request on its own
        check.filter_bundle(resource, suppress_total=entry.decision.suppress_total)
        if entry.decision.whole and (check.removed or not resource.get("entry")):
            return not_found_entry()
        return returned
    if check.visible(resource):
        return returned
    return not_found_entry()


def require_bundle_body(body: Body | None) -> None:
    if body is None or body.doc is None:
        raise BadRequest("A batch or transaction needs a Bundle body.")
