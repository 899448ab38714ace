"""The policy language: YAML parsed into typed structures, every problem with its position.

A policy file is a YAML mapping with ``policies`` (a list) and/or ``code_lists`` (a mapping of
name to entries). Files are composed into YAML *nodes* first, so every value keeps the line and
column it came from; every problem found is collected (not only the first) and reported as
``file:line:column: message``. The language itself is documented in ``docs/policies.md``.

This module only checks the shape of each file. Cross-file checks (duplicate ids, code list
references, ``overrides`` targets, FHIRPath syntax) happen in :mod:`gateway.policy.compile`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import yaml

from gateway.errors import ConfigError
from gateway.fhir.tables import RESOURCE_TYPES

Effect = Literal["withhold", "redact", "allow"]
EFFECTS: tuple[Effect, ...] = ("withhold", "redact", "allow")
LEVEL_NAMES = ("patient", "user", "system")
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_PATH_SEGMENT = r"[A-Za-z_][A-Za-z0-9_]*(?:\[x\])?"
PATH = re.compile(rf"{_PATH_SEGMENT}(?:\.{_PATH_SEGMENT})*")
_CODING = re.compile(r"[^|\s]+\|[^|\s]+")
#: elements a redaction may never remove (the resource would no longer be a resource)
UNREDACTABLE = frozenset({"resourceType", "id", "meta"})


@dataclass(frozen=True, slots=True)
class Pos:
    file: str
    line: int  # 1-based
    column: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class Problem:
    pos: Pos
    message: str

    def __str__(self) -> str:
        return f"{self.pos}: {self.message}"


class PolicyError(ConfigError):
    """Policies that do not load or compile; ``items`` holds every :class:`Problem`."""

    def __init__(self, items: list[Problem], partial: PolicyFile | None = None) -> None:
        self.items = items
        #: what did parse in a file with problems, so compilation can report its problems too
        self.partial = partial
        super().__init__([str(p) for p in items])


# --------------------------------------------------------------------------- located YAML


@dataclass(frozen=True, slots=True)
class Y:
    """A YAML value with its position: scalar, ``list[Y]`` or ``dict[str, Y]``."""

    value: Any
    pos: Pos
    keys: dict[str, Pos] | None = None  # for a mapping: where each key is

    def key_pos(self, key: str) -> Pos:
        return self.pos if self.keys is None else self.keys.get(key, self.pos)

    @property
    def is_map(self) -> bool:
        return isinstance(self.value, dict)

    @property
    def is_seq(self) -> bool:
        return isinstance(self.value, list)


_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_PLAIN_TAGS = ("bool", "int", "float", "null")


def _pos(mark: Any, file: str) -> Pos:
    return Pos(file, mark.line + 1, mark.column + 1)


def load_yaml(text: str, file: str) -> Y | None:
    """Compose ``text`` into located values (``None`` for an empty document)."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        return None if node is None else _convert(node, loader, file)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = _pos(mark, file) if mark is not None else Pos(file, 1, 1)
        raise PolicyError([Problem(pos, f"YAML: {exc.problem or exc.context}")]) from None
    except yaml.YAMLError as exc:
        raise PolicyError([Problem(Pos(file, 1, 1), f"YAML: {type(exc).__name__}")]) from None
    finally:
        loader.dispose()


def _convert(node: yaml.Node, loader: Any, file: str) -> Y:
    pos = _pos(node.start_mark, file)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Y] = {}
        keys: dict[str, Pos] = {}
        for key_node, value_node in node.value:
            kpos = _pos(key_node.start_mark, file)
            if not isinstance(key_node, yaml.ScalarNode) or not isinstance(key_node.value, str):
                raise PolicyError([Problem(kpos, "keys must be plain strings")])
            key = key_node.value
            if key in out:
                raise PolicyError([Problem(kpos, f"duplicate key {key!r}")])
            out[key] = _convert(value_node, loader, file)
            keys[key] = kpos
        return Y(out, pos, keys)
    if isinstance(node, yaml.SequenceNode):
        return Y([_convert(item, loader, file) for item in node.value], pos)
    if node.tag.rsplit(":", 1)[-1] in _PLAIN_TAGS:
        return Y(loader.construct_object(node, deep=True), pos)
    return Y(str(node.value), pos)  # strings, and timestamps kept as written


