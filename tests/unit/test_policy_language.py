"""Every condition kind, principal conditions, precedence and redaction."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from gateway.policy.engine import NOTICE_DIV, VISIBLE, PolicySet
from tests.unit.policy_helpers import (
    CONF,
    LAB,
    PATIENT,
    SCT,
    coded,
    condition,
    policies,
    view,
)

WITHHOLD = """
code_lists:
  psy:
    - system: http://snomed.info/sct
      codes: [35489007]
    - system: http://hl7.org/fhir/sid/icd-10-cm
      prefixes: [F32, R45.851]
policies:
  - id: p
    description: test
    resource_types: [Condition, Observation]
    resource:
      {cond}
    effect: withhold
"""


def hidden(cond: str, resource: dict[str, Any]) -> bool:
    ps = policies(WITHHOLD.replace("{cond}", cond))
    return not ps.evaluate(resource, view()).visible


@pytest.mark.parametrize(
    ("cond", "resource", "expected"),
    [
        (
            f"security: ['{CONF}|R']",
            condition(meta={"security": [{"system": CONF, "code": "R"}]}),
            True,
        ),
        (
            f"security: ['{CONF}|R']",
            condition(meta={"security": [{"system": CONF, "code": "N"}]}),
            False,
        ),
        (
            f"security: ['{CONF}|R']",
            condition(meta={"tag": [{"system": CONF, "code": "R"}]}),
            False,
        ),
        ("tag: ['urn:x|y']", condition(meta={"tag": [{"system": "urn:x", "code": "y"}]}), True),
        ("tag: ['urn:x|y']", condition(), False),
        ("code_in: [psy]", condition(code=coded(SCT, "35489007")), True),
        ("code_in: [psy]", condition(code=coded(SCT, "1234")), False),
        (
            "code_in: [psy]",
            condition(code=coded("http://hl7.org/fhir/sid/icd-10-cm", "F32.9")),
            True,
        ),
        (
            "code_in: [psy]",
            condition(code=coded("http://hl7.org/fhir/sid/icd-10-cm", "F329")),
            True,
        ),
        (
            "code_in: [psy]",
            condition(code=coded("http://hl7.org/fhir/sid/icd-10-cm", "R45851")),
            True,
        ),
        (
            "code_in: [psy]",
            condition(code=coded("http://hl7.org/fhir/sid/icd-10-cm", "F10.2")),
            False,
        ),
        ("code_in: [psy]", condition(code=coded("urn:other", "F32.9")), False),
        (
            "codes: {path: evidence.code, lists: [psy]}",
            condition(evidence=[{"code": [coded(SCT, "35489007")]}]),
            True,
        ),
        ("codes: {codings: ['urn:a|1']}", condition(code=coded("urn:a", "1")), True),
        (
            "codes: {path: valueCoding, codings: ['urn:a|1']}",
            {"resourceType": "Observation", "valueCoding": {"system": "urn:a", "code": "1"}},
            True,
        ),
        (
            "category: ['http://terminology.hl7.org/CodeSystem/observation-category|laboratory']",
            {"resourceType": "Observation", "category": [LAB]},
            True,
        ),
        ("category: ['urn:x|vital']", {"resourceType": "Observation", "category": [LAB]}, False),
        (
            "status: [preliminary, partial]",
            {"resourceType": "Observation", "status": "partial"},
            True,
        ),
        ("status: preliminary", {"resourceType": "Observation", "status": "final"}, False),
        (
            "element: {path: subject.reference, equals: Patient/1}",
            condition(subject={"reference": "Patient/1"}),
            True,
        ),
        (
            "element: {path: subject.reference, equals: Patient/1}",
            condition(subject={"reference": "Patient/2"}),
            False,
        ),
        (
            "element: {path: note.text, in: [a, b]}",
            condition(note=[{"text": "x"}, {"text": "b"}]),
            True,
        ),
        ("element: {path: note.text, in: [a, b]}", condition(note=[{"text": "x"}]), False),
        (
            "element: {path: valueQuantity.value, equals: 7.5}",
            {"resourceType": "Observation", "valueQuantity": {"value": Decimal("7.50")}},
            True,
        ),
        (
            "element: {path: valueBoolean, equals: 1}",
            {"resourceType": "Observation", "valueBoolean": True},
            False,
        ),
        (
            "element: {path: abatementDateTime, exists: true}",
            condition(abatementDateTime="2020"),
            True,
        ),
        (
            "element: {path: abatementDateTime, exists: false}",
            condition(abatementDateTime="2020"),
            False,
        ),
        ("element: {path: abatementDateTime, exists: false}", condition(), True),
        (
            "fhirpath: \"code.coding.where(code = '35489007').exists()\"",
            condition(code=coded(SCT, "35489007")),
            True,
        ),
        (
            "fhirpath: \"code.coding.where(code = '35489007').exists()\"",
            condition(code=coded(SCT, "1")),
            False,
        ),
        (
            'fhirpath: "Observation.value.ofType(Quantity).value > 5"',
            {"resourceType": "Observation", "valueQuantity": {"value": Decimal("7.50")}},
            True,
        ),
        ("fhirpath: code.coding", condition(code=coded(SCT, "1")), True),
        ("fhirpath: code.coding", condition(), False),
        (
            "all: [{status: [active]}, {tag: ['urn:x|y']}]",
            condition(status="active", meta={"tag": [{"system": "urn:x", "code": "y"}]}),
            True,
        ),
        ("all: [{status: [active]}, {tag: ['urn:x|y']}]", condition(status="active"), False),
        ("any: [{status: [active]}, {tag: ['urn:x|y']}]", condition(status="active"), True),
        ("any: [{status: [active]}, {tag: ['urn:x|y']}]", condition(status="x"), False),
        ("not: {status: [active]}", condition(status="active"), False),
        ("not: {status: [active]}", condition(status="inactive"), True),
        (
            "[{status: [active]}, {element: {path: id, equals: c1}}]",
            condition(status="active"),
            True,
        ),
    ],
)
def test_resource_conditions(cond: str, resource: dict[str, Any], expected: bool) -> None:
    assert hidden(cond, resource) is expected


def test_malformed_resource_fails_closed() -> None:
    ps = policies(WITHHOLD.replace("{cond}", f"security: ['{CONF}|R']"))
    out = ps.evaluate(condition(meta={"security": "R"}), view())
    assert not out.visible
    assert out.errors == ("p",)


def test_no_policy_for_type_is_untouched() -> None:
    ps = policies(WITHHOLD.replace("{cond}", "status: [x]"))
    assert ps.evaluate({"resourceType": "Patient", "status": "x"}, view()) is VISIBLE


PRINCIPAL = """
policies:
  - id: p
    description: test
    resource_types: [Condition]
    principal:
      {cond}
    effect: withhold
