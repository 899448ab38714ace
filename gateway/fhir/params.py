"""Search parameter names split into base name, modifier and chain (FHIR R4 search, 3.1.1.4).

    subject                     -> name=subject
    subject:Patient             -> name=subject, modifier=Patient
    subject:Patient.name        -> name=subject, modifier=Patient, chain=(name,)
    subject.organization.name   -> name=subject, chain=(organization, name)
    code:not                    -> name=code, modifier=not
    _include:iterate            -> name=_include, modifier=iterate
    _has:Observation:patient:code -> name=_has, modifier=Observation:patient:code

Matching is exact and case-sensitive, as FHIR requires; never by substring.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.fhir.target import Param


@dataclass(frozen=True, slots=True)
class SearchParam:
    raw: str
    name: str
    modifier: str | None
    chain: tuple[str, ...]
    value: str

    @property
    def values(self) -> list[str]:
        """Comma-separated OR values (a backslash-escaped comma is part of the value)."""
        out: list[str] = []
        current = ""
        escaped = False
        for ch in self.value:
            if escaped:
                current += ch
                escaped = False
            elif ch == "\\":
                current += ch
                escaped = True
            elif ch == ",":
                out.append(current)
                current = ""
            else:
                current += ch
        out.append(current)
        return out


def split_name(raw: str) -> tuple[str, str | None, tuple[str, ...]]:
    if raw.startswith("_has:") or raw == "_has":
        return "_has", raw[5:] or None, ()
    head, dot, rest = raw.partition(".")
    chain = tuple(rest.split(".")) if dot else ()
    name, colon, modifier = head.partition(":")
    return name, (modifier if colon else None), chain


def parse_params(params: tuple[Param, ...]) -> tuple[SearchParam, ...]:
    out = []
    for raw, value in params:
        name, modifier, chain = split_name(raw)
        out.append(SearchParam(raw=raw, name=name, modifier=modifier, chain=chain, value=value))
    return tuple(out)
