#!/usr/bin/env python3
"""Generate gateway/fhir/r4_tables.json from the official FHIR R4 (4.0.1) definitions.

Inputs (never edited by hand): ``compartmentdefinition-patient.json`` and
``search-parameters.json`` from ``../shared/fhir-r4/`` (or ``--source DIR``).

Output tables:
- ``resource_types``: every concrete R4 resource type.
- ``patient_compartment``: for each type in the Patient compartment, its compartment search
  parameters and, per parameter, the element paths (relative to the resource) they read.
  Types the CompartmentDefinition lists without parameters are never in the compartment.
- ``search_params``: for each type, its search parameter codes and their types (including the
  ones inherited from Resource/DomainResource), so the gateway knows which names exist and
  which are references.
- ``token_paths``: for each type, its ``token`` search parameters whose FHIRPath expression for
  that type is a union of simple paths (``Type.a.b``; ``(Type.a.ofType(T))`` and
  ``Type.a as T`` map to the JSON choice element ``aT``), as element paths relative to the
  resource. Used to verify SMART v2 granular scopes (``Observation.rs?category=sys|code``)
  locally. Parameters with any other construct (``where``, functions, ``and``) are left out,
  so they are not evaluable and granular checks on them fail closed; so are parameters that
  read ``telecom`` (ContactPoint: its ``system`` is a code such as ``email``, not a URI).

``--check`` regenerates in memory and fails if the committed file differs (run by `make test`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "gateway" / "fhir" / "r4_tables.json"
PHI_DOC = ROOT / "docs" / "phi-parameters.md"
DEFAULT_SOURCE = ROOT.parent / "shared" / "fhir-r4"
ABSTRACT = {"Resource", "DomainResource"}
# Parameters is a concrete R4 resource type with no search parameters and no compartment entry
# (it is never stored: it carries operation inputs and outputs), so neither input lists it.
NOT_IN_INPUTS = {"Parameters"}
_WHERE = re.compile(r"\.where\(resolve\(\) is Patient\)$")


def _paths_for(expression: str, rtype: str) -> list[str]:
    """Element paths of one type's part of a (possibly multi-type) FHIRPath expression."""
    paths: list[str] = []
    for part in expression.split("|"):
        part = part.strip()
        if not part.startswith(rtype + "."):
            continue
        part = _WHERE.sub("", part)  # `.where(resolve() is Patient)`: the target is checked anyway
        if not re.fullmatch(r"[A-Za-z]+(\.[A-Za-z]+)+", part):
            raise SystemExit(f"unsupported compartment expression for {rtype}: {part!r}")
        paths.append(part[len(rtype) + 1 :])
    return paths


_SIMPLE = r"[A-Za-z]+(?:\.[A-Za-z]+)+"
_OFTYPE = re.compile(rf"({_SIMPLE})\.ofType\(([A-Za-z]+)\)")
_AS = re.compile(rf"({_SIMPLE}) as ([A-Za-z]+)")


def _token_paths_for(expression: str, prefix: str) -> list[str] | None:
    """Element paths of the parts of ``expression`` that start with ``prefix + "."``.

    Returns None when one of those parts is not a simple path (the parameter is then left out).
    """
    paths: list[str] = []
    for raw in expression.split("|"):
        part = raw.strip()
        if part.startswith("(") and part.endswith(")"):
            part = part[1:-1].strip()
        if not part.startswith(prefix + "."):
            continue
        if re.fullmatch(_SIMPLE, part):
            path = part
        elif m := (_OFTYPE.fullmatch(part) or _AS.fullmatch(part)):
            # a choice element `value[x]` typed T is the JSON key `valueT`
            path = m.group(1) + m.group(2)[0].upper() + m.group(2)[1:]
        else:
            return None
        rel = path[len(prefix) + 1 :]
        if "telecom" in rel.split("."):
            return None
        if rel not in paths:
            paths.append(rel)
    return paths


