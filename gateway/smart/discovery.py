"""SMART discovery: ``{base}/.well-known/smart-configuration`` and ``{base}/metadata``.

Apps find the authorization server through the FHIR base they were pointed at (SMART App
Launch 2.x, "Conformance"): the JS client reads the well-known document, the Python
``fhirclient`` only the ``oauth-uris`` extension of the CapabilityStatement. Both are public
(no token; any origin, see ``cors.py``) and built here:

- **SMART configuration** (:meth:`Discovery.smart_configuration`): the ``smart`` config
  section, merged with the authorization server's own discovery document when
  ``smart.openid_configuration_url`` is set (fetched and cached; config wins; only the SMART
  keys, only absolute URLs). ``code_challenge_methods_supported`` is always ``["S256"]``.
  ``capabilities`` is truthful: each one is checked against the document it is advertised
  with (:func:`capability_gaps`) — a gap is a configuration error at start-up
  (:func:`config_problems`) and, when the authorization server's document contradicts a
  capability later, the capability is dropped with a warning. ``issuer`` and ``jwks_uri``
  appear exactly when ``sso-openid-connect`` does. Without a token endpoint there is no SMART
  configuration: 404.
- **CapabilityStatement** (:meth:`Discovery.capability_statement`): the upstream's, fetched
  and cached for ``smart.cache_ttl_s``, rebuilt from an allow-list
  (:func:`rewrite_capability_statement`) so that it is honest about the gateway: its own URL
  and implementation, JSON only, no upstream software name, version, publisher, narrative,
  extension or host; interactions, operations and search parameters the gateway refuses to
  everyone removed; ``rest[0].security`` with ``cors: true``, the ``SMART-on-FHIR`` service and
  the ``oauth-uris`` extension carrying the well-known document's endpoints.

A failed refresh keeps the last good document (retried at most every :data:`RETRY_S`
seconds); a document that was never fetched is a 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from gateway.access.authorize import OPERATIONS
from gateway.config import Config, SmartConfig, is_loopback_url
from gateway.errors import GatewayError, NotFound, ServiceUnavailable, UpstreamError
from gateway.fhir import json
from gateway.fhir.outcome import FHIR_JSON
from gateway.fhir.tables import RESOURCE_TYPES
from gateway.ops.logging import log
from gateway.phi.rules import PhiRules
from gateway.smart.scopes import Scope, parse_scopes
from gateway.upstream.client import UpstreamClient

__all__ = [
    "CAPABILITY_RULES",
    "OAUTH_URIS",
    "SECURITY_SERVICE",
    "Discovery",
    "Gap",
    "TtlDocument",
    "capability_gaps",
    "config_problems",
    "configured_document",
    "rewrite_capability_statement",
    "security_section",
]

logger = logging.getLogger("gateway.discovery")

SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
#: seconds between attempts to refresh a document whose last refresh failed
RETRY_S = 10.0
#: the authorization server's discovery document is small; anything larger is refused
AS_DOCUMENT_LIMIT = 1024 * 1024

#: the keys of the well-known document, in the order SMART App Launch lists them
URL_KEYS = (
    "issuer",
    "jwks_uri",
    "authorization_endpoint",
    "token_endpoint",
    "registration_endpoint",
    "management_endpoint",
    "introspection_endpoint",
    "revocation_endpoint",
)
LIST_KEYS = (
    "grant_types_supported",
    "token_endpoint_auth_methods_supported",
    "scopes_supported",
    "response_types_supported",
)
DOCUMENT_ORDER = (
    "issuer",
    "jwks_uri",
    "authorization_endpoint",
    "grant_types_supported",
    "token_endpoint",
    "token_endpoint_auth_methods_supported",
    "registration_endpoint",
    "scopes_supported",
    "response_types_supported",
    "management_endpoint",
    "introspection_endpoint",
    "revocation_endpoint",
)
#: ``oauth-uris`` sub-extension -> well-known key (the CapabilityStatement mirrors the document)
OAUTH_URI_NAMES = (
    ("authorize", "authorization_endpoint"),
    ("token", "token_endpoint"),
    ("introspect", "introspection_endpoint"),
    ("revoke", "revocation_endpoint"),
    ("manage", "management_endpoint"),
    ("register", "registration_endpoint"),
)
SSO = "sso-openid-connect"
SSO_KEYS = ("issuer", "jwks_uri")


# --------------------------------------------------------------------------- capabilities


@dataclass(frozen=True, slots=True)
class Rule:
    """What a capability needs from the document it is advertised with.

    ``keys``: URLs that must be present. ``with_any``: another capability that must be
    advertised too. ``listed``: (list key, accepted values): when the document carries that
    list, it must contain one of the values. ``scope``: when ``scopes_supported`` is known, one
    of its data scopes must satisfy the predicate.
    """

    keys: tuple[str, ...] = ()
    with_any: tuple[str, ...] = ()
    listed: tuple[tuple[str, frozenset[str]], ...] = ()
    scope: Callable[[Scope], bool] | None = None
    scope_text: str = ""


_CODE = ("response_types_supported", frozenset({"code"}))
_AUTH_CODE = ("grant_types_supported", frozenset({"authorization_code"}))
LAUNCHES = ("launch-ehr", "launch-standalone")

#: every capability the gateway can advertise, with what backs it (SMART App Launch 2.x,
#: "Capability Sets"). The token endpoint backs them all (checked separately).
CAPABILITY_RULES: Mapping[str, Rule] = {
    "launch-ehr": Rule(
        keys=("authorization_endpoint",),
        listed=(_CODE, _AUTH_CODE, ("scopes_supported", frozenset({"launch"}))),
    ),
    "launch-standalone": Rule(keys=("authorization_endpoint",), listed=(_CODE, _AUTH_CODE)),
    "client-public": Rule(
        with_any=LAUNCHES,
        listed=(("token_endpoint_auth_methods_supported", frozenset({"none"})),),
    ),
    "client-confidential-symmetric": Rule(
        listed=(
            (
                "token_endpoint_auth_methods_supported",
                frozenset({"client_secret_basic", "client_secret_post"}),
            ),
        ),
    ),
    "context-ehr-patient": Rule(with_any=("launch-ehr",)),
    "context-standalone-patient": Rule(
        with_any=("launch-standalone",),
        listed=(("scopes_supported", frozenset({"launch/patient"})),),
    ),
    "permission-patient": Rule(scope=lambda s: s.level == "patient", scope_text="patient/"),
    "permission-user": Rule(scope=lambda s: s.level == "user", scope_text="user/"),
    "permission-v1": Rule(scope=lambda s: s.v1, scope_text="SMART v1 (.read/.write/.*)"),
    "permission-v2": Rule(scope=lambda s: not s.v1, scope_text="SMART v2 (.cruds)"),
    "permission-offline": Rule(
        listed=(
            ("scopes_supported", frozenset({"offline_access"})),
            ("grant_types_supported", frozenset({"refresh_token"})),
        ),
    ),
    SSO: Rule(keys=SSO_KEYS, listed=(("scopes_supported", frozenset({"openid"})),)),
}


@dataclass(frozen=True, slots=True)
class Gap:
    """A capability the document does not back. ``missing``: the absent key, if that is why."""

    capability: str
    reason: str
    missing: str | None = None


def capability_gaps(doc: Mapping[str, Any], capabilities: Sequence[str]) -> list[Gap]:
    """Every capability in ``capabilities`` that ``doc`` (a well-known document) does not back.

    Lists the document does not carry are unknown, not empty: they are not held against it.
    """
    gaps: list[Gap] = []
    advertised = set(capabilities)
    scopes = doc.get("scopes_supported")
    parsed = parse_scopes(list(scopes)).scopes if isinstance(scopes, list) else None
    for cap in capabilities:
        rule = CAPABILITY_RULES.get(cap)
        if rule is None:
            gaps.append(Gap(cap, "is not a capability the gateway can advertise"))
            continue
        for key in ("token_endpoint", *rule.keys):
            if not doc.get(key):
                gaps.append(Gap(cap, f"needs {key}", missing=key))
        if rule.with_any and not advertised.intersection(rule.with_any):
            gaps.append(Gap(cap, f"needs the {' or '.join(rule.with_any)} capability"))
        for key, accepted in rule.listed:
            values = doc.get(key)
            if isinstance(values, list) and not accepted.intersection(values):
                wanted = " or ".join(sorted(accepted))
                gaps.append(Gap(cap, f"needs {wanted} in {key}"))
        if rule.scope is not None and parsed is not None and not any(map(rule.scope, parsed)):
            gaps.append(Gap(cap, f"needs a {rule.scope_text} scope in scopes_supported"))
    return gaps


def configured_document(smart: SmartConfig) -> dict[str, Any]:
    """The well-known keys the ``smart`` section sets (the rest may come from the AS)."""
    doc: dict[str, Any] = {}
    for key in (*URL_KEYS, *LIST_KEYS):
        value = getattr(smart, key)
        if value is not None:
            doc[key] = list(value) if isinstance(value, list) else value
    return doc


def config_problems(cfg: Config) -> list[str]:
    """Start-up checks of the ``smart`` section (``config.parse_config`` reports them).

    With ``openid_configuration_url`` a key that is simply absent may still come from the
    authorization server, so only contradictions are errors then.
    """
    smart = cfg.smart
    doc = configured_document(smart)
    merged_later = smart.openid_configuration_url is not None
    problems = [
        f"smart.capabilities: {gap.capability} {gap.reason}"
        for gap in capability_gaps(doc, smart.capabilities)
        if not (merged_later and gap.missing is not None)
    ]
    for key in SSO_KEYS:
        if key in doc and SSO not in smart.capabilities:
            problems.append(f"smart.{key}: advertised only with the {SSO} capability")
    if smart.scopes_supported is not None:
        refused = parse_scopes(smart.scopes_supported).rejected
        if refused:
            problems.append(
                "smart.scopes_supported: the gateway grants nothing for "
                + ", ".join(sorted(refused))
            )
    used = bool(doc or smart.capabilities or merged_later)
    if used and "token_endpoint" not in doc and not merged_later:
        problems.append("smart.token_endpoint: required (or smart.openid_configuration_url)")
    if used and not cfg.auth.jwt and cfg.auth.introspection is None:
        problems.append(
            "smart: apps are sent to an authorization server, but the gateway accepts no "
            "tokens (configure auth.jwt or auth.introspection)"
        )
    return problems


# --------------------------------------------------------------------------- the caches

T = TypeVar("T")


class DocumentUnavailable(Exception):
    """A discovery document could not be fetched (the message names no host or value)."""


class TtlDocument(Generic[T]):
    """One document fetched on demand and reused for ``ttl_s`` seconds.

    Concurrent callers share one fetch. When a refresh fails, the last good document is
    served and the next attempt waits :data:`RETRY_S` (at most ``ttl_s``); ``get`` returns
    None only when no fetch ever succeeded.
    """

    def __init__(
        self,
        name: str,
        fetch: Callable[[], Awaitable[T]],
        ttl_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._name = name
        self._fetch = fetch
        self._ttl = ttl_s
        self._clock = clock
        self._value: T | None = None
        self._next_attempt = float("-inf")
        self._lock = asyncio.Lock()

    async def get(self) -> T | None:
        if self._clock() < self._next_attempt:
            return self._value
        async with self._lock:
            now = self._clock()
            if now < self._next_attempt:
                return self._value  # another caller refreshed it meanwhile
            try:
                self._value = await self._fetch()
            except (GatewayError, DocumentUnavailable, aiohttp.ClientError, TimeoutError) as exc:
                self._next_attempt = now + min(RETRY_S, self._ttl)
                log(
                    logger,
                    logging.WARNING,
                    "discovery.refresh-failed",
                    document=self._name,
                    error=type(exc).__name__,
                    reason=getattr(exc, "reason", None),
                    serving="last-good" if self._value is not None else "none",
                )
            else:
                self._next_attempt = now + self._ttl
            return self._value


# --------------------------------------------------------------------------- the statement

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


# --------------------------------------------------------------------------- the component


def _absolute(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return (
        bool(parts.hostname)
        and not parts.fragment
        and not parts.username
        and (parts.scheme == "https" or (parts.scheme == "http" and is_loopback_url(value)))
    )


def server_fields(doc: Any) -> dict[str, Any]:
    """The SMART keys of an authorization server's discovery document that pass the checks:
    absolute URLs (https, or http on loopback), lists of strings."""
    if not isinstance(doc, dict):
        raise DocumentUnavailable("not a JSON object")
    out: dict[str, Any] = {}
    for key in URL_KEYS:
        if _absolute(doc.get(key)):
            out[key] = doc[key]
    for key in LIST_KEYS:
        values = doc.get(key)
        if isinstance(values, list) and values and all(isinstance(v, str) for v in values):
            out[key] = list(values)
    methods = doc.get("code_challenge_methods_supported")
    if isinstance(methods, list) and "S256" not in methods:
        log(logger, logging.WARNING, "discovery.as-without-s256")
    return out


class Discovery:
    """The two discovery documents of one gateway (built once at start-up, in ``_lifetime``)."""

    def __init__(
        self,
        cfg: Config,
        upstream: UpstreamClient,
        session: aiohttp.ClientSession,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._smart = cfg.smart
        self._base = cfg.server.public_base_url.rstrip("/")
        self._upstream = upstream
        self._session = session
        self._limit = cfg.server.max_response_body_bytes
        self._upstream_base = cfg.upstream.url
        self._configured = configured_document(cfg.smart)
        self._refused = _refused_params(cfg)
        ttl = cfg.smart.cache_ttl_s
        self._statement = TtlDocument(
            "upstream-capability-statement", self._fetch_statement, ttl, clock=clock
        )
        url = cfg.smart.openid_configuration_url
        self._server: TtlDocument[dict[str, Any]] | None = None
        if url is not None:
            self._server = TtlDocument(
                "authorization-server-metadata",
                lambda: self._fetch_server_document(url),
                ttl,
                clock=clock,
            )
        self._merged: tuple[object, dict[str, Any] | None] | None = None
        self._rendered: tuple[object, object, bytes] | None = None

    # ---------------------------------------------------------------- SMART configuration

    async def smart_configuration(self) -> dict[str, Any]:
        """The well-known document; NotFound when SMART is not configured, 503 when the
        authorization server's document is needed and was never fetched."""
        server = await self._server.get() if self._server is not None else None
        doc = self._merge(server)
        if doc is None:
            if self._server is not None and server is None:
                raise _unavailable("discovery.as-unavailable")
            raise NotFound("SMART discovery is not configured on this server.")
        return doc

    def _merge(self, server: dict[str, Any] | None) -> dict[str, Any] | None:
        if self._merged is not None and self._merged[0] is server:
            return self._merged[1]
        doc = {**(server or {}), **self._configured}  # config wins
        caps = list(self._smart.capabilities)
        gaps = capability_gaps(doc, caps)
        if gaps:
            dropped = sorted({g.capability for g in gaps})
            log(logger, logging.WARNING, "discovery.capabilities-dropped", capabilities=dropped)
            caps = [c for c in caps if c not in dropped]
        if SSO not in caps:
            for key in SSO_KEYS:
                doc.pop(key, None)
        result: dict[str, Any] | None = None
        if doc.get("token_endpoint"):
            if "scopes_supported" in doc:
                refused = parse_scopes(doc["scopes_supported"]).rejected
                doc["scopes_supported"] = [s for s in doc["scopes_supported"] if s not in refused]
            if "grant_types_supported" not in doc:
                grants = ["authorization_code"] if set(caps) & set(LAUNCHES) else []
                if "permission-offline" in caps:
                    grants.append("refresh_token")
                if grants:
                    doc["grant_types_supported"] = grants
            result = {key: doc[key] for key in DOCUMENT_ORDER if doc.get(key)}
            result["capabilities"] = caps
            result["code_challenge_methods_supported"] = ["S256"]
        self._merged = (server, result)
        return result

    async def _fetch_server_document(self, url: str) -> dict[str, Any]:
        async with self._session.get(
            url, headers={"Accept": "application/json"}, allow_redirects=False
        ) as resp:
            if resp.status != 200:
                raise DocumentUnavailable(f"HTTP {resp.status}")
            if (resp.content_length or 0) > AS_DOCUMENT_LIMIT:
                raise DocumentUnavailable("too large")
            body = await resp.content.read(AS_DOCUMENT_LIMIT + 1)
        if len(body) > AS_DOCUMENT_LIMIT:
            raise DocumentUnavailable("too large")
        try:
            return server_fields(json.decode(body))
        except json.JsonError:
            raise DocumentUnavailable("invalid JSON") from None

    # ---------------------------------------------------------------- CapabilityStatement

    async def capability_statement(self) -> bytes:
        """The rewritten statement, encoded; 503 when the upstream never gave one."""
        statement = await self._statement.get()
        if statement is None:
            raise _unavailable("discovery.upstream-unavailable")
        try:
            smart: dict[str, Any] | None = await self.smart_configuration()
        except NotFound:
            smart = None
        if (
            self._rendered is not None
            and self._rendered[0] is statement
            and self._rendered[1] is smart
        ):
            return self._rendered[2]
        body = json.encode({**statement, "rest": [_with_security(statement, smart)]})
        self._rendered = (statement, smart, body)
        return body

    async def _fetch_statement(self) -> dict[str, Any]:
        headers: CIMultiDict[str] = CIMultiDict(self._upstream.static_headers)
        headers["Accept"] = FHIR_JSON
        call = await self._upstream.send("GET", self._upstream.url("metadata", ""), headers, None)
        try:
            if call.response.status != 200:
                raise UpstreamError(reason=f"upstream.metadata-{call.response.status}")
            body = await self._upstream.read_body(call, self._limit)
        finally:
            call.response.release()
        try:
            doc = json.decode(body)
        except json.JsonError:
            raise UpstreamError(reason="upstream.invalid-json") from None
        if not isinstance(doc, dict) or doc.get("resourceType") != "CapabilityStatement":
            raise UpstreamError(reason="upstream.not-capability-statement")
        return rewrite_capability_statement(
            doc,
            public_base=self._base,
            upstream_base=self._upstream_base,
            refused_params=self._refused,
        )

    # ---------------------------------------------------------------- HTTP

    async def smart_configuration_response(self) -> web.Response:
        body = json.encode(await self.smart_configuration())
        return web.Response(body=body, content_type="application/json")

    async def capability_statement_response(self) -> web.Response:
        body = await self.capability_statement()
        return web.Response(body=body, content_type=FHIR_JSON)


def _with_security(statement: Mapping[str, Any], smart: Mapping[str, Any] | None) -> Any:
    rest = dict(statement["rest"][0])
    security = security_section(smart)
    return {"mode": rest.pop("mode"), "security": security, **rest}


def _unavailable(reason: str) -> ServiceUnavailable:
    return ServiceUnavailable(
        "The discovery document is temporarily unavailable.",
        headers={"Retry-After": str(int(RETRY_S))},
        reason=reason,
    )


def _refused_params(cfg: Config) -> Callable[[str | None], frozenset[str]]:
    """Search parameters refused to every caller: PHI-bearing ones when the upstream takes no
    POST ``_search`` and the operator allowed no GET fallback (``phi.rules``)."""
    phi = cfg.phi
    if cfg.upstream.post_search or phi.allow_get_fallback or phi.post_search == "off":
        return lambda _: frozenset()
    return PhiRules(phi, cfg.upstream.post_search).names_for