"""


@pytest.mark.parametrize(
    ("cond", "who", "expected"),
    [
        ("scope_level: patient", view("patient", None), True),
        ("scope_level: [patient, system]", view("user"), False),
        ("fhir_user_type: [Patient, RelatedPerson]", view("user", "RelatedPerson"), True),
        ("fhir_user_type: Patient", view("user", "Practitioner"), False),
        ("fhir_user_type: Patient", view("system", None), False),
        ("patient_facing: true", view("patient", "Practitioner"), True),
        ("patient_facing: true", view("user", "Patient"), True),
        ("patient_facing: true", view("user", "Practitioner"), False),
        ("patient_facing: false", view("system", None), True),
        ("claim: {name: roles, present: true}", view(roles=[]), True),
        ("claim: {name: roles, present: true}", view(), False),
        ("claim: {name: roles, present: false}", view(), True),
        ("claim: {name: roles, contains: reader}", view(roles=["x", "reader"]), True),
        ("claim: {name: roles, contains: reader}", view(roles="x reader"), True),
        ("claim: {name: roles, contains: reader}", view(roles=["readers"]), False),
        (
            "claim: {name: realm_access.roles, contains: r}",
            view(realm_access={"roles": ["r"]}),
            True,
        ),
        ("claim: {name: realm_access.roles, contains: r}", view(realm_access="r"), False),
        ("claim: {name: dept, equals: cardio}", view(dept="cardio"), True),
        ("claim: {name: dept, equals: cardio}", view(dept=["cardio"]), False),
        ("claim: {name: tier, equals: 3}", view(tier=3), True),
        (
            "claim: {name: purpose_of_use, any_of: [BTG, 'urn:r|BTG']}",
            view(purpose_of_use="BTG"),
            True,
        ),
        (
            "claim: {name: purpose_of_use, any_of: ['urn:r|BTG']}",
            view(purpose_of_use=[{"system": "urn:r", "code": "BTG"}]),
            True,
        ),
        ("claim: {name: purpose_of_use, any_of: [BTG]}", view(purpose_of_use="TREAT"), False),
        ("client_id: [a, b]", view(client_id="b"), True),
        ("client_id: [a, b]", view(client_id=None), False),
        ("all: [{scope_level: user}, {client_id: app}]", view(), True),
        ("any: [{scope_level: patient}, {client_id: other}]", view(), False),
        ("not: {scope_level: patient}", view(), True),
    ],
)
def test_principal_conditions(cond: str, who: Any, expected: bool) -> None:
    ps = policies(PRINCIPAL.replace("{cond}", cond))
    assert (not ps.evaluate(condition(), who).visible) is expected


PRECEDENCE = """
policies:
  - id: hide
    description: withhold labelled
    resource_types: [Condition]
    resource: {tag: ['urn:t|secret']}
    effect: withhold
  - id: hide-more
    description: withhold drafts
    resource_types: [Condition]
    resource: {status: [draft]}
    effect: withhold
  - id: strip
    description: redact notes
    resource_types: [Condition]
    effect: redact
    redact: [note, "onset[x]"]
  - id: doctors
    description: doctors see secret ones
    resource_types: [Condition]
    principal: {fhir_user_type: Practitioner}
    effect: allow
    overrides: [hide]
  - id: btg
    description: emergency
    resource_types: [Condition]
    principal: {claim: {name: purpose_of_use, contains: BTG}}
    effect: allow
    overrides: '*'
    break_glass: true