def _token_table(
    params: list[dict[str, Any]], types: set[str]
) -> tuple[dict[str, dict[str, list[str]]], list[str]]:
    table: dict[str, dict[str, list[str]]] = {}
    skipped: list[str] = []
    for sp in params:
        if sp["type"] != "token":
            continue
        expression = str(sp.get("expression", ""))
        for base in sp["base"]:
            targets = sorted(types) if base in ABSTRACT else [base]
            paths = _token_paths_for(expression, base)
            if not paths:
                skipped.append(f"{base}.{sp['code']}")
                continue
            for t in targets:
                table.setdefault(t, {})[str(sp["code"])] = paths
    return table, skipped


#: resource types that describe a person: their names, birth/death dates, contact details and
#: addresses are demographics (PHI) in search parameters
PERSON_TYPES = frozenset({"Patient", "Person", "RelatedPerson", "Practitioner"})
_PERSON_ELEMENT = re.compile(r"^\(?\w+\.(name|birthDate|deceased|telecom|address)\b")
_IDENTIFIER_ELEMENT = re.compile(r"^\(?\w+\.identifier\b")


def _phi_table(
    params: list[dict[str, Any]], types: set[str], compartment: dict[str, dict[str, list[str]]]
) -> dict[str, list[str]]:
    """PHI-bearing search parameters per type (the default of ``phi.parameters``).

    A parameter carries PHI when (1) it is a Patient-compartment parameter of its type, or a
    reference parameter that may target Patient; (2) its expression reads a person's name,
    birth date, deceased date, telecom or address (Patient, Person, RelatedPerson,
    Practitioner); (3) its expression reads an ``identifier``; (4) it is Patient's ``_id``
    (the gateway's own narrowing constraint for Patient searches). ``gender`` is not PHI.
    """
    phi: dict[str, set[str]] = {t: set(compartment.get(t, {})) for t in types}
    phi["Patient"].add("_id")
    for sp in params:
        code = str(sp["code"])
        for base in sp["base"]:
            if base in ABSTRACT:
                continue
            parts = [p.strip() for p in str(sp.get("expression", "")).split("|")]
            mine = [p for p in parts if p.lstrip("(").startswith(base + ".")]
            person = base in PERSON_TYPES and any(_PERSON_ELEMENT.match(p) for p in mine)
            ident = any(_IDENTIFIER_ELEMENT.match(p) for p in mine)
            patient_ref = sp["type"] == "reference" and "Patient" in sp.get("target", [])
            if person or ident or patient_ref:
                phi[base].add(code)
    return {t: sorted(phi[t]) for t in sorted(phi) if phi[t]}


def _reference_targets(
    params: list[dict[str, Any]], types: set[str]
) -> dict[str, dict[str, list[str]]]:
    """type -> {reference parameter -> target types} (what a chain may join into)."""
    out: dict[str, dict[str, list[str]]] = {}
    for sp in params:
        if sp["type"] != "reference":
            continue
        targets = sorted(t for t in sp.get("target", []) if t in types) or sorted(types)
        for base in sp["base"]:
            for t in sorted(types) if base in ABSTRACT else [base]:
                out.setdefault(t, {})[str(sp["code"])] = targets
    return out


