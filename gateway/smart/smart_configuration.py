"""The SMART configuration document: ``{base}/.well-known/smart-configuration``.

What the document may say and what backs it (SMART App Launch 2.x, "Conformance"): the keys
the ``smart`` config section sets (:func:`configured_document`), the SMART keys accepted from
the authorization server's own discovery document (:func:`server_fields`), and the merge of the
two (:func:`well_known_document`; config wins). ``capabilities`` is truthful: each one is
checked against the document it is advertised with (:func:`capability_gaps`) — a gap is a
configuration error at start-up (:func:`config_problems`) and, when the authorization server's
document contradicts a capability later, the capability is dropped with a warning. ``issuer``
and ``jwks_uri`` appear exactly when ``sso-openid-connect`` does;
``code_challenge_methods_supported`` is always ``["S256"]``; ``grant_types_supported`` (REQUIRED)
is always there, derived when neither side gives it (:func:`derived_grant_types`). Fetching and
caching are :class:`gateway.smart.discovery.Discovery`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.config import Config, SmartConfig, is_loopback_url
from gateway.ops.logging import log
from gateway.smart.scopes import Scope, parse_scopes

__all__ = [
    "ASYMMETRIC_ALGS",
    "CAPABILITY_RULES",
    "DOCUMENT_ORDER",
    "LAUNCHES",
    "LIST_KEYS",
    "SSO",
    "SSO_KEYS",
    "URL_KEYS",
    "DocumentUnavailable",
    "Gap",
    "Rule",
    "capability_gaps",
    "config_problems",
    "configured_document",
    "derived_grant_types",
    "server_fields",
    "well_known_document",
]

logger = logging.getLogger("gateway.discovery")

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
    "token_endpoint_auth_signing_alg_values_supported",
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
    "token_endpoint_auth_signing_alg_values_supported",
    "registration_endpoint",
    "scopes_supported",
    "response_types_supported",
    "management_endpoint",
    "introspection_endpoint",
    "revocation_endpoint",
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
_REFRESH = ("grant_types_supported", frozenset({"refresh_token"}))
LAUNCHES = ("launch-ehr", "launch-standalone")
#: SMART Backend Services, "Authenticating to the token endpoint": clients sign with one of these
ASYMMETRIC_ALGS = frozenset({"RS384", "ES384"})

#: every capability the gateway can advertise, with what backs it (SMART App Launch 2.x,
#: "Conformance", "Capabilities"). The token endpoint backs them all (checked separately).
#: Where the documents say nothing the gateway can check (the AS's token response carries
#: ``need_patient_banner``/``smart_style_url``/``encounter``; app state lives upstream), the rule
#: asks only what the capability cannot do without (a launch, an authorization endpoint).
CAPABILITY_RULES: Mapping[str, Rule] = {
    "launch-ehr": Rule(
        keys=("authorization_endpoint",),
        listed=(_CODE, _AUTH_CODE, ("scopes_supported", frozenset({"launch"}))),
    ),
    "launch-standalone": Rule(keys=("authorization_endpoint",), listed=(_CODE, _AUTH_CODE)),
    "authorize-post": Rule(keys=("authorization_endpoint",), with_any=LAUNCHES),
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
    "client-confidential-asymmetric": Rule(
        listed=(
            ("token_endpoint_auth_methods_supported", frozenset({"private_key_jwt"})),
            ("token_endpoint_auth_signing_alg_values_supported", ASYMMETRIC_ALGS),
        ),
    ),
    SSO: Rule(keys=SSO_KEYS, listed=(("scopes_supported", frozenset({"openid"})),)),
    "context-banner": Rule(with_any=LAUNCHES),
    "context-style": Rule(with_any=LAUNCHES),
    "context-ehr-patient": Rule(with_any=("launch-ehr",)),
    "context-ehr-encounter": Rule(with_any=("launch-ehr",)),
    "context-standalone-patient": Rule(
        with_any=("launch-standalone",),
        listed=(("scopes_supported", frozenset({"launch/patient"})),),
    ),
    "context-standalone-encounter": Rule(
        with_any=("launch-standalone",),
        listed=(("scopes_supported", frozenset({"launch/encounter"})),),
    ),
    "permission-offline": Rule(
        listed=(("scopes_supported", frozenset({"offline_access"})), _REFRESH),
    ),
    "permission-online": Rule(
        listed=(("scopes_supported", frozenset({"online_access"})), _REFRESH),
    ),
    "permission-patient": Rule(scope=lambda s: s.level == "patient", scope_text="patient/"),
    "permission-user": Rule(scope=lambda s: s.level == "user", scope_text="user/"),
    "permission-v1": Rule(scope=lambda s: s.v1, scope_text="SMART v1 (.read/.write/.*)"),
    "permission-v2": Rule(scope=lambda s: not s.v1, scope_text="SMART v2 (.cruds)"),
    "smart-app-state": Rule(),
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


# --------------------------------------------------------------------------- the AS's document


class DocumentUnavailable(Exception):
    """A discovery document could not be fetched (the message names no host or value)."""


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


# --------------------------------------------------------------------------- the document


def derived_grant_types(doc: Mapping[str, Any], capabilities: Sequence[str]) -> list[str]:
    """``grant_types_supported`` when neither the config nor the authorization server says
    (REQUIRED in SMART App Launch 2.x, so never empty): ``authorization_code`` for a launch
    capability, ``client_credentials`` for SMART Backend Services (a ``system/`` scope in
    ``scopes_supported``, or ``client-confidential-asymmetric`` without a launch),
    ``refresh_token`` with ``permission-offline``/``permission-online``. With none of these,
    the grant a token endpoint must then be serving: ``authorization_code`` when there is an
    authorization endpoint, else ``client_credentials``."""
    caps = set(capabilities)
    launch = bool(caps & set(LAUNCHES))
    scopes = doc.get("scopes_supported")
    system = isinstance(scopes, list) and any(
        s.level == "system" for s in parse_scopes(list(scopes)).scopes
    )
    grants: list[str] = []
    if launch:
        grants.append("authorization_code")
    if system or (not launch and "client-confidential-asymmetric" in caps):
        grants.append("client_credentials")
    if not grants:
        grants.append(
            "authorization_code" if doc.get("authorization_endpoint") else "client_credentials"
        )
    if caps & {"permission-offline", "permission-online"}:
        grants.append("refresh_token")
    return grants


def well_known_document(
    server: Mapping[str, Any] | None,
    configured: Mapping[str, Any],
    capabilities: Sequence[str],
) -> dict[str, Any] | None:
    """The well-known document: ``server`` (:func:`server_fields` of the authorization
    server's document, if any) merged with ``configured`` (:func:`configured_document`; config
    wins). Capabilities the merged document does not back are dropped with a warning. None
    without a token endpoint (SMART is not configured)."""
    doc = {**(server or {}), **configured}  # config wins
    caps = list(capabilities)
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
        if not doc.get("grant_types_supported"):
            doc["grant_types_supported"] = derived_grant_types(doc, caps)
        result = {key: doc[key] for key in DOCUMENT_ORDER if doc.get(key)}
        result["capabilities"] = caps
        result["code_challenge_methods_supported"] = ["S256"]
    return result
