"""``fhir-gateway check-config`` and ``fhir-gateway explain`` on policy files, as a user runs them.

check-config compiles every policy and lists every problem with file, line and column (exit 1),
or says OK (exit 0). explain prints each policy of the resource's type, whether it applies, and
the decision for that principal (issue 6, "Operations").
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "policies"
PSY = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}


def cli() -> list[str]:
    script = Path(sys.executable).parent / "fhir-gateway"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "gateway"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cli(), *args], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
    )


def write_config(tmp_path: Path, *policy_paths: Path) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "server": {"host": "127.0.0.1", "port": 0, "public_base_url": "https://gw.test/r4"},
                "upstream": {"url": "http://127.0.0.1:9/fhir"},
                "auth": {"jwt": [{"issuer": "https://as.test", "jwks_uri": "https://as.test/j"}]},
                "policies": {"paths": [str(p) for p in policy_paths]},
            }
        )
    )
    return config


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# --------------------------------------------------------------------------- check-config


def test_check_config_accepts_the_shipped_policies(tmp_path: Path) -> None:
    done = run("check-config", "--config", str(write_config(tmp_path, SHIPPED)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout


def test_check_config_lists_every_problem_with_file_and_position(tmp_path: Path) -> None:
    pdir = tmp_path / "policies"
    pdir.mkdir()
    a = pdir / "a.yaml"
    a.write_text(
        dedent(
            """
            policies:
              - id: one
                description: a typo in a condition name
                resource_types: [Condition]
                resource: {statuss: [active]}
                effect: withhold
              - id: two
                description: a typo in a type name
                resource_types: [Conditio]
                effect: withhold
            """
        )
    )
    b = pdir / "b.yaml"
    b.write_text(
        dedent(
            """
            policies:
              - id: three
                description: an unknown code list
                resource_types: [Condition]
                resource:
                  code_in: [mental-helth]
                effect: withhold
              - id: four
                description: a broken FHIRPath
                resource_types: [Observation]
                resource: {fhirpath: "Observation.value.ofType(Quantity).value > (100"}
                effect: withhold
              - id: three
                description: a duplicate id
                resource_types: [Condition]
                effect: withhold
            """
        )
    )
    done = run("check-config", "--config", str(write_config(tmp_path, pdir, SHIPPED)))
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    expected = [
        (f"{a}:5:", "statuss"),
        (f"{a}:9:", "Conditio"),
        (f"{b}:6:", "mental-helth"),
        (f"{b}:11:", "fhirpath"),
        (f"{b}:13:", "three"),
    ]
    lines = out.splitlines()
    for where, what in expected:
        assert any(where in line and what in line for line in lines), (where, what, out)
    # file:line:col, the column a positive number
    for where, _ in expected:
        line = next(x for x in lines if where in x)
        col = line.split(where, 1)[1].split(":", 1)[0]
        assert col.isdigit() and int(col) >= 1, line
    assert "OK" not in done.stdout


def test_check_config_reports_compile_problems_beside_parse_problems_of_the_same_file(
    tmp_path: Path,
) -> None:
    """Reports all errors: an unknown code list in a file must be reported even when another
    policy of that same file has a structural problem (not only after it is fixed)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        dedent(
            """
            policies:
              - id: one
                description: a typo in a condition name
                resource_types: [Condition]
                resource: {statuss: [active]}
                effect: withhold
              - id: two
                description: an unknown code list
                resource_types: [Condition]
                resource: {code_in: [mental-helth]}
                effect: withhold
            """
        )
    )
    done = run("check-config", "--config", str(write_config(tmp_path, bad, SHIPPED)))
    out = done.stdout + done.stderr
    assert done.returncode == 1
    assert f"{bad}:5:" in out, out
    assert f"{bad}:10:" in out and "mental-helth" in out, out


def test_check_config_reports_an_unreadable_yaml_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("policies:\n  - id: x\n    description: [unclosed\n")
    done = run("check-config", "--config", str(write_config(tmp_path, bad)))
    assert done.returncode == 1
    assert f"{bad}:" in done.stdout + done.stderr


# --------------------------------------------------------------------------- explain


def sensitive_condition() -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": "c1",
        "meta": {"security": [dict(PSY)]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "35489007"}]},
        "subject": {"reference": "Patient/p1"},
    }


def preliminary_lab() -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "o1",
        "status": "preliminary",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
        "subject": {"reference": "Patient/p1"},
    }