def build(source: Path) -> dict[str, object]:
    compartment = json.loads((source / "compartmentdefinition-patient.json").read_text())
    bundle = json.loads((source / "search-parameters.json").read_text())
    params = [e["resource"] for e in bundle["entry"]]

    types = {r["code"] for r in compartment["resource"]}
    for sp in params:
        types.update(sp["base"])
    types -= ABSTRACT
    types |= NOT_IN_INPUTS

    by_type: dict[str, dict[str, str]] = {t: {} for t in types}
    index: dict[tuple[str, str], dict[str, object]] = {}
    for sp in params:
        for base in sp["base"]:
            index[(base, sp["code"])] = sp
            targets = types if base in ABSTRACT else {base}
            for t in targets:
                by_type[t][sp["code"]] = sp["type"]

    table: dict[str, dict[str, list[str]]] = {}
    for entry in compartment["resource"]:
        rtype = entry["code"]
        for code in entry.get("param", []):
            if code == "{def}":  # Patient itself: membership is its own id
                table.setdefault(rtype, {})
                continue
            sp = index[(rtype, code)]
            if sp["type"] != "reference":
                raise SystemExit(f"compartment parameter {rtype}.{code} is not a reference")
            table.setdefault(rtype, {})[code] = _paths_for(str(sp["expression"]), rtype)

    tokens, _ = _token_table(params, types)

    return {
        "_generated_by": "scripts/generate_fhir_tables.py from FHIR R4 4.0.1 definitions",
        "resource_types": sorted(types),
        "patient_compartment": {t: table[t] for t in sorted(table)},
        "search_params": {t: dict(sorted(by_type[t].items())) for t in sorted(by_type)},
        "token_paths": {t: dict(sorted(tokens[t].items())) for t in sorted(tokens)},
        "phi_params": _phi_table(params, types, table),
        "reference_targets": {
            t: dict(sorted(refs.items()))
            for t, refs in sorted(_reference_targets(params, types).items())
        },
    }


def skipped_token_params(source: Path) -> list[str]:
    """``Type.code`` of the token parameters left out of ``token_paths`` (for the report)."""
    bundle = json.loads((source / "search-parameters.json").read_text())
    params = [e["resource"] for e in bundle["entry"]]
    types = {b for sp in params for b in sp["base"]} - ABSTRACT
    return _token_table(params, types)[1]


def phi_doc(tables: dict[str, object]) -> str:
    """docs/phi-parameters.md: the default PHI parameter list, per resource type."""
    phi = tables["phi_params"]
    assert isinstance(phi, dict)
    lines = [
        "# Default PHI-bearing search parameters",
        "",
        "Generated by `scripts/generate_fhir_tables.py` from the FHIR R4 (4.0.1) search",
        "parameter definitions and the Patient CompartmentDefinition; do not edit by hand.",
        "",
        "A search parameter carries PHI when it is a Patient-compartment parameter of its type,",
        "a reference parameter that may target Patient, reads a person's name, birth date,",
        "deceased date, telecom or address (Patient, Person, RelatedPerson, Practitioner), or",
        "reads an identifier; Patient's `_id` is the gateway's own narrowing constraint.",
        "`gender` is not PHI. At run time, any parameter with the `:identifier` modifier, and",
        "chains and `_has` that touch a PHI parameter, count too (`gateway/phi/rules.py`).",
        "",
        "| resource type | PHI-bearing parameters |",
        "|---|---|",
    ]
    lines += [f"| {t} | {', '.join(f'`{c}`' for c in codes)} |" for t, codes in phi.items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    ap.add_argument("--check", action="store_true", help="fail if the committed file is stale")
    ap.add_argument(
        "--list-skipped", action="store_true", help="list token parameters not in token_paths"
    )
    args = ap.parse_args()
    if not args.source.is_dir():
        if args.check:
            print(f"source {args.source} not found: skipping the freshness check")
            return 0
        raise SystemExit(f"source {args.source} not found")
    if args.list_skipped:
        print("\n".join(skipped_token_params(args.source)))
        return 0
    tables = build(args.source)
    outputs = {OUT: json.dumps(tables, indent=1, sort_keys=False) + "\n", PHI_DOC: phi_doc(tables)}
    if args.check:
        stale = [p for p, text in outputs.items() if not p.exists() or p.read_text() != text]
        for p in stale:
            print(f"{p.relative_to(ROOT)} is stale: run `make generate`", file=sys.stderr)
        if not stale:
            print("generated tables are up to date")
        return 1 if stale else 0
    for p, text in outputs.items():
        p.write_text(text)
        print(f"wrote {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
