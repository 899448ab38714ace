"""Classify a canonical FHIR request into its RESTful interaction.

``classify(method, target)`` maps (HTTP method, validated path segments) to exactly one FHIR
interaction (http://hl7.org/fhir/R4/http.html), or refuses: an unknown resource type or an
invalid id is a 400, a method the interaction does not have is a 405. The route template
(``Observation/{id}``) is what logs and metrics show instead of the raw path, which may carry
patient ids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from gateway.errors import InvalidTarget, MethodNotAllowed, UnknownResourceType
from gateway.fhir.tables import RESOURCE_TYPES
from gateway.fhir.target import Param, Target

FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
OPERATION = re.compile(r"^\$[A-Za-z][A-Za-z0-9_\-]{0,63}$")


class Interaction(StrEnum):
    READ = "read"
    VREAD = "vread"
    UPDATE = "update"
    PATCH = "patch"
    DELETE = "delete"
    CREATE = "create"
    SEARCH_TYPE = "search-type"
    SEARCH_SYSTEM = "search-system"
    SEARCH_COMPARTMENT = "search-compartment"
    HISTORY_INSTANCE = "history-instance"
    HISTORY_TYPE = "history-type"
    HISTORY_SYSTEM = "history-system"
    CAPABILITIES = "capabilities"
    BATCH = "batch"  # batch or transaction: the body's Bundle.type decides
    OPERATION_SYSTEM = "operation-system"
    OPERATION_TYPE = "operation-type"
    OPERATION_INSTANCE = "operation-instance"
    DISCOVERY = "smart-discovery"
    PAGE = "page"  # following a paging cursor the gateway issued


READS = frozenset({"GET", "HEAD"})
#: parameters that shape the answer but select nothing (a conditional write needs criteria)
RESULT_PARAMS = frozenset({"_format", "_pretty", "_summary", "_elements"})
#: the compartments FHIR R4 defines (http://hl7.org/fhir/R4/compartmentdefinition.html)
COMPARTMENT_OWNERS = frozenset({"Patient", "Encounter", "RelatedPerson", "Practitioner", "Device"})


@dataclass(frozen=True, slots=True)
class FhirRequest:
    method: str
    interaction: Interaction
    route: str
    target: Target
    resource_type: str | None = None
    id: str | None = None
    version_id: str | None = None
    compartment_type: str | None = None  # Patient/x/{compartment_type}; "*" for all
    operation: str | None = None

    @property
    def params(self) -> tuple[Param, ...]:
        return self.target.params

    @property
    def is_search(self) -> bool:
        return self.interaction in (
            Interaction.SEARCH_TYPE,
            Interaction.SEARCH_SYSTEM,
            Interaction.SEARCH_COMPARTMENT,
        )


def _type(name: str) -> str:
    if name not in RESOURCE_TYPES:
        raise UnknownResourceType()
    return name


def _id(value: str) -> str:
    if not FHIR_ID.fullmatch(value):
        raise InvalidTarget("Invalid FHIR resource id.")
    return value


def _op(value: str) -> str:
    if not OPERATION.fullmatch(value):
        raise InvalidTarget("Invalid operation name.")
    return value


def _need(method: str, allowed: frozenset[str] | set[str]) -> None:
    if method not in allowed:
        raise MethodNotAllowed(headers={"Allow": ", ".join(sorted(allowed))})


def classify(method: str, target: Target) -> FhirRequest:
    s = target.segments
    n = len(s)

    def req(interaction: Interaction, route: str, **kw: str | None) -> FhirRequest:
        return FhirRequest(method, interaction, route, target, **kw)

    if n == 0:
        if method in READS and any(name == "_cursor" for name, _ in target.params):
            if len(target.params) != 1:
                raise InvalidTarget("A paging cursor takes no other parameters.")
            return req(Interaction.PAGE, "?_cursor")
        if method == "POST":
            return req(Interaction.BATCH, "{base}")
        _need(method, READS | {"POST"})
        return req(Interaction.SEARCH_SYSTEM, "?search")
    head = s[0]
    if head == "metadata" and n == 1:
        _need(method, READS)
        return req(Interaction.CAPABILITIES, "metadata")
    if head == ".well-known" and s == (".well-known", "smart-configuration"):
        _need(method, READS)
        return req(Interaction.DISCOVERY, ".well-known/smart-configuration")
    if head == "_search" and n == 1:
        _need(method, {"POST"})
        return req(Interaction.SEARCH_SYSTEM, "_search")
    if head == "_history" and n == 1:
        _need(method, READS)
        return req(Interaction.HISTORY_SYSTEM, "_history")
    if head.startswith("$") and n == 1:
        _need(method, READS | {"POST"})
        op = _op(head)
        return req(Interaction.OPERATION_SYSTEM, op, operation=op)

    rtype = _type(head)
    if n == 1:
        if method in READS:
            return req(Interaction.SEARCH_TYPE, f"{rtype}?search", resource_type=rtype)
        if method == "POST":
            return req(Interaction.CREATE, rtype, resource_type=rtype)
        if method in ("PUT", "PATCH", "DELETE") and any(
            name not in RESULT_PARAMS for name, _ in target.params
        ):
            # conditional update / patch / delete: the query selects the resource
            i = {"PUT": Interaction.UPDATE, "PATCH": Interaction.PATCH}.get(
                method, Interaction.DELETE
            )
            return req(i, f"{rtype}?conditional", resource_type=rtype)
        _need(method, READS | {"POST"})
    second = s[1]
    if n == 2:
        if second == "_search":
            _need(method, {"POST"})
            return req(Interaction.SEARCH_TYPE, f"{rtype}/_search", resource_type=rtype)
        if second == "_history":
            _need(method, READS)
            return req(Interaction.HISTORY_TYPE, f"{rtype}/_history", resource_type=rtype)
        if second.startswith("$"):
            _need(method, READS | {"POST"})
            op = _op(second)
            return req(
                Interaction.OPERATION_TYPE, f"{rtype}/{op}", resource_type=rtype, operation=op
            )
        rid = _id(second)
        by_method = {
            "GET": Interaction.READ,
            "HEAD": Interaction.READ,
            "PUT": Interaction.UPDATE,
            "PATCH": Interaction.PATCH,
            "DELETE": Interaction.DELETE,
        }
        if method not in by_method:
            _need(method, set(by_method))
        return req(by_method[method], f"{rtype}/{{id}}", resource_type=rtype, id=rid)

    rid = _id(second)
    third = s[2]
    if third == "_history":
        if n == 3:
            _need(method, READS)
            return req(
                Interaction.HISTORY_INSTANCE,
                f"{rtype}/{{id}}/_history",
                resource_type=rtype,
                id=rid,
            )
        if n == 4:
            _need(method, READS)
            return req(
                Interaction.VREAD,
                f"{rtype}/{{id}}/_history/{{vid}}",
                resource_type=rtype,
                id=rid,
                version_id=_id(s[3]),
            )
    elif third.startswith("$") and n == 3:
        _need(method, READS | {"POST"})
        op = _op(third)
        return req(
            Interaction.OPERATION_INSTANCE,
            f"{rtype}/{{id}}/{op}",
            resource_type=rtype,
            id=rid,
            operation=op,
        )
    elif rtype in COMPARTMENT_OWNERS and n in (3, 4) and (n == 3 or s[3] == "_search"):
        ctype = third if third == "*" else _type(third)
        _need(method, READS if n == 3 else {"POST"})
        route = f"{rtype}/{{id}}/{ctype}" + ("/_search" if n == 4 else "")
        return req(
            Interaction.SEARCH_COMPARTMENT,
            route,
            resource_type=rtype,
            id=rid,
            compartment_type=ctype,
        )
    raise InvalidTarget("The request path is not a FHIR interaction.")
