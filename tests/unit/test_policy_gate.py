"""Versioned reads and histories under privacy policies (``policy_gate``, ``prechecks``).

A policy judges each returned version on its own, so an older, unlabelled version of a
withheld resource would escape it: vread and instance history of a type policies may restrict
are judged on the current version too (``Prefetch.CURRENT_VISIBLE``), type and system history
on such types are refused (``policy.history``).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.access import policy_gate
from gateway.access.authorize import ALL_LEVELS, UNCONFINED_LEVELS, Access, authorize
from gateway.access.decision import Decision, Prefetch
from gateway.errors import NotFound, UpstreamError
from gateway.fhir.request import FhirRequest, classify
from gateway.fhir.target import parse_target
from gateway.policy.engine import BoundPolicies
from gateway.prechecks import precheck
from gateway.smart.scopes import parse_scopes
from gateway.upstream.fetch import Fetcher
from tests.unit.policy_helpers import ACT, PATIENT, PLAIN_CLINICIAN, policies

POLICIES = policies(
    """
    policies:
      - id: psy
        description: PSY-labelled Conditions are withheld.
        resource_types: [Condition]
        resource: {security: ["http://terminology.hl7.org/CodeSystem/v3-ActCode|PSY"]}
        effect: withhold
      - id: patient-binaries
        description: Binaries are withheld from patient-facing callers.
        resource_types: [Binary]
        principal: {patient_facing: true}
        effect: withhold
    """
)
CLINICIAN = POLICIES.bind(PLAIN_CLINICIAN)  # Condition may be restricted, Binary not
PATIENT_BOUND = POLICIES.bind(PATIENT)  # Condition and Binary may be restricted
NOBODY = policies("policies: []").bind(PLAIN_CLINICIAN)

USER = Access(parse_scopes("user/*.cruds"), None, UNCONFINED_LEVELS)
CONF = Access(parse_scopes("patient/*.rs"), "A", ALL_LEVELS)
BOUND = {"clinician": CLINICIAN, "patient": PATIENT_BOUND, "nobody": NOBODY}
ACCESSES = {"clinician": USER, "patient": CONF, "nobody": USER}


def req(method: str, path: str) -> FhirRequest:
    target = parse_target("/" + path, "")
    assert target is not None
    return classify(method, target)


def decide(caller: str, path: str) -> Decision:
    r = req("GET", path)
    decision = authorize(ACCESSES[caller], r)
    assert decision.allowed, decision
    return policy_gate.apply_policies(r, decision, BOUND[caller])


CURRENT = Prefetch.CURRENT_VISIBLE
BINARY = Prefetch.BINARY_SECURITY_CONTEXT

# (id, caller, path, expected: a denial reason, or the prefetch of an allowance)
CASES: list[tuple[str, str, str, str | Prefetch | None]] = [
    # vread / instance history: the current version is judged too when policies may restrict
    ("vread-restricted", "clinician", "Condition/c1/_history/1", CURRENT),
    ("history-instance-restricted", "clinician", "Condition/c1/_history", CURRENT),
    ("history-instance-since", "clinician", "Condition/c1/_history?_since=2020-01-01", CURRENT),
    ("vread-patient", "patient", "Condition/c1/_history/1", CURRENT),
    ("vread-unrestricted-type", "clinician", "Observation/o1/_history/1", None),
    ("vread-no-policy", "nobody", "Condition/c1/_history/1", None),
    ("read-is-judged-itself", "clinician", "Condition/c1", None),
    ("search-is-judged-itself", "clinician", "Condition?code=x", None),
    # a confined Binary keeps its own check (which also judges its current version)
    ("binary-vread-confined", "patient", "Binary/b1/_history/1", BINARY),
    # type / system history: refused when they may return an old version of a restricted type
    ("history-type-restricted", "clinician", "Condition/_history", "policy.history"),
    ("history-type-count", "clinician", "Condition/_history?_summary=count", "policy.history"),
    ("history-type-unrestricted", "clinician", "Observation/_history", None),
    ("history-type-no-policy", "nobody", "Condition/_history", None),
    ("history-system-restricted", "clinician", "_history", "policy.history"),
    ("history-system-type-param", "clinician", "_history?_type=Observation", "policy.history"),
    ("history-system-no-policy", "nobody", "_history", None),
]


@pytest.mark.parametrize(("caller", "path", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_versioned_reads_and_histories(caller: str, path: str, expected: Any) -> None:
    decision = decide(caller, path)
    if isinstance(expected, str) and not isinstance(expected, Prefetch):
        assert not decision.allowed and decision.status == 403, decision
        assert decision.reason == expected
    else:
        assert decision.allowed, decision
        assert decision.prefetch is expected, decision


@pytest.mark.parametrize(
    ("caller", "path", "judged"),
    [
        ("clinician", "Condition/c1/_history/1", True),
        ("clinician", "Condition/c1/_history", True),
        ("clinician", "Condition/c1", False),
        ("clinician", "Observation/o1/_history/1", False),
        ("patient", "Binary/b1/_history/1", True),
        ("nobody", "Condition/c1/_history/1", False),
    ],
)
def test_judges_current(caller: str, path: str, judged: bool) -> None:
    assert policy_gate.judges_current(req("GET", path), BOUND[caller]) is judged


# ---------------------------------------------------------------- the current-version check


class FakeFetcher(Fetcher):
    """Answers every read with ``current`` (or by ``Type/id`` from ``table``)."""

    def __init__(self, current: Any = None, table: dict[str, dict[str, Any]] | None = None) -> None:
        self.bases = ("https://gw.example/fhir",)
        self.current = current
        self.table = table
        self.calls: list[tuple[str, str]] = []

    async def get(self, rtype: str, rid: str) -> dict[str, Any] | None:
        self.calls.append((rtype, rid))
        if self.table is not None:
            return self.table.get(f"{rtype}/{rid}")
        if isinstance(self.current, Exception):
            raise self.current
        return copy.deepcopy(self.current)  # type: ignore[no-any-return]


def cond(*, psy: bool = False, patient: str = "A") -> dict[str, Any]:
    doc: dict[str, Any] = {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": f"Patient/{patient}"},
    }
    if psy:
        doc["meta"] = {"security": [{"system": ACT, "code": "PSY"}]}
    return doc


WITHHELD = cond(psy=True)
# (id, caller, path, the current version the upstream holds, visible)
CURRENT_CASES: list[tuple[str, str, str, Any, bool]] = [
    ("visible", "clinician", "Condition/c1/_history/1", cond(), True),
    ("withheld", "clinician", "Condition/c1/_history/1", WITHHELD, False),
    ("history-withheld", "clinician", "Condition/c1/_history", WITHHELD, False),
    ("deleted", "clinician", "Condition/c1/_history/1", None, False),
    ("unjudgeable", "clinician", "Condition/c1/_history/1", UpstreamError(), False),
    ("patient-visible", "patient", "Condition/c1/_history/1", cond(), True),
    ("patient-withheld", "patient", "Condition/c1/_history/1", WITHHELD, False),
    ("moved-to-other-patient", "patient", "Condition/c1/_history/1", cond(patient="B"), False),
]


@pytest.mark.parametrize(
    ("caller", "path", "current", "visible"),
    [c[1:] for c in CURRENT_CASES],
    ids=[c[0] for c in CURRENT_CASES],
)
async def test_current_version_must_be_readable(
    caller: str, path: str, current: Any, visible: bool
) -> None:
    r = req("GET", path)
    decision = decide(caller, path)
    fetcher = FakeFetcher(current)
    bound: BoundPolicies = BOUND[caller]
    if visible:
        assert (
            await precheck(fetcher, ACCESSES[caller], r, decision, None, False, POLICIES, bound)
            == {}
        )
    else:
        with pytest.raises(NotFound):  # the same 404 as a nonexistent resource
            await precheck(fetcher, ACCESSES[caller], r, decision, None, False, POLICIES, bound)
    assert fetcher.calls == [("Condition", "c1")]  # one read of the current version


@pytest.mark.parametrize(("caller", "withheld"), [("patient", True), ("clinician", False)])
async def test_confined_binary_vread_judges_the_current_binary(caller: str, withheld: bool) -> None:
    """A confined Binary read keeps its securityContext check; the Binary fetched there (its
    current version) is judged by the caller's policies too."""
    path = "Binary/b1/_history/1"
    r = req("GET", path)
    bound: BoundPolicies = BOUND[caller]
    decision = policy_gate.apply_policies(r, authorize(CONF, r), bound)
    assert decision.prefetch is BINARY
    binary: dict[str, Any] = {
        "resourceType": "Binary",
        "id": "b1",
        "securityContext": {"reference": "Patient/A"},
    }
    table: dict[str, dict[str, Any]] = {
        "Binary/b1": binary,
        "Patient/A": {"resourceType": "Patient", "id": "A"},
    }
    fetcher = FakeFetcher(table=table)
    if withheld:
        with pytest.raises(NotFound):
            await precheck(fetcher, CONF, r, decision, None, False, POLICIES, bound)
    else:
        assert await precheck(fetcher, CONF, r, decision, None, False, POLICIES, bound) == {}