# --------------------------------------------------------------------------- the language

C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class All(Generic[C]):
    items: tuple[C, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class Any_(Generic[C]):
    items: tuple[C, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class Not(Generic[C]):
    item: C
    pos: Pos


@dataclass(frozen=True, slots=True)
class Codings:
    """``security``, ``tag``, ``codes``, ``code_in``, ``category``: a coding at ``path`` is in
    ``codings`` (``system|code``) or in one of the named ``lists``."""

    path: tuple[str, ...]
    codings: tuple[tuple[str, str], ...]
    lists: tuple[str, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class Status:
    values: tuple[str, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class Element:
    path: tuple[str, ...]
    op: Literal["equals", "in", "exists"]
    value: Any  # a scalar; a tuple of scalars for "in"; a bool for "exists"
    pos: Pos


@dataclass(frozen=True, slots=True)
class FhirPath:
    expression: str
    pos: Pos


ResourceCond = All[Any] | Any_[Any] | Not[Any] | Codings | Status | Element | FhirPath


@dataclass(frozen=True, slots=True)
class ScopeLevel:
    levels: tuple[str, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class FhirUserType:
    types: tuple[str, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class PatientFacing:
    value: bool
    pos: Pos


@dataclass(frozen=True, slots=True)
class Claim:
    name: tuple[str, ...]  # a dotted name walks nested objects: realm_access.roles
    op: Literal["present", "equals", "contains", "any_of"]
    value: Any
    pos: Pos


@dataclass(frozen=True, slots=True)
class ClientId:
    ids: tuple[str, ...]
    pos: Pos


PrincipalCond = (
    All[Any] | Any_[Any] | Not[Any] | ScopeLevel | FhirUserType | PatientFacing | Claim | ClientId
)


@dataclass(frozen=True, slots=True)
class Policy:
    id: str
    description: str
    resource_types: tuple[str, ...]
    effect: Effect
    resource: ResourceCond | None  # None: every resource of those types
    principal: PrincipalCond | None  # None: every caller
    redact: tuple[tuple[str, ...], ...]  # effect redact: element paths
    overrides: tuple[str, ...] | None  # effect allow: ids it excepts; None = "*" (all)
    break_glass: bool
    release_by: PrincipalCond | None  # who may write a resource out of this policy
    pos: Pos


@dataclass(frozen=True, slots=True)
class CodeListEntry:
    system: str
    codes: tuple[str, ...]
    prefixes: tuple[str, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class CodeList:
    name: str
    entries: tuple[CodeListEntry, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class PolicyFile:
    file: str
    policies: tuple[Policy, ...]
    code_lists: tuple[CodeList, ...]


def parse_file(text: str, file: str) -> PolicyFile:
    """Parse one policy file; raise :class:`PolicyError` listing every problem in it."""
    root = load_yaml(text, file)
    if root is None:
        return PolicyFile(file, (), ())
    from gateway.policy.parse import FileParser  # the grammar, kept in its own module

    parser = FileParser(file)
    result = parser.document(root)
    if parser.problems:
        problems = sorted(parser.problems, key=lambda p: (p.pos.line, p.pos.column))
        raise PolicyError(problems, partial=result)
    return result


__all__ = [
    "EFFECTS",
    "ID_PATTERN",
    "LEVEL_NAMES",
    "PATH",
    "RESOURCE_TYPES",
    "UNREDACTABLE",
    "All",
    "Any_",
    "Claim",
    "ClientId",
    "CodeList",
    "CodeListEntry",
    "Codings",
    "Effect",
    "Element",
    "FhirPath",
    "FhirUserType",
    "Not",
    "PatientFacing",
    "Policy",
    "PolicyError",
    "PolicyFile",
    "PrincipalCond",
    "Problem",
    "ResourceCond",
    "ScopeLevel",
    "Status",
    "Y",
    "load_yaml",
    "parse_file",
]
