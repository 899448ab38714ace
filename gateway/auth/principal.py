"""The authenticated caller, built from verified token claims or an introspection answer.

Claim sources:

* JWT access tokens: RFC 9068 (JWT Profile for OAuth 2.0 Access Tokens) §2.2 — ``iss``,
  ``exp``, ``aud``, ``sub``, ``client_id``, ``iat``, ``jti`` and ``scope`` (§2.2.3).
* Opaque tokens: RFC 7662 §2.2 introspection response members (``scope``, ``client_id``,
  ``sub``, ``exp``, ``iss`` ...).
* SMART App Launch 2.x context: ``patient``, ``encounter`` and ``fhirUser``.

Every value that later stages rely on is validated here; a token whose claims do not have the
expected shape is refused (``TokenRejected`` → 401), never half-accepted.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, TypeGuard
from urllib.parse import urlsplit

from gateway.auth.bearer import TokenRejected
from gateway.config import ClaimNames

# FHIR R4 id datatype: [A-Za-z0-9\-\.]{1,64}
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# A FHIR resource type name: an upper-case letter, then letters (R4 names are alphabetic).
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{0,63}")
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
_MAX_SCOPES = 256
#: ``scp`` is the array form of the scope claim used by several authorization servers.
SCOPE_ARRAY_CLAIM = "scp"

TokenKind = Literal["jwt", "opaque"]


def fingerprint(token: str) -> str:
    """SHA-256 hex digest of the token: the only form in which a token is kept or compared."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True, repr=False)
class Principal:
    """Who is calling. Immutable; ``claims`` is a read-only copy of the verified claims."""

    subject: str | None
    client_id: str | None
    issuer: str | None
    scopes: tuple[str, ...]
    patient: str | None
    encounter: str | None
    fhir_user: str | None
    claims: Mapping[str, Any]
    fingerprint: str
    expires_at: float
    token_kind: TokenKind

    def __repr__(self) -> str:
        # Never the claims, patient, encounter or fhirUser: reprs end up in logs.
        return (
            f"Principal(kind={self.token_kind}, issuer={self.issuer!r}, "
            f"client_id={self.client_id!r}, scopes={len(self.scopes)}, "
            f"fingerprint={self.fingerprint[:12]}...)"
        )

    def fhir_user_reference(self) -> tuple[str, str] | None:
        """``fhirUser`` as ``(resource type, id)``, e.g. ``("Practitioner", "123")``."""
        return None if self.fhir_user is None else parse_fhir_user(self.fhir_user)


# --------------------------------------------------------------------------- claim checks


def is_number(value: object) -> TypeGuard[int | float]:
    """A finite JSON number (``bool`` is not a number; NaN and infinities are refused)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _optional_str(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise TokenRejected(detail=f"claim:{name}")
    return value


def _fhir_id(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or FHIR_ID.fullmatch(value) is None:
        raise TokenRejected(detail=f"claim:{name}")
    return value


@functools.lru_cache(maxsize=4096)  # asked several times per request for the same few users
def parse_fhir_user(value: str) -> tuple[str, str] | None:
    """Split a SMART ``fhirUser`` into ``(type, id)``, or ``None`` if it is not acceptable.

    Accepted: a relative reference ``Type/id`` or an absolute ``http(s)`` URL whose path ends
    in ``/Type/id`` (no query, fragment, credentials or ``_history``).
    """
    if len(value) > 2048:
        return None
    path = value
    if "://" in value:
        try:
            parts = urlsplit(value)
        except ValueError:
            return None
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.query
            or parts.fragment
            or parts.username is not None
            or parts.password is not None
        ):
            return None
        path = parts.path
        segments = path.split("/")
        if len(segments) < 3:
            return None
        rtype, rid = segments[-2], segments[-1]
    else:
        rtype, sep, rid = path.partition("/")
        if not sep:
            return None
    if _RESOURCE_TYPE.fullmatch(rtype) is None or FHIR_ID.fullmatch(rid) is None:
        return None
    return rtype, rid


def parse_scopes(claims: Mapping[str, Any], names: ClaimNames) -> tuple[str, ...] | None:
    """The granted scopes (RFC 6749 §3.3 / RFC 9068 §2.2.3), or ``None`` if no scope claim.

    The configured claim (``scope`` by default) may be a space-delimited string or an array of
    strings; ``scp`` (array or string) is read when the configured claim is absent. Any
    scope-token outside the RFC 6749 character set refuses the token. Duplicates are dropped,
    order is kept.
    """
    raw = claims.get(names.scope)
    if raw is None:
        raw = claims.get(SCOPE_ARRAY_CLAIM)
    if raw is None:
        return None
    items: list[Any] = raw if isinstance(raw, list) else [raw]
    out: dict[str, None] = {}
    for item in items:
        if not isinstance(item, str):
            raise TokenRejected(detail="claim:scope")
        for scope in item.split(" "):
            if not scope:
                continue
            if _SCOPE_TOKEN.fullmatch(scope) is None:
                raise TokenRejected(detail="claim:scope")
            out[scope] = None
    if len(out) > _MAX_SCOPES:
        raise TokenRejected(detail="claim:scope")
    return tuple(out)


def build_principal(
    claims: Mapping[str, Any],
    *,
    names: ClaimNames,
    token_fingerprint: str,
    token_kind: TokenKind,
) -> Principal:
    """Validate the context claims and build the :class:`Principal`.

    The caller has already verified the token (signature, issuer, audience, lifetime) or the
    introspection answer; this checks the shape of what later stages use. ``exp`` and a scope
    claim are required (RFC 9068 §2.2; our rule for introspection answers).
    """
    exp = claims.get("exp")
    if not is_number(exp):
        raise TokenRejected(detail="exp")
    scopes = parse_scopes(claims, names)
    if scopes is None:
        raise TokenRejected(detail="no-scope")
    client_id = _optional_str(claims, names.client_id)
    if client_id is None:
        client_id = _optional_str(claims, "azp")
    fhir_user = _optional_str(claims, names.fhir_user)
    if fhir_user is not None and parse_fhir_user(fhir_user) is None:
        raise TokenRejected(detail=f"claim:{names.fhir_user}")
    return Principal(
        subject=_optional_str(claims, "sub"),
        client_id=client_id,
        issuer=_optional_str(claims, "iss"),
        scopes=scopes,
        patient=_fhir_id(claims, names.patient),
        encounter=_fhir_id(claims, names.encounter),
        fhir_user=fhir_user,
        claims=MappingProxyType(copy.deepcopy(dict(claims))),
        fingerprint=token_fingerprint,
        expires_at=float(exp),
        token_kind=token_kind,
    )
