"""FHIR R4 tables generated from the official definitions (see scripts/generate_fhir_tables.py).

Loaded once at import; never edited by hand.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

_data: dict[str, Any] = json.loads(files("gateway.fhir").joinpath("r4_tables.json").read_text())

RESOURCE_TYPES: frozenset[str] = frozenset(_data["resource_types"])
#: type -> {compartment search parameter -> [element paths]}
PATIENT_COMPARTMENT: dict[str, dict[str, list[str]]] = _data["patient_compartment"]
#: type -> {search parameter code -> search parameter type}
SEARCH_PARAMS: dict[str, dict[str, str]] = _data["search_params"]
#: type -> {token search parameter -> [element paths]}, only for parameters whose expression is
#: a union of simple paths (choice elements typed by ``ofType`` appear as ``valueCodeableConcept``)
TOKEN_PATHS: dict[str, dict[str, list[str]]] = _data["token_paths"]
#: type -> PHI-bearing search parameter codes (the default of ``phi.parameters``)
PHI_PARAMS: dict[str, frozenset[str]] = {
    t: frozenset(codes) for t, codes in _data["phi_params"].items()
}
#: type -> {reference search parameter -> the types it may point at} (what a chain joins into)
REFERENCE_TARGETS: dict[str, dict[str, list[str]]] = _data["reference_targets"]
