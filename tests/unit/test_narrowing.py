"""``narrowing_applied``: does a searchset prove the gateway's narrowing was applied?

Rows are (self link query, outcome issues) against the narrowing that was sent. Anything that
does not prove it is withheld, so every doubtful form is a ``False`` row.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.access.decision import Decision, Verify
from gateway.access.narrowing import (
    UNPROVEN_DIAGNOSTICS,
    narrowing_applied,
    proven_by_first_page,
    unproven_searchset,
)
from gateway.fhir.target import Param

BASE = "https://gw.example.org/fhir"
A = "pat-a"
PATIENT: Param = ("patient", f"Patient/{A}")
SUBJECT: Param = ("subject", f"Patient/{A}")
ID: Param = ("_id", A)

#: sekmet's answer when it does not know the parameter (the search then ran over everyone)
IGNORED = {
    "severity": "warning",
    "code": "not-supported",
    "diagnostics": "Unknown search parameter 'patient' for Goal; parameter ignored",
}


def searchset(
    self_url: str | None, issues: list[dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    doc: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", **extra}
    if self_url is not None:
        doc["link"] = [{"relation": "self", "url": self_url}]
    if issues is not None:
        outcome = {"resourceType": "OperationOutcome", "issue": issues}
        doc["entry"] = [{"resource": outcome, "search": {"mode": "outcome"}}]
    return doc


ROWS: list[tuple[str, dict[str, Any], Param, bool]] = [
    # proven: the self link echoes the narrowing (encoded or not, any form naming A)
    ("encoded", searchset(f"{BASE}/Goal?patient=Patient%2F{A}&_count=0"), PATIENT, True),
    ("plain", searchset(f"{BASE}/Goal?_tag=x&patient=Patient/{A}"), PATIENT, True),
    ("bare-id", searchset(f"{BASE}/Goal?patient={A}"), PATIENT, True),
    ("absolute", searchset(f"{BASE}/Goal?patient={BASE}/Patient/{A}"), PATIENT, True),
    ("typed-modifier", searchset(f"{BASE}/Goal?patient:Patient={A}"), PATIENT, True),
    ("subject", searchset(f"{BASE}/AdverseEvent?subject=Patient/{A}"), SUBJECT, True),
    ("patient-id", searchset(f"{BASE}/Patient?_id={A}"), ID, True),
    ("relative-self", searchset(f"Goal?patient=Patient/{A}"), PATIENT, True),
    (
        "other-warning",
        searchset(f"{BASE}/Goal?patient={A}", [{**IGNORED, "diagnostics": "x"}]),
        PATIENT,
        True,
    ),
    (
        "other-param-ignored",
        searchset(
            f"{BASE}/Goal?patient={A}",
            [{**IGNORED, "diagnostics": "Unknown search parameter 'foo'; parameter ignored"}],
        ),
        PATIENT,
        True,
    ),
    # not proven: the parameter was dropped (sekmet), or names someone else / more than A
    ("dropped", searchset(f"{BASE}/Goal?_count=0&_offset=0"), PATIENT, False),
    ("dropped-with-outcome", searchset(f"{BASE}/Goal?_count=0", [IGNORED]), PATIENT, False),
    ("no-query", searchset(f"{BASE}/Goal"), PATIENT, False),
    ("no-self-link", searchset(None), PATIENT, False),
    ("other-patient", searchset(f"{BASE}/Goal?patient=Patient/pat-b"), PATIENT, False),
    ("prefix-of-id", searchset(f"{BASE}/Goal?patient=Patient/{A}x"), PATIENT, False),
    ("comma-list", searchset(f"{BASE}/Goal?patient=Patient/{A},Patient/pat-b"), PATIENT, False),
    ("other-name", searchset(f"{BASE}/Goal?subject=Patient/{A}"), PATIENT, False),
    ("modifier", searchset(f"{BASE}/Goal?patient:missing=false"), PATIENT, False),
    ("not-modifier", searchset(f"{BASE}/Goal?patient:not=Patient/{A}"), PATIENT, False),
    ("other-type", searchset(f"{BASE}/Goal?patient=Group/{A}"), PATIENT, False),
    ("id-typed", searchset(f"{BASE}/Patient?_id=Patient/{A}"), ID, False),
    ("in-path-only", searchset(f"{BASE}/Patient/{A}/Goal"), PATIENT, False),
    ("in-fragment", searchset(f"{BASE}/Goal#patient={A}"), PATIENT, False),
    # echoed, but an outcome says it was ignored: not trusted either
    ("echoed-but-ignored", searchset(f"{BASE}/Goal?patient={A}", [IGNORED]), PATIENT, False),
    (
        "ignored-by-expression",
        searchset(
            f"{BASE}/Goal?patient={A}",
            [{"severity": "warning", "code": "not-supported", "expression": ["patient"]}],
        ),
        PATIENT,
        False,
    ),
    (
        "ignored-double-quoted",
        searchset(f"{BASE}/Goal?patient={A}", [{**IGNORED, "diagnostics": 'param "patient"'}]),
        PATIENT,
        False,
    ),
    # malformed links prove nothing
    ("link-not-list", {"resourceType": "Bundle", "type": "searchset", "link": "x"}, PATIENT, False),
    (
        "url-not-string",
        {"type": "searchset", "link": [{"relation": "self", "url": 5}]},
        PATIENT,
        False,
    ),
    (
        "next-not-self",
        {"type": "searchset", "link": [{"relation": "next", "url": f"{BASE}/Goal?patient={A}"}]},
        PATIENT,
        False,
    ),
    ("link-entry-not-dict", {"type": "searchset", "link": ["x"]}, PATIENT, False),
]


@pytest.mark.parametrize(
    ("bundle", "narrowing", "proven"), [pytest.param(*r[1:], id=r[0]) for r in ROWS]
)
def test_narrowing_applied_table(bundle: dict[str, Any], narrowing: Param, proven: bool) -> None:
    assert narrowing_applied(bundle, narrowing, A) is proven


def test_row_ids_are_unique() -> None:
    assert len({r[0] for r in ROWS}) == len(ROWS)


def test_unproven_searchset_is_fixed_and_reveals_nothing() -> None:
    doc = unproven_searchset()
    assert doc == unproven_searchset()  # the same answer whatever the upstream held
    assert set(doc) == {"resourceType", "type", "entry"}  # no total, no link, no cursor
    assert doc["type"] == "searchset"
    [entry] = doc["entry"]
    assert entry["search"] == {"mode": "outcome"}
    [issue] = entry["resource"]["issue"]
    assert issue["diagnostics"] == UNPROVEN_DIAGNOSTICS
    assert A not in str(doc)


def test_a_later_page_needs_no_new_proof() -> None:
    from gateway.smart.scopes import parse_scopes

    verify = Verify(parse_scopes("patient/*.rs"), ("patient",), "A", narrowing=("patient", "A"))
    first = Decision(True, "allowed", verify=verify)
    later = proven_by_first_page(first)
    assert later.verify is not None and later.verify.narrowing is None
    assert later.verify.patient == "A"  # every entry is still verified against A
    unnarrowed = Decision(
        True, "allowed", verify=Verify(parse_scopes("user/*.rs"), ("user",), None)
    )
    assert proven_by_first_page(unnarrowed) is unnarrowed
    denied = Decision(False, "scope.type")
    assert proven_by_first_page(denied) is denied
