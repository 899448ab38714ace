"""The grammar of a policy file: located YAML values -> :mod:`gateway.policy.model` types.

Every method records problems (with the position of the offending value) and returns a
best-effort value, so one pass reports every problem in a file.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from gateway.policy.model import (
    EFFECTS,
    ID_PATTERN,
    LEVEL_NAMES,
    PATH,
    RESOURCE_TYPES,
    UNREDACTABLE,
    All,
    Any_,
    Claim,
    ClientId,
    CodeList,
    CodeListEntry,
    Codings,
    Effect,
    Element,
    FhirPath,
    FhirUserType,
    Not,
    PatientFacing,
    Policy,
    PolicyFile,
    PrincipalCond,
    Problem,
    ResourceCond,
    ScopeLevel,
    Status,
    Y,
)

_CODING = re.compile(r"[^|\s]+\|[^|\s]+")
_SCALAR = (str, int, float, bool)
T = TypeVar("T")

_POLICY_KEYS = frozenset(
    {
        "id",
        "description",
        "resource_types",
        "resource",
        "principal",
        "effect",
        "redact",
        "overrides",
        "break_glass",
        "release_by",
    }
)
_RESOURCE_KINDS = (
    "all, any, not, security, tag, codes, code_in, category, status, element, fhirpath"
)
_PRINCIPAL_KINDS = "all, any, not, scope_level, fhir_user_type, patient_facing, claim, client_id"


class FileParser:
    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []

    def err(self, y: Y, message: str) -> None:
        self.problems.append(Problem(y.pos, message))

    # ------------------------------------------------------------------ small shapes

    def mapping(self, y: Y, what: str, allowed: frozenset[str]) -> dict[str, Y]:
        if not y.is_map:
            self.err(y, f"{what} must be a mapping")
            return {}
        out: dict[str, Y] = y.value
        for key in out:
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                message = f"{what}: unknown key {key!r} (allowed: {known})"
                self.problems.append(Problem(y.key_pos(key), message))
        return out

    def string(self, y: Y, what: str) -> str:
        if isinstance(y.value, int) and not isinstance(y.value, bool):
            return str(y.value)  # unquoted numeric codes, e.g. SNOMED CT 35489007
        if not isinstance(y.value, str) or not y.value.strip():
            self.err(y, f"{what} must be a non-empty string")
            return ""
        return y.value.strip()

    def strings(
        self, y: Y, what: str, check: Callable[[str], str | None] | None = None
    ) -> tuple[str, ...]:
        """A string or a non-empty list of strings; ``check`` returns an error message or None."""
        items = y.value if y.is_seq else [y]
        if not items:
            self.err(y, f"{what} must not be empty")
        out: list[str] = []
        for item in items:
            text = self.string(item, what)
            if text and check is not None and (message := check(text)) is not None:
                self.err(item, message)
            out.append(text)
        return tuple(out)

    def boolean(self, y: Y, what: str) -> bool:
        if not isinstance(y.value, bool):
            self.err(y, f"{what} must be true or false")
            return False
        return y.value

    def path(self, y: Y, what: str) -> tuple[str, ...]:
        text = self.string(y, what)
        if text and PATH.fullmatch(text) is None:
            self.err(y, f"{what}: {text!r} is not an element path (name.name..., '[x]' allowed)")
        return tuple(text.split(".")) if text else ()

    def codings(self, y: Y, what: str) -> tuple[tuple[str, str], ...]:
        def check(text: str) -> str | None:
            ok = _CODING.fullmatch(text) is not None
            return None if ok else f"{what}: {text!r} is not 'system|code'"

        out = []
        for text in self.strings(y, what, check):
            system, _, code = text.partition("|")
            out.append((system, code))
        return tuple(out)

    def one_key(self, y: Y, what: str, kinds: str) -> tuple[str, Y] | None:
        if y.is_seq:
            return "all", y  # a list is shorthand for all
        if not y.is_map or len(y.value) != 1:
            self.err(y, f"a {what} condition is a mapping with exactly one of: {kinds}")
            return None
        ((key, value),) = y.value.items()
        return key, value

    def combinator(
        self, key: str, value: Y, parse: Callable[[Y], T | None]
    ) -> All[Any] | Any_[Any] | Not[Any] | None:
        if key == "not":
            item = parse(value)
            return None if item is None else Not(item, value.pos)
        if not value.is_seq or not value.value:
            self.err(value, f"'{key}' takes a non-empty list of conditions")
            return None
        items = tuple(c for c in (parse(v) for v in value.value) if c is not None)
        return All(items, value.pos) if key == "all" else Any_(items, value.pos)

    # ------------------------------------------------------------------ resource conditions

    def resource_cond(self, y: Y) -> ResourceCond | None:
        pair = self.one_key(y, "resource", _RESOURCE_KINDS)
        if pair is None:
            return None
        key, v = pair
        if key in ("all", "any", "not"):
            return self.combinator(key, v, self.resource_cond)
        if key in ("security", "tag"):
            return Codings(("meta", key), self.codings(v, key), (), v.pos)
        if key == "category":
            return Codings(("category",), self.codings(v, key), (), v.pos)
        if key == "code_in":
            return Codings(("code",), (), self.strings(v, key), v.pos)
        if key == "codes":
            m = self.mapping(v, "codes", frozenset({"path", "codings", "lists"}))
            path = self.path(m["path"], "codes.path") if "path" in m else ("code",)
            codings = self.codings(m["codings"], "codes.codings") if "codings" in m else ()
            lists = self.strings(m["lists"], "codes.lists") if "lists" in m else ()
            if m and not codings and not lists:
                self.err(v, "codes needs 'codings', 'lists' or both")
            return Codings(path, codings, lists, v.pos)
        if key == "status":
            return Status(self.strings(v, "status"), v.pos)
        if key == "element":
            return self.element(v)
        if key == "fhirpath":
            return FhirPath(self.string(v, "fhirpath"), v.pos)
        self.err(y, f"unknown resource condition {key!r} (one of: {_RESOURCE_KINDS})")
        return None

    def element(self, v: Y) -> Element | None:
        m = self.mapping(v, "element", frozenset({"path", "equals", "in", "exists"}))
        if "path" not in m:
            self.err(v, "element needs a 'path'")
            return None
        path = self.path(m["path"], "element.path")
        ops = [k for k in ("equals", "in", "exists") if k in m]
        if len(ops) != 1:
            self.err(v, "element needs exactly one of 'equals', 'in', 'exists'")
            return None
        op = ops[0]
        arg = m[op]
        if op == "exists":
            return Element(path, "exists", self.boolean(arg, "element.exists"), v.pos)
        items = arg.value if (op == "in" and arg.is_seq) else [arg]
        if op == "in" and not arg.is_seq:
            self.err(arg, "element.in takes a list of values")
        values = []
        for item in items:
            if not isinstance(item.value, _SCALAR):
                self.err(item, f"element.{op}: values must be strings, numbers or booleans")
            values.append(item.value)
        if op == "equals":
            return Element(path, "equals", values[0], v.pos)
        return Element(path, "in", tuple(values), v.pos)

    # ------------------------------------------------------------------ principal conditions

    def principal_cond(self, y: Y) -> PrincipalCond | None:
        pair = self.one_key(y, "principal", _PRINCIPAL_KINDS)
        if pair is None:
            return None
        key, v = pair
        if key in ("all", "any", "not"):
            return self.combinator(key, v, self.principal_cond)
        if key == "scope_level":

            def level(t: str) -> str | None:
                return (
                    None
                    if t in LEVEL_NAMES
                    else f"scope_level: {t!r} is not one of patient, user, system"
                )

            return ScopeLevel(self.strings(v, key, level), v.pos)
        if key == "fhir_user_type":

            def rtype(t: str) -> str | None:
                return (
                    None if t in RESOURCE_TYPES else f"fhir_user_type: unknown resource type {t!r}"
                )

            return FhirUserType(self.strings(v, key, rtype), v.pos)
        if key == "patient_facing":
            return PatientFacing(self.boolean(v, key), v.pos)
        if key == "client_id":
            return ClientId(self.strings(v, key), v.pos)
        if key == "claim":
            return self.claim(v)
        self.err(y, f"unknown principal condition {key!r} (one of: {_PRINCIPAL_KINDS})")
        return None

    def claim(self, v: Y) -> Claim | None:
        ops = ("present", "equals", "contains", "any_of")
        m = self.mapping(v, "claim", frozenset({"name", *ops}))
        if "name" not in m:
            self.err(v, "claim needs a 'name'")
            return None
        name = self.string(m["name"], "claim.name")
        given = [k for k in ops if k in m]
        if len(given) != 1:
            self.err(v, "claim needs exactly one of 'present', 'equals', 'contains', 'any_of'")
            return None
        op = given[0]
        arg = m[op]
        value: Any
        if op == "present":
            value = self.boolean(arg, "claim.present")
        elif op == "any_of":
            value = frozenset(self.strings(arg, "claim.any_of"))
        else:
            if not isinstance(arg.value, _SCALAR):
                self.err(arg, f"claim.{op} must be a string, number or boolean")
            value = arg.value
        return Claim(tuple(name.split(".")), op, value, v.pos)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ policies

    def policy(self, y: Y) -> Policy | None:
        m = self.mapping(y, "policy", _POLICY_KEYS)
        if not m:
            return None
        for required in ("id", "description", "resource_types", "effect"):
            if required not in m:
                self.err(y, f"policy: '{required}' is required")
        if any(r not in m for r in ("id", "description", "resource_types", "effect")):
            return None
        pid = self.string(m["id"], "id")
        if pid and ID_PATTERN.fullmatch(pid) is None:
            self.err(m["id"], f"id {pid!r}: letters, digits, '.', '_' and '-' only")
        description = self.string(m["description"], "description")

        def rtype(t: str) -> str | None:
            return None if t in RESOURCE_TYPES else f"resource_types: unknown FHIR R4 type {t!r}"

        types = self.strings(m["resource_types"], "resource_types", rtype)
        effect_text = self.string(m["effect"], "effect")
        if effect_text not in EFFECTS:
            self.err(m["effect"], f"effect must be one of {', '.join(EFFECTS)}")
            return None
        effect: Effect = effect_text
        resource = self.resource_cond(m["resource"]) if "resource" in m else None
        principal = self.principal_cond(m["principal"]) if "principal" in m else None
        redact: tuple[tuple[str, ...], ...] = ()
        if effect == "redact":
            if "redact" not in m:
                self.err(y, "effect redact needs 'redact': the element paths to remove")
            else:
                items = m["redact"].value if m["redact"].is_seq else [m["redact"]]
                paths = [self.path(item, "redact") for item in items]
                for item, p in zip(items, paths, strict=True):
                    if p and p[0] in UNREDACTABLE:
                        self.err(item, f"redact: {p[0]!r} cannot be redacted")
                redact = tuple(p for p in paths if p)
        elif "redact" in m:
            self.err(m["redact"], "'redact' is only for effect redact")
        overrides: tuple[str, ...] | None = None
        if effect == "allow":
            if "overrides" not in m:
                self.err(y, "effect allow needs 'overrides': policy ids, or '*' for all")
            else:
                ids = self.strings(m["overrides"], "overrides")
                overrides = None if ids == ("*",) else ids
        elif "overrides" in m:
            self.err(m["overrides"], "'overrides' is only for effect allow")
        break_glass = False
        if "break_glass" in m:
            break_glass = self.boolean(m["break_glass"], "break_glass")
            if effect != "allow":
                self.err(m["break_glass"], "'break_glass' is only for effect allow")
        release_by = None
        if "release_by" in m:
            if effect == "allow":
                self.err(m["release_by"], "'release_by' is only for effect withhold or redact")
            release_by = self.principal_cond(m["release_by"])
        return Policy(
            pid, description, types, effect, resource, principal, redact, overrides,
            break_glass, release_by, y.pos,
        )  # fmt: skip

    def code_list(self, name: str, y: Y) -> CodeList:
        entries: list[CodeListEntry] = []
        items = y.value if y.is_seq else []
        if not y.is_seq or not items:
            self.err(y, f"code list {name!r}: a non-empty list of {{system, codes, prefixes}}")
        for item in items:
            m = self.mapping(item, "code list entry", frozenset({"system", "codes", "prefixes"}))
            if not m:
                continue
            if "system" not in m:
                self.err(item, "code list entry needs 'system'")
                continue
            codes = self.strings(m["codes"], "codes") if "codes" in m else ()
            prefixes = self.strings(m["prefixes"], "prefixes") if "prefixes" in m else ()
            if not codes and not prefixes:
                self.err(item, "code list entry needs 'codes', 'prefixes' or both")
            entries.append(
                CodeListEntry(self.string(m["system"], "system"), codes, prefixes, item.pos)
            )
        return CodeList(name, tuple(entries), y.pos)

    def document(self, root: Y) -> PolicyFile:
        m = self.mapping(root, "a policy file", frozenset({"policies", "code_lists"}))
        policies: list[Policy] = []
        lists: list[CodeList] = []
        if "policies" in m:
            if not m["policies"].is_seq:
                self.err(m["policies"], "'policies' must be a list")
            else:
                policies = [p for p in map(self.policy, m["policies"].value) if p is not None]
        if "code_lists" in m:
            cl = m["code_lists"]
            if not cl.is_map:
                self.err(cl, "'code_lists' must be a mapping of name to entries")
            else:
                lists = [self.code_list(name, v) for name, v in cl.value.items()]
        return PolicyFile(self.file, tuple(policies), tuple(lists))
