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
    }


def skipped_token_params(source: Path) -> list[str]:
    """``Type.code`` of the token parameters left out of ``token_paths`` (for the report)."""
    bundle = json.loads((source / "search-parameters.json").read_text())
    params = [e["resource"] for e in bundle["entry"]]
    types = {b for sp in params for b in sp["base"]} - ABSTRACT
    return _token_table(params, types)[1]


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
    text = json.dumps(build(args.source), indent=1, sort_keys=False) + "\n"
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is stale: run `make generate`", file=sys.stderr)
            return 1
        print(f"{OUT.relative_to(ROOT)} is up to date")
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
