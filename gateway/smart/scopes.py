"""Strict parser for SMART App Launch 2.x scopes.

Spec: SMART App Launch 2.2, "App Launch: Scopes and Launch Context", section "Scopes for
requesting FHIR Resources" (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html).
Its Quick Start table reads:

    patient/*.rs    "Permission to read and search any resource for the current patient"
    user/*.cruds    "Permission to read and write all resources that the current user can access"

Paraphrasing the rest of that section: a data scope is ``<patient|user|system>/<type|*>.<perms>``
where the v2 permissions are ``c`` create, ``r`` read, ``u`` update, ``d`` delete, ``s`` search,
written in that order; "Finer-grained resource constraints using search parameters" adds
``?param=value[&...]`` (the spec's example:
``patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory``);
and SMART v1 ``read``/``write``/``*`` are equivalent to ``rs``/``cud``/``cruds``.

Anything outside that grammar grants nothing: :func:`parse_scope` returns ``None`` and never
raises. A granular query is accepted only when the gateway can evaluate it exactly: every
parameter is a plain ``token`` search parameter of the type (:data:`GRANULAR_PARAMS`) and every
value is ``system|code`` or a comma-separated OR-list of them (backslash escapes are refused).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, get_args
from urllib.parse import unquote

from gateway.fhir.tables import RESOURCE_TYPES, SEARCH_PARAMS, TOKEN_PATHS

__all__ = [
    "GRANULAR_PARAMS",
    "LEVELS",
    "PERMISSIONS",
    "RESOURCE_TYPES",
    "Level",
    "Scope",
    "ScopeSet",
    "parse_scope",
    "parse_scopes",
]

Level = Literal["patient", "user", "system"]
LEVELS: frozenset[Level] = frozenset(get_args(Level))
_LEVEL_OF: Mapping[str, Level] = {level: level for level in LEVELS}
PERMISSIONS = "cruds"
_PERMISSION_SET = frozenset(PERMISSIONS)

#: type -> the search parameters a granular scope may use: plain ``token`` parameters only
#: (``_``-prefixed ones such as ``_tag``/``_security`` are excluded, as are modifiers/chains).
#: token parameters whose element paths the gateway can read (TOKEN_PATHS): a granular scope
#: on any other parameter could be accepted but never verified, so it grants nothing
GRANULAR_PARAMS: Mapping[str, frozenset[str]] = {
    rtype: frozenset(
        n
        for n, kind in params.items()
        if kind == "token" and n[:1] != "_" and n in TOKEN_PATHS.get(rtype, {})
    )
    for rtype, params in SEARCH_PARAMS.items()
}

_V1: Mapping[str, frozenset[str]] = {
    "read": frozenset("rs"),
    "write": frozenset("cud"),
    "*": frozenset(PERMISSIONS),
}
# RFC 6749 §3.3 scope-token: 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
_SEPARATORS = re.compile(r"[ \t\r\n]+")
_DATA_SCOPE = re.compile(
    r"(patient|user|system)/([A-Z][A-Za-z]*|\*)\.(read|write|\*|c?r?u?d?s?)(?:\?([^?]*))?"
)
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_LEVEL_PREFIX = re.compile(r"(?i)(?:patient|user|system)/")


@dataclass(frozen=True, slots=True)
class Scope:
    """One data-access scope. ``query`` holds the decoded granular constraint (AND of params;
    a value may be a comma-separated OR-list of ``system|code``)."""

    raw: str
    level: Level
    resource_type: str
    permissions: frozenset[str]
    query: tuple[tuple[str, str], ...] = ()
    v1: bool = False

    @property
    def codings(self) -> tuple[tuple[str, frozenset[tuple[str, str]]], ...]:
        """``query`` as (param, {(system, code), ...}) pairs: AND across pairs, OR within one."""
        return tuple(
            (name, frozenset(_split_coding(c) for c in value.split(",")))
            for name, value in self.query
        )


def _split_coding(text: str) -> tuple[str, str]:
    system, _, code = text.partition("|")
    return system, code


@dataclass(frozen=True, slots=True)
class ScopeSet:
    """The parsed ``scope`` of a token. ``other`` grants no data (``openid``, ``launch``...);
    ``rejected`` lists data-looking or malformed tokens that were refused (for logs/audit)."""

    scopes: tuple[Scope, ...]
    other: frozenset[str]
    rejected: frozenset[str] = frozenset()

    def for_(self, level: Level | None, resource_type: str, permission: str) -> tuple[Scope, ...]:
        """Scopes at that level (None = any level) that grant `permission` on `resource_type`
        (exact type or "*")."""
        if permission not in _PERMISSION_SET or (level is not None and level not in LEVELS):
            raise ValueError(f"bad permission or level: {permission!r}, {level!r}")
        return tuple(
            s
            for s in self.scopes
            if permission in s.permissions
            and (level is None or s.level == level)
            and (s.resource_type == resource_type or s.resource_type == "*")
        )

    def grants(self, level: Level | None, resource_type: str, permission: str) -> bool:
        """True when any scope (plain or granular) grants it."""
        return bool(self.for_(level, resource_type, permission))

    def plain(self, level: Level | None, resource_type: str, permission: str) -> bool:
        """True when a scope WITHOUT a query grants it (plain wins over granular)."""
        return any(not s.query for s in self.for_(level, resource_type, permission))

    def granular(
        self, level: Level | None, resource_type: str, permission: str
    ) -> tuple[Scope, ...]:
        """The query-constrained scopes granting it; only meaningful when not :meth:`plain`."""
        return tuple(s for s in self.for_(level, resource_type, permission) if s.query)

    @property
    def levels(self) -> frozenset[Level]:
        return frozenset(s.level for s in self.scopes)


def parse_scope(token: str, *, resource_types: frozenset[str] = RESOURCE_TYPES) -> Scope | None:
    """One scope-token as a data-access :class:`Scope`, or ``None`` when it grants nothing."""
    if not isinstance(token, str) or _SCOPE_TOKEN.fullmatch(token) is None:
        return None
    m = _DATA_SCOPE.fullmatch(token)
    if m is None:
        return None
    level, rtype, perm, query_text = m.groups()
    if rtype != "*" and rtype not in resource_types:
        return None
    v1 = perm in _V1
    permissions = _V1[perm] if v1 else frozenset(perm)
    if not permissions:
        return None
    query: tuple[tuple[str, str], ...] = ()
    if query_text is not None:
        if v1 or rtype == "*":
            return None
        parsed = _parse_query(rtype, query_text)
        if parsed is None:
            return None
        query = parsed
    return Scope(token, _LEVEL_OF[level], rtype, permissions, query, v1)


def _parse_query(rtype: str, text: str) -> tuple[tuple[str, str], ...] | None:
    """``a=s|c&b=s|c,s|c`` decoded per component (``+`` literal), or None if not exact."""
    if not text or _BAD_PERCENT.search(text):
        return None
    allowed = GRANULAR_PARAMS.get(rtype, frozenset())
    out: list[tuple[str, str]] = []
    for part in text.split("&"):
        raw_name, eq, raw_value = part.partition("=")
        if not eq:
            return None
        try:
            name = unquote(raw_name, errors="strict")
            value = unquote(raw_value, errors="strict")
        except UnicodeDecodeError:
            return None
        if name not in allowed or not all(_is_coding(c) for c in value.split(",")):
            return None
        out.append((name, value))
    return tuple(out)


def _is_coding(text: str) -> bool:
    """``system|code``: both non-empty, printable, unpadded; no escapes, no second ``|``."""
    system, bar, code = text.partition("|")
    return (
        bool(bar and system and code)
        and "|" not in code
        and "\\" not in text
        and text.isprintable()
        and system == system.strip()
        and code == code.strip()
    )


def parse_scopes(
    raw: str | Iterable[str], *, resource_types: frozenset[str] = RESOURCE_TYPES
) -> ScopeSet:
    """A space-delimited scope string (or an iterable of them) as a :class:`ScopeSet`.

    Never raises: data-access tokens that fail the grammar, and tokens outside the RFC 6749
    character set, go to ``rejected``; other well-formed tokens go to ``other``.
    """
    items: Iterable[object] = [raw] if isinstance(raw, str) else _iterate(raw)
    scopes: dict[Scope, None] = {}
    other: set[str] = set()
    rejected: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            continue
        for token in _SEPARATORS.split(item):
            if not token:
                continue
            scope = parse_scope(token, resource_types=resource_types)
            if scope is not None:
                scopes[scope] = None
            elif _SCOPE_TOKEN.fullmatch(token) is None or _LEVEL_PREFIX.match(token):
                rejected.add(token)
            else:
                other.add(token)
    return ScopeSet(tuple(scopes), frozenset(other), frozenset(rejected))


def _iterate(raw: Iterable[str]) -> Iterable[object]:
    if isinstance(raw, bytes | bytearray | memoryview):  # not text: grants nothing
        return ()
    try:
        return list(raw)
    except TypeError:  # not iterable at all
        return ()
