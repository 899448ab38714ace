"""The CapabilityStatement the gateway serves at ``{base}/metadata``.

The upstream's statement rebuilt from an allow-list (:func:`rewrite_capability_statement`) so
that it is honest about the gateway: its own URL and implementation, JSON only, no upstream
software name, version, publisher, narrative, extension or host; interactions, operations and
search parameters the gateway refuses to everyone removed. ``rest[0].security``
(:func:`security_section`) carries ``cors: true``, the ``SMART-on-FHIR`` service and the
``oauth-uris`` extension with the well-known document's endpoints (the Python ``fhirclient``
reads only that extension). Fetching and caching are
:class:`gateway.smart.discovery.Discovery`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from gateway.access.authorize import OPERATIONS
from gateway.fhir.tables import RESOURCE_TYPES

__all__ = [
    "OAUTH_URIS",
    "OAUTH_URI_NAMES",
    "OPERATION_DEFINITIONS",
    "SECURITY_SERVICE",
    "SYSTEM_INTERACTIONS",
    "TYPE_INTERACTIONS",
    "rewrite_capability_statement",
    "security_section",
]

SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
#: ``oauth-uris`` sub-extension -> well-known key (the CapabilityStatement mirrors the document)
OAUTH_URI_NAMES = (
    ("authorize", "authorization_endpoint"),
    ("token", "token_endpoint"),
    ("introspect", "introspection_endpoint"),
    ("revoke", "revocation_endpoint"),
    ("manage", "management_endpoint"),
    ("register", "registration_endpoint"),
)

#: interactions of ``rest.resource`` the gateway serves (each as the caller's scopes allow)
TYPE_INTERACTIONS = frozenset(
    {
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history-instance",
        "history-type",
        "create",
        "search-type",
    }
)
SYSTEM_INTERACTIONS = frozenset({"transaction", "batch", "search-system", "history-system"})
#: the operations the gateway allows, with the definitions whose semantics it applies
OPERATION_DEFINITIONS = {
    ("Patient", "everything"): "http://hl7.org/fhir/OperationDefinition/Patient-everything",
    ("Observation", "lastn"): "http://hl7.org/fhir/OperationDefinition/Observation-lastn",
}
_ALLOWED_OPERATIONS = {(rtype, name.removeprefix("$")) for rtype, name, _ in OPERATIONS}
#: resource elements copied as they are, before and after ``conditionalRead``
_SCALARS_BEFORE = ("versioning", "readHistory", "updateCreate", "conditionalCreate")
_SCALARS_AFTER = ("conditionalUpdate", "conditionalDelete")
_CODE_LISTS = ("referencePolicy", "searchInclude", "searchRevInclude")
#: conditional reads: the gateway answers If-None-Match itself and never forwards
#: If-Modified-Since (handler._forward), whatever the upstream supports
_CONDITIONAL_READ = {
    "full-support": "not-match",
    "not-match": "not-match",
    "modified-since": "not-supported",
    "not-supported": "not-supported",
}


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str) and v] if isinstance(value, list) else []


def _codes(items: Any, allowed: frozenset[str]) -> list[dict[str, str]]:
    seen: list[str] = []
    for item in items if isinstance(items, list) else []:
        code = item.get("code") if isinstance(item, dict) else None
        if isinstance(code, str) and code in allowed and code not in seen:
            seen.append(code)
    return [{"code": c} for c in seen]


def _search_params(items: Any, refused: frozenset[str]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        name, kind = item.get("name"), item.get("type")
        if not isinstance(name, str) or not isinstance(kind, str) or name in refused:
            continue
        param = {"name": name}
        if isinstance(item.get("definition"), str):
            param["definition"] = item["definition"]
        param["type"] = kind
        out.append(param)
    return out


def _operations(rtype: str, items: Any) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for item in items if isinstance(items, list) else []:
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            continue
        name = name.removeprefix("$")
        definition = OPERATION_DEFINITIONS.get((rtype, name))
        if definition is None or (rtype, name) not in _ALLOWED_OPERATIONS:
            continue
        if all(op["name"] != name for op in out):
            out.append({"name": name, "definition": definition})
    return out


def _resource(item: dict[str, Any], refused: Callable[[str], frozenset[str]]) -> dict[str, Any]:
    rtype = item["type"]
    out: dict[str, Any] = {"type": rtype}
    if isinstance(item.get("profile"), str):
        out["profile"] = item["profile"]
    if _strings(item.get("supportedProfile")):
        out["supportedProfile"] = _strings(item["supportedProfile"])
    interactions = _codes(item.get("interaction"), TYPE_INTERACTIONS)
    if interactions:
        out["interaction"] = interactions
    for key in _SCALARS_BEFORE:
        if isinstance(item.get(key), str | bool):
            out[key] = item[key]
    conditional_read = _CONDITIONAL_READ.get(str(item.get("conditionalRead")))
    if conditional_read is not None:
        out["conditionalRead"] = conditional_read
    for key in _SCALARS_AFTER:
        if isinstance(item.get(key), str | bool):
            out[key] = item[key]
    for key in _CODE_LISTS:
        if _strings(item.get(key)):
            out[key] = _strings(item[key])
    params = _search_params(item.get("searchParam"), refused(rtype))
    if params:
        out["searchParam"] = params
    operations = _operations(rtype, item.get("operation"))
    if operations:
        out["operation"] = operations
    return out


def rewrite_capability_statement(
    upstream: Mapping[str, Any],
    *,
    public_base: str,
    upstream_base: str,
    refused_params: Callable[[str | None], frozenset[str]] = lambda _: frozenset(),
) -> dict[str, Any]:
    """The upstream's CapabilityStatement as the gateway serves it (without ``security``).

    Built from an allow-list, so nothing the upstream says about itself (software, version,
    publisher, narrative, extensions, messaging, documents) is copied; URLs under the upstream
    base point at the gateway and any other URL on the upstream's host is dropped.
    """
    base = public_base.rstrip("/")
    rests = upstream.get("rest")
    rest_in: Mapping[str, Any] = {}
    if isinstance(rests, list):
        servers = [r for r in rests if isinstance(r, dict) and r.get("mode") == "server"]
        rest_in = servers[0] if servers else {}
    items = rest_in.get("resource")
    resources = [
        _resource(item, refused_params)
        for item in (items if isinstance(items, list) else [])
        if isinstance(item, dict) and item.get("type") in RESOURCE_TYPES
    ]
    rest: dict[str, Any] = {"mode": "server"}
    if resources:
        rest["resource"] = resources
    interactions = _codes(rest_in.get("interaction"), SYSTEM_INTERACTIONS)
    if interactions:
        rest["interaction"] = interactions
    params = _search_params(rest_in.get("searchParam"), refused_params(None))
    if params:
        rest["searchParam"] = params
    compartments = _strings(rest_in.get("compartment"))
    if compartments:
        rest["compartment"] = compartments
    date = upstream.get("date")
    version = upstream.get("fhirVersion")
    if not (isinstance(version, str) and version.startswith("4.0")):
        version = "4.0.1"
    patch_formats = [f for f in _strings(upstream.get("patchFormat")) if "json" in f]
    out: dict[str, Any] = {
        "resourceType": "CapabilityStatement",
        "url": f"{base}/metadata",
        "name": "FhirGatewayCapabilityStatement",
        "status": "active",
        "date": date if isinstance(date, str) and date else time.strftime("%Y-%m-%d"),
        "kind": "instance",
        "implementation": {
            "description": "FHIR R4 API behind a SMART on FHIR security gateway",
            "url": base,
        },
        "fhirVersion": version,
        "format": ["json", "application/fhir+json"],
        **({"patchFormat": patch_formats} if patch_formats else {}),
        "rest": [rest],
    }
    _relocate(out, upstream_base.rstrip("/"), base)
    return out


def _relocated(value: str, upstream: str, public: str) -> str | None:
    """``value`` with the upstream base replaced by the public one; None if it is another URL
    on the upstream's host (it has no public equivalent); the value itself otherwise."""
    if "://" not in value:
        return value
    try:
        netloc = urlsplit(value).netloc.lower()
    except ValueError:
        return None  # unparseable URL-like text: not worth the risk
    if netloc != urlsplit(upstream).netloc.lower():
        return value
    if value.lower() == upstream.lower() or value.lower().startswith(upstream.lower() + "/"):
        return public + value[len(upstream) :]
    return None


def _relocate(node: Any, upstream: str, public: str) -> None:
    """Apply :func:`_relocated` to every string of ``node`` in place (None: removed)."""
    if isinstance(node, dict):
        for key, value in list(node.items()):
            if isinstance(value, str):
                new = _relocated(value, upstream, public)
                if new is None:
                    del node[key]
                else:
                    node[key] = new
            else:
                _relocate(value, upstream, public)
    elif isinstance(node, list):
        kept = []
        for value in node:
            new = _relocated(value, upstream, public) if isinstance(value, str) else value
            if new is not None:
                _relocate(new, upstream, public)
                kept.append(new)
        node[:] = kept


def security_section(smart: Mapping[str, Any] | None) -> dict[str, Any]:
    """``rest[0].security``: CORS always; SMART when there is a SMART configuration."""
    security: dict[str, Any] = {"cors": True}
    if smart is None:
        return security
    uris = [
        {"url": name, "valueUri": smart[key]} for name, key in OAUTH_URI_NAMES if smart.get(key)
    ]
    security["extension"] = [{"url": OAUTH_URIS, "extension": uris}]
    security["service"] = [
        {
            "coding": [{"system": SECURITY_SERVICE, "code": "SMART-on-FHIR"}],
            "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
        }
    ]
    return security
