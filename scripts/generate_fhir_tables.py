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

``--check`` regenerates in memory and fails if the committed file differs (run by `make test`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

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

    return {
        "_generated_by": "scripts/generate_fhir_tables.py from FHIR R4 4.0.1 definitions",
        "resource_types": sorted(types),
        "patient_compartment": {t: table[t] for t in sorted(table)},
        "search_params": {t: dict(sorted(by_type[t].items())) for t in sorted(by_type)},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    ap.add_argument("--check", action="store_true", help="fail if the committed file is stale")
    args = ap.parse_args()
    if not args.source.is_dir():
        if args.check:
            print(f"source {args.source} not found: skipping the freshness check")
            return 0
        raise SystemExit(f"source {args.source} not found")
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
