"""Rewrite: what exactly goes upstream, as plain data (pure; ``handler._forward`` sends it).

- Non-search interactions go as they came (HEAD as GET: the answer must be verified before
  its headers can be given), with the decision's parameters.
- Searches (type, system, compartment) travel as the PHI rules say: POST ``.../_search`` with
  every parameter in an ``application/x-www-form-urlencoded`` body and no query string, or
  GET with the query string. A client's own POST ``_search`` always stays a POST (its query
  and form parameters, already united, all go in the body) unless the upstream cannot take it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.fhir.request import FhirRequest, Interaction
from gateway.fhir.target import Param
from gateway.phi.rules import PhiRules, Transport

SEARCHES = frozenset(
    {Interaction.SEARCH_TYPE, Interaction.SEARCH_SYSTEM, Interaction.SEARCH_COMPARTMENT}
)


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    method: str
    path: tuple[str, ...]
    query: tuple[Param, ...] = ()
    form: tuple[Param, ...] | None = None  # set: POST with this form body


def search_path(req: FhirRequest) -> tuple[str, ...]:
    """The search's path without a trailing ``_search``."""
    segments = req.target.segments
    return segments[:-1] if segments and segments[-1] == "_search" else segments


def plan(req: FhirRequest, params: tuple[Param, ...], rules: PhiRules) -> UpstreamRequest:
    if req.operation == "$lastn" and req.method in ("GET", "HEAD"):
        # a search in all but name: its (narrowed) parameters follow the PHI rules
        if rules.transport("Observation", params) is Transport.POST:
            return UpstreamRequest("POST", req.target.segments, (), params)
        return UpstreamRequest("GET", req.target.segments, params)
    if req.interaction not in SEARCHES:
        method = "GET" if req.method == "HEAD" else req.method
        return UpstreamRequest(method, req.target.segments, params)
    rtype = req.compartment_type if req.compartment_type not in (None, "*") else None
    if req.interaction is Interaction.SEARCH_TYPE:
        rtype = req.resource_type
    transport = rules.transport(rtype, params, client_post=req.method == "POST")
    path = search_path(req)
    if transport is Transport.POST:
        return UpstreamRequest("POST", (*path, "_search"), (), params)
    return UpstreamRequest("GET", path, params)