PATIENT = {
    "iss": "https://as.test",
    "sub": "p-user",
    "client_id": "app",
    "scope": "patient/*.rs",
    "patient": "p1",
    "fhirUser": "Patient/p1",
}
CLINICIAN = {"iss": "https://as.test", "sub": "dr", "client_id": "ehr", "scope": "user/*.rs",
             "fhirUser": "Practitioner/dr-1"}  # fmt: skip
READER = {**CLINICIAN, "roles": ["sensitive-data-reader"]}
BTG = {**CLINICIAN, "purpose_of_use": "BTG"}


def explain(tmp_path: Path, claims: dict[str, Any], resource: dict[str, Any]) -> str:
    (tmp_path / "claims.json").write_text(json.dumps(claims))
    (tmp_path / "resource.json").write_text(json.dumps(resource))
    config = write_config(tmp_path, SHIPPED)
    done = run(
        "explain",
        "--config",
        str(config),
        "--claims",
        str(tmp_path / "claims.json"),
        str(tmp_path / "resource.json"),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def decision(out: str) -> str:
    lines = [x for x in out.splitlines() if x.startswith("decision:")]
    assert len(lines) == 1, out
    return lines[0]


def policy_line(out: str, pid: str) -> str:
    lines = [x for x in out.splitlines() if x.strip().startswith(f"- {pid} ")]
    assert len(lines) == 1, (pid, out)
    return lines[0]


def test_explain_patient_claims_sensitive_condition_is_withheld(tmp_path: Path) -> None:
    out = explain(tmp_path, PATIENT, sensitive_condition())
    assert "resource type: Condition" in out
    assert "patient-facing=yes" in out
    assert "APPLIES" in policy_line(out, "sensitive-conditions")
    assert "sensitive-conditions.yaml:" in policy_line(out, "sensitive-conditions")
    assert "does not apply" in policy_line(out, "sensitive-conditions-break-the-glass")
    assert decision(out).startswith("decision: WITHHELD by sensitive-conditions")


def test_explain_clinician_without_role_is_withheld(tmp_path: Path) -> None:
    out = explain(tmp_path, CLINICIAN, sensitive_condition())
    assert "patient-facing=no" in out
    assert decision(out).startswith("decision: WITHHELD by sensitive-conditions")


def test_explain_clinician_with_role_sees_it(tmp_path: Path) -> None:
    out = explain(tmp_path, READER, sensitive_condition())
    assert "principal condition not met" in policy_line(out, "sensitive-conditions")
    assert decision(out) == "decision: VISIBLE"


def test_explain_break_the_glass_shows_the_exception_and_the_audit(tmp_path: Path) -> None:
    out = explain(tmp_path, BTG, sensitive_condition())
    assert "cancelled by an exception" in policy_line(out, "sensitive-conditions")
    glass = policy_line(out, "sensitive-conditions-break-the-glass")
    assert "APPLIES" in glass and "BREAK-THE-GLASS" in glass
    d = decision(out)
    assert d.startswith("decision: VISIBLE")
    assert "sensitive-conditions-break-the-glass" in d and "break-the-glass" in d


@pytest.mark.parametrize(
    ("claims", "visible"), [(PATIENT, False), (CLINICIAN, True), (READER, True)]
)
def test_explain_preliminary_lab(tmp_path: Path, claims: dict[str, Any], visible: bool) -> None:
    out = explain(tmp_path, claims, preliminary_lab())
    assert "unreleased-labs" in out
    if visible:
        assert decision(out) == "decision: VISIBLE"
    else:
        assert decision(out).startswith("decision: WITHHELD by unreleased-labs")


def test_explain_a_final_lab_and_an_unguarded_type(tmp_path: Path) -> None:
    out = explain(tmp_path, PATIENT, {**preliminary_lab(), "status": "final"})
    assert "resource condition not met" in policy_line(out, "unreleased-labs")
    assert decision(out) == "decision: VISIBLE"
    out = explain(tmp_path, PATIENT, {"resourceType": "Patient", "id": "p1"})
    assert "none apply" in out and decision(out) == "decision: VISIBLE"


def test_explain_with_broken_policies_fails(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("policies:\n  - id: x\n    effect: explode\n")
    (tmp_path / "claims.json").write_text(json.dumps(PATIENT))
    (tmp_path / "resource.json").write_text(json.dumps(sensitive_condition()))
    done = run(
        "explain",
        "--config",
        str(write_config(tmp_path, bad)),
        "--claims",
        str(tmp_path / "claims.json"),
        str(tmp_path / "resource.json"),
    )
    assert done.returncode != 0
    assert f"{bad}:" in done.stdout + done.stderr
