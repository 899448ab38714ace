#!/usr/bin/env python3
"""Policy engine throughput: resources/s for the shipped policies on a large Bundle.

Builds a searchset-like list of resources (labs final and preliminary, vital signs,
Conditions ordinary, labelled and coded from the sensitive lists, DiagnosticReports, and
types no policy names), binds the shipped policy set to a caller once (as the gateway does per
request) and times ``evaluate`` over every resource, best of ``--rounds``. Single core.
Redaction and withholding are in-place / return-only, so the same resources are reused.

A FHIRPath variant (one extra policy with a FHIRPath resource condition on Observation) shows
the cost of the escape hatch.

Usage: .venv/bin/python bench/policy_bench.py [--resources 200000] [--rounds 5]
Not a timed test: the target (decision in issue 6) is >= 200,000 resources/s per core for the
non-FHIRPath conditions.
"""

from __future__ import annotations

import argparse
import random
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.policy.compile import compile_files  # noqa: E402
from gateway.policy.engine import PolicySet, PrincipalView  # noqa: E402
from gateway.policy.model import parse_file  # noqa: E402
from gateway.policy.store import discover, load_policy_set  # noqa: E402

OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
SCT = "http://snomed.info/sct"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def coded(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": "x"}], "text": "x"}


def make_resources(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(n):
        kind = rnd.random()
        meta = {"versionId": "1", "lastUpdated": "2024-01-01T00:00:00Z"}
        if kind < 0.45:
            cat = "laboratory" if rnd.random() < 0.7 else "vital-signs"
            status = rnd.choice(["final", "final", "final", "preliminary", "amended"])
            out.append({
                "resourceType": "Observation", "id": f"o{i}", "meta": meta, "status": status,
                "category": [coded(OBS_CAT, cat)], "code": coded("http://loinc.org", "718-7"),
                "subject": {"reference": "Patient/p1"}, "valueQuantity": {"value": 13.2},
            })  # fmt: skip
        elif kind < 0.75:
            r: dict[str, Any] = {
                "resourceType": "Condition", "id": f"c{i}", "meta": dict(meta),
                "code": coded(SCT, rnd.choice(["38341003", "44054006", "35489007", "195967001"])),
                "subject": {"reference": "Patient/p1"},
            }  # fmt: skip
            if rnd.random() < 0.05:
                r["meta"]["security"] = [{"system": ACT, "code": "PSY"}]
            out.append(r)
        elif kind < 0.85:
            out.append({
                "resourceType": "DiagnosticReport", "id": f"d{i}", "meta": meta,
                "status": rnd.choice(["final", "partial"]),
                "category": [coded("http://terminology.hl7.org/CodeSystem/v2-0074", "LAB")],
                "code": coded("http://loinc.org", "58410-2"),
            })  # fmt: skip
        else:
            rtype = rnd.choice(["MedicationRequest", "Encounter", "Procedure", "Immunization"])
            out.append({"resourceType": rtype, "id": f"x{i}", "meta": meta, "status": "completed"})
    return out


def run(
    policies: PolicySet, view: PrincipalView, resources: list[dict[str, Any]], rounds: int
) -> tuple[float, int]:
    bound = policies.bind(view)
    evaluate = bound.evaluate
    best = float("inf")
    hidden = 0
    for _ in range(rounds):
        start = time.perf_counter()
        hidden = 0
        for r in resources:
            if not evaluate(r).visible:
                hidden += 1
        best = min(best, time.perf_counter() - start)
    return len(resources) / best, hidden


FHIRPATH_POLICY = """
policies:
  - id: fhirpath-high-values
    description: bench only
    resource_types: [Observation]
    resource: {fhirpath: "Observation.value.ofType(Quantity).value > 100"}
    principal: {patient_facing: true}
    effect: withhold
"""


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--resources", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    shipped = load_policy_set([ROOT / "policies"])
    resources = make_resources(args.resources)
    callers = {
        "patient (patient/ scopes)": PrincipalView("patient", "Patient", "app", "s", "p1", {}),
        "clinician without role": PrincipalView("user", "Practitioner", "ehr", "s", None, {}),
        "clinician with role": PrincipalView(
            "user", "Practitioner", "ehr", "s", None, {"roles": ["sensitive-data-reader"]}
        ),
        "clinician, break-the-glass": PrincipalView(
            "user", "Practitioner", "ehr", "s", None, {"purpose_of_use": "BTG"}
        ),
    }
    print(f"shipped policies: {len(shipped)}; resources: {len(resources):,}; best of {args.rounds}")
    for name, view in callers.items():
        rate, hidden = run(shipped, view, resources, args.rounds)
        print(f"  {name:30s} {rate:>12,.0f} resources/s   withheld {hidden:,}")
    files = [parse_file(p.read_text(), str(p)) for p in discover([ROOT / "policies"])]
    files.append(parse_file(textwrap.dedent(FHIRPATH_POLICY), "bench-fhirpath.yaml"))
    with_fp = compile_files(files)
    small = resources[: max(1, args.resources // 20)]
    rate, hidden = run(with_fp, callers["patient (patient/ scopes)"], small, 1)
    print(f"  {'patient + a FHIRPath policy':30s} {rate:>12,.0f} resources/s   "
          f"withheld {hidden:,} (on {len(small):,})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