"""
SECRET = {"tag": [{"system": "urn:t", "code": "secret"}]}


def fresh(**extra: Any) -> dict[str, Any]:
    return condition(meta={"tag": [{"system": "urn:t", "code": "secret"}]}, **extra)


def test_withhold_wins_without_exception() -> None:
    out = policies(PRECEDENCE).evaluate(fresh(), PATIENT)
    assert not out.visible
    assert out.withheld_by == ("hide",)
    assert out.redacted_by == ()  # moot


def test_exception_cancels_only_what_it_names() -> None:
    ps = policies(PRECEDENCE)
    doctor = view("user", "Practitioner")
    out = ps.evaluate(fresh(note=[{"text": "x"}]), doctor)
    assert out.visible and out.allowed_by == ("doctors",) and out.redacted_by == ("strip",)
    assert not out.break_glass
    # "doctors" does not name hide-more: a second withhold still wins
    out = ps.evaluate(fresh(status="draft"), doctor)
    assert not out.visible and out.withheld_by == ("hide-more",) and out.allowed_by == ()


def test_break_glass_overrides_all_and_is_flagged() -> None:
    ps = policies(PRECEDENCE)
    r = fresh(status="draft", note=[{"text": "x"}])
    out = ps.evaluate(r, view("user", "Patient", purpose_of_use="BTG"))
    assert out.visible and out.break_glass and out.allowed_by == ("btg",)
    assert out.redacted_by == () and "note" in r
    assert set(out.policy_ids) == {"btg"}


def test_exception_that_cancels_nothing_is_not_reported() -> None:
    out = policies(PRECEDENCE).evaluate(condition(), view("user", "Practitioner"))
    assert out.allowed_by == () and out.redacted_by == ("strip",)


def test_redaction_removes_elements_and_narrative() -> None:
    r = condition(
        text={"status": "generated", "div": "<div>depression, see note</div>"},
        note=[{"text": "private"}],
        onsetDateTime="2020-01-01",
        _onsetDateTime={"extension": []},
        meta={"security": [{"system": CONF, "code": "N"}]},
        code={"text": "kept"},
    )
    out = policies(PRECEDENCE).evaluate(r, view("user", "Practitioner"))
    assert out.visible and out.changed and out.redacted_by == ("strip",)
    assert "note" not in r and "onsetDateTime" not in r and "_onsetDateTime" not in r
    assert r["text"] == {"status": "generated", "div": NOTICE_DIV}
    assert r["code"] == {"text": "kept"}
    codes = [c["code"] for c in r["meta"]["security"]]
    assert codes == ["N", "REDACTED"]
    policies(PRECEDENCE).evaluate(r, view("user", "Practitioner"))
    assert [c["code"] for c in r["meta"]["security"]] == ["N", "REDACTED"]  # idempotent


def test_redaction_of_nested_paths_in_lists() -> None:
    ps = policies(
        """
        policies:
          - id: r
            description: x
            resource_types: [Observation]
            effect: redact
            redact: ["component.value[x]", note.authorString]
        """
    )
    r = {
        "resourceType": "Observation",
        "component": [{"code": {}, "valueQuantity": {}}, {"valueString": "s", "code": {}}],
        "note": [{"authorString": "a", "text": "t"}],
    }
    assert ps.evaluate(r, view()).redacted_by == ("r",)
    assert r["component"] == [{"code": {}}, {"code": {}}]
    assert r["note"] == [{"text": "t"}]
    assert "text" not in r  # no narrative to replace


def test_contained_resources_are_judged() -> None:
    ps = policies(PRECEDENCE)
    r = {
        "resourceType": "Claim",
        "text": {"div": "<div>x</div>"},
        "contained": [fresh(id="a"), {"resourceType": "Patient", "id": "p"}],
    }
    out = ps.evaluate(r, PATIENT)
    assert out.visible and out.redacted_by == ("hide",)
    assert r["contained"] == [{"resourceType": "Patient", "id": "p"}]
    assert r["text"]["div"] == NOTICE_DIV


def test_bind_skips_types_and_callers_without_restrictions() -> None:
    ps = policies(PRINCIPAL.replace("{cond}", "scope_level: patient"))
    assert ps.bind(PATIENT).may_restrict("Condition")
    assert not ps.bind(view()).may_restrict("Condition")
    assert ps.bind(PATIENT).restricted_types == frozenset({"Condition"})
    assert ps.bind(view()).evaluate(condition()) is VISIBLE
    assert PolicySet().bind(PATIENT).evaluate(condition()) is VISIBLE


GUARDED = """
policies:
  - id: hide
    description: x
    resource_types: [Observation]
    resource:
      all:
        - category: ['http://terminology.hl7.org/CodeSystem/observation-category|laboratory']
        - status: [preliminary]
    principal: {patient_facing: true}
    effect: withhold
    release_by: {claim: {name: roles, contains: lab-releaser}}
"""


def test_write_escapes() -> None:
    ps = policies(GUARDED)
    stored = {"resourceType": "Observation", "category": [LAB], "status": "preliminary"}
    final = {**stored, "status": "final"}
    still = {**stored, "note": []}
    assert ps.write_escapes(stored, final, view()) == ("hide",)
    assert ps.write_escapes(stored, {**stored, "category": []}, view()) == ("hide",)
    assert ps.write_escapes(stored, still, view()) == ()
    assert ps.write_escapes(stored, final, view(roles=["lab-releaser"])) == ()
    assert ps.write_escapes(final, stored, view()) == ()  # entering a policy is fine
    assert ps.write_escapes(stored, {**stored, "resourceType": "Basic"}, view()) == ("hide",)
    assert ps.guarding(stored) == ("hide",)
    assert ps.guarding(final) == ()
