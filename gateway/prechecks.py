"""Checks that need the upstream before a request may be forwarded (the I/O side of authorize).

- update / patch / delete by a confined caller: the stored version is fetched first and must
  be in the patient's compartment (else 404, as if it did not exist); the new body (for a JSON
  Patch: the patch applied locally to the stored version) is judged by ``access.writes``; the
  write is then pinned to the version that was checked (``If-Match``), so nothing can change
  between the check and the write;
- create: the body is judged the same way; a conditional create is refused when confined;
- Binary read by a confined caller: its ``securityContext`` must be a resource the caller may
  see (a Binary without one is answered 404), and the Binary's current version must pass the
  caller's privacy policies;
- vread / instance history of a type policies may restrict for this caller
  (``Prefetch.CURRENT_VISIBLE``): the current version is fetched and must be readable (scopes,
  compartment, policies), else the same 404 as for a nonexistent resource; an older version
  never escapes a label added later.
"""

from __future__ import annotations

import copy
from typing import Any

from gateway.access.authorize import Access
from gateway.access.decision import Decision, Prefetch, deny
from gateway.access.verify import ResourceCheck
from gateway.access.writes import apply_patch, check_body
from gateway.errors import BadRequest, Forbidden, NotFound, UnsupportedMediaType, UpstreamError
from gateway.fhir.request import FhirRequest, Interaction
from gateway.ingress import PATCH_TYPES, Body
from gateway.policy import BoundPolicies, PolicySet
from gateway.upstream.fetch import Fetcher

WRITES = frozenset({Interaction.CREATE, Interaction.UPDATE, Interaction.PATCH})
STORED_WRITES = frozenset({Interaction.UPDATE, Interaction.PATCH, Interaction.DELETE})


async def precheck(
    fetcher: Fetcher,
    access: Access,
    req: FhirRequest,
    decision: Decision,
    body: Body | None,
    if_none_exist: bool,
    policies: PolicySet,
    caller: BoundPolicies | None = None,
) -> dict[str, str]:
    """Raise when the request must not be forwarded; return extra upstream headers.

    ``caller``: the policies bound to this caller (``decision.verify.policies`` is set only
    when they may restrict what it reads; writes are judged for every caller).
    """
    extra: dict[str, str] = {}
    bound = decision.verify.policies if decision.verify is not None else None
    if decision.prefetch is Prefetch.BINARY_SECURITY_CONTEXT:
        await _binary_security_context(fetcher, access, req, bound)
        return extra
    if decision.prefetch is Prefetch.CURRENT_VISIBLE:
        await _current_visible(fetcher, req, decision)
        return extra
    restricted = (
        caller is not None
        and req.resource_type is not None
        and (caller.may_restrict(req.resource_type))
    )
    guarded = req.resource_type is not None and bool(policies.for_type(req.resource_type))
    stored: dict[str, Any] | None = None
    if decision.prefetch is Prefetch.STORED_IN_COMPARTMENT or (
        guarded and req.interaction in STORED_WRITES
    ):
        if req.id is None:  # a conditional write cannot be judged against a stored version
            raise_denial(deny("policy.conditional-write"))
        stored = await _stored(fetcher, access, req, bound)
        version = (stored.get("meta") or {}).get("versionId")
        if isinstance(version, str) and version:
            extra["If-Match"] = f'W/"{version}"'  # the write applies to what was checked
    if req.interaction not in WRITES or (body is not None and body.stream is not None):
        return extra  # raw Binary content: only unconfined callers get here (see authorize)
    if (access.patient is not None or restricted) and (
        req.interaction is Interaction.CREATE and if_none_exist
    ):  # the match would be an existence oracle on what the caller may not see
        raise_denial(deny("write.conditional"))
    doc = body.doc if body is not None else None
    if req.interaction is Interaction.PATCH:
        if body is None or body.content_type not in PATCH_TYPES:
            if access.patient is not None:
                raise UnsupportedMediaType("Only JSON Patch is accepted for this caller.")
            if stored is not None and policies.guarding(stored):
                raise_denial(deny("policy.unjudgeable-patch"))  # its result cannot be judged
            return extra
        if stored is None:
            return extra  # unconfined, unguarded: the upstream applies it
        doc = apply_patch(stored, doc)
        if doc is None:
            raise BadRequest("The JSON Patch does not apply to the stored resource.")
    denial = check_body(access, req, doc, stored, fetcher.bases)
    if denial is not None:
        raise_denial(denial)
    if stored is not None and caller is not None and isinstance(doc, dict):
        escaped = policies.write_escapes(stored, doc, caller.view)
        if escaped:  # a label removed or a status changed so as to escape a policy
            raise_denial(deny(f"policy:{escaped[0]}"))
    return extra


async def _stored(
    fetcher: Fetcher, access: Access, req: FhirRequest, bound: BoundPolicies | None
) -> dict[str, Any]:
    """The stored version a write would change: 404 unless the caller may see it."""
    assert req.resource_type is not None and req.id is not None
    stored = await fetcher.get(req.resource_type, req.id)
    if stored is None:
        raise NotFound()
    check = ResourceCheck(access.verify(frozenset("cruds")), fetcher.bases)
    if not check.in_compartment(stored):
        raise NotFound()
    if bound is not None and not bound.evaluate(copy.deepcopy(stored)).visible:
        raise NotFound()  # a resource the caller could not read cannot be written either
    return stored


async def _current_visible(fetcher: Fetcher, req: FhirRequest, decision: Decision) -> None:
    """A vread / instance history answers only when a read of the current version would:
    withheld, outside the compartment, deleted or unjudgeable -> 404 (decision 3)."""
    assert req.resource_type is not None and req.id is not None and decision.verify is not None
    try:
        current = await fetcher.get(req.resource_type, req.id)
    except UpstreamError:  # an answer that cannot be judged (status, JSON, type): fail closed
        raise NotFound() from None
    check = ResourceCheck(decision.verify, fetcher.bases)
    if current is None or not check.visible(copy.deepcopy(current)):
        raise NotFound()


async def _binary_security_context(
    fetcher: Fetcher, access: Access, req: FhirRequest, bound: BoundPolicies | None
) -> None:
    assert req.id is not None
    binary = await fetcher.get("Binary", req.id)
    if (  # the current version, for a vread too
        binary is not None
        and bound is not None
        and not bound.evaluate(copy.deepcopy(binary)).visible
    ):
        raise NotFound()
    context = binary.get("securityContext") if binary else None
    reference = context.get("reference") if isinstance(context, dict) else None
    target = fetcher.split_reference(reference) if isinstance(reference, str) else None
    if target is None:
        raise NotFound()
    resource = await fetcher.get(*target)
    if resource is None or not ResourceCheck(access.verify(), fetcher.bases).visible(resource):
        raise NotFound()


def raise_denial(decision: Decision, realm: str = "") -> None:
    """Turn a denial into the gateway's error (decisions 2-4)."""
    if decision.status == 404:
        raise NotFound()
    if decision.status == 400:
        raise BadRequest("The request is not allowed in this form.", reason=decision.reason)
    headers = {}
    if decision.required_scope and realm:
        headers["WWW-Authenticate"] = (
            f'Bearer realm="{realm}", error="insufficient_scope", scope="{decision.required_scope}"'
        )
    raise Forbidden(headers=headers, reason=decision.reason)
