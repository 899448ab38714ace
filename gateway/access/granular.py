"""Local verification of SMART v2 granular scopes (``patient/Observation.rs?category=sys|code``).

A granular scope restricts a resource type to the resources that match a token search. The
upstream narrows searches with the same parameters, but every returned resource (matches,
includes, history versions, batch entries) is checked here as well, so the gateway never relies
on the upstream's interpretation of a search.

Only ``token`` parameters whose expression is a union of simple paths are evaluable
(``TOKEN_PATHS``, generated from the R4 definitions). Anything else — another parameter type,
a modifier (``category:not``), a chained name, an unknown parameter, an empty value — is not
evaluable and never matches (fail closed).

Matching rules, per value of a parameter (FHIR token syntax, after percent-decoding):

- ``system|code``: a Coding (directly or inside a CodeableConcept) with exactly that ``system``
  and ``code``, or an Identifier with that ``system`` and ``value``. Primitive elements
  (``status``, ``id``) never match: their system is implicit and cannot be checked.
- ``|code``: a Coding or Identifier with no ``system`` and that code/value.
- ``code`` (no ``|``): only primitive elements (code, id, string, boolean as ``true``/``false``)
  equal to ``code``. A Coding in any system does NOT match: a scope on a coded element must
  name the system, since a code alone is ambiguous across code systems.
- ``system|`` (any code in a system) is not evaluable.

Commas separate alternatives (OR, ``\\,`` is an escaped comma); separate parameters, and repeats
of the same parameter, must all match (AND). Compiled queries are cached per
(type, query), so the per-resource cost is the element walk only.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from gateway.access.compartment import values_at
from gateway.fhir.tables import TOKEN_PATHS

__all__ = [
    "TokenValue",
    "is_evaluable",
    "matches_query",
    "matches_token",
    "parse_token_values",
]

#: (system, code): system None = no ``|`` in the value, "" = ``|code`` (explicitly no system).
TokenValue = tuple[str | None, str]
_Path = tuple[str, ...]

_PATHS: dict[str, dict[str, tuple[_Path, ...]]] = {
    rtype: {param: tuple(tuple(p.split(".")) for p in paths) for param, paths in params.items()}
    for rtype, params in TOKEN_PATHS.items()
}


def _coding_matches(coding: Any, values: Sequence[TokenValue], key: str) -> bool:
    if not isinstance(coding, dict):
        return False
    code = coding.get(key)
    if not isinstance(code, str):
        return False
    system = coding.get("system")
    for want_system, want_code in values:
        if want_system is None or want_code != code:
            continue
        if want_system == "":
            if system is None or system == "":
                return True
        elif system == want_system:
            return True
    return False


def _primitive_matches(value: Any, values: Sequence[TokenValue]) -> bool:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = value
    else:
        return False
    return any(system is None and code == text for system, code in values)


def _element_matches(element: Any, values: Sequence[TokenValue]) -> bool:
    if isinstance(element, dict):
        codings = element.get("coding")
        if codings is not None:  # CodeableConcept
            if isinstance(codings, list):
                return any(_coding_matches(c, values, "code") for c in codings)
            return False
        if "code" in element:  # Coding
            return _coding_matches(element, values, "code")
        if "value" in element:  # Identifier
            return _coding_matches(element, values, "value")
        return False
    return _primitive_matches(element, values)


def matches_token(
    resource: dict[str, Any],
    resource_type: str,
    param: str,
    values: Sequence[TokenValue],
) -> bool | None:
    """True if an element at ``param``'s paths matches one of ``values``; False if none does.

    None when ``param`` is not an evaluable token parameter of ``resource_type`` or the
    resource is not of that type (the caller fails closed).
    """
    paths = _PATHS.get(resource_type, {}).get(param)
    if paths is None or resource.get("resourceType") != resource_type:
        return None
    for path in paths:
        for element in values_at(resource, path):
            if _element_matches(element, values):
                return True
    return False


def parse_token_values(raw: str) -> tuple[TokenValue, ...] | None:
    """``sys|a,sys|b`` -> ((sys, a), (sys, b)); None if any alternative is not evaluable.

    Handles the FHIR search escapes (``\\,`` ``\\|`` ``\\$`` ``\\\\``). Not evaluable: an
    empty alternative, an empty code (``sys|``), a second unescaped ``|``, a dangling ``\\``.
    """
    out: list[TokenValue] = []
    system: str | None = None
    buf: list[str] = []
    n = len(raw)
    i = 0
    while i <= n:
        ch = raw[i] if i < n else ","  # a virtual comma ends the last alternative
        if i < n and ch == "\\":
            if i + 1 >= n:
                return None
            buf.append(raw[i + 1])
            i += 2
            continue
        if i < n and ch == "|":
            if system is not None:
                return None
            system = "".join(buf)
            buf = []
        elif ch == ",":
            code = "".join(buf)
            if not code:
                return None
            out.append((system, code))
            system = None
            buf = []
        else:
            buf.append(ch)
        i += 1
    return tuple(out)


_Compiled = tuple[tuple[tuple[_Path, ...], tuple[TokenValue, ...]], ...]


@lru_cache(maxsize=1024)
def _compile(resource_type: str, query: tuple[tuple[str, str], ...]) -> _Compiled | None:
    params = _PATHS.get(resource_type)
    if params is None:
        return None
    compiled: list[tuple[tuple[_Path, ...], tuple[TokenValue, ...]]] = []
    for name, raw in query:
        paths = params.get(name)  # a modifier or chain ("category:not") is not a key: None
        if paths is None:
            return None
        values = parse_token_values(raw)
        if values is None:
            return None
        compiled.append((paths, values))
    return tuple(compiled)


def is_evaluable(resource_type: str, query: tuple[tuple[str, str], ...]) -> bool:
    """True if :func:`matches_query` can evaluate ``query`` for ``resource_type`` (else it is
    always False, and a scope carrying it grants nothing)."""
    return _compile(resource_type, query) is not None


def matches_query(
    resource: dict[str, Any], resource_type: str, query: tuple[tuple[str, str], ...]
) -> bool:
    """True if ``resource`` satisfies every (param, values) pair of a granular scope's query.

    ``query`` is the decoded, ordered pairs of the scope's query string. An empty query
    matches (the scope has no restriction). Anything not evaluable -> False (fail closed).
    """
    compiled = _compile(resource_type, query)
    if compiled is None or resource.get("resourceType") != resource_type:
        return False
    for paths, values in compiled:
        if not any(
            _element_matches(element, values)
            for path in paths
            for element in values_at(resource, path)
        ):
            return False
    return True
