"""Local verification of SMART v2 granular scopes: exact token matches, fail closed otherwise."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest

from gateway.access.granular import (
    TokenValue,
    is_evaluable,
    matches_query,
    matches_token,
    parse_token_values,
)
from gateway.fhir.tables import SEARCH_PARAMS, TOKEN_PATHS

OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
COND_CAT = "http://terminology.hl7.org/CodeSystem/condition-category"
LOINC = "http://loinc.org"
LAB = f"{OBS_CAT}|laboratory"
VITALS = f"{OBS_CAT}|vital-signs"

LAB_OBS: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "obs-1",
    "meta": {
        "security": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}
        ],
        "tag": [{"system": "https://example.org/tags", "code": "released"}],
    },
    "identifier": [{"system": "https://lab.example.org/accession", "value": "ACC-1"}],
    "status": "final",
    "category": [
        {"coding": [{"system": OBS_CAT, "code": "laboratory", "display": "Laboratory"}]},
        {"coding": [{"code": "chemistry"}], "text": "no system"},
    ],
    "code": {
        "coding": [
            {"system": "http://example.org/local", "code": "GLU"},
            {"system": LOINC, "code": "2339-0", "display": "Glucose"},
        ]
    },
    "subject": {"reference": "Patient/a"},
    "valueQuantity": {"value": Decimal("5.50"), "system": "http://unitsofmeasure.org"},
    "component": [
        {
            "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
            "valueCodeableConcept": {"coding": [{"system": LOINC, "code": "LA6576-8"}]},
        }
    ],
}

VITALS_OBS = copy.deepcopy(LAB_OBS)
VITALS_OBS["category"] = [{"coding": [{"system": OBS_CAT, "code": "vital-signs"}]}]

CONDITION: dict[str, Any] = {
    "resourceType": "Condition",
    "category": [{"coding": [{"system": COND_CAT, "code": "problem-list-item"}]}],
    "clinicalStatus": {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                "code": "active",
            }
        ]
    },
    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
    "subject": {"reference": "Patient/a"},
}

MED_REQUEST: dict[str, Any] = {
    "resourceType": "MedicationRequest",
    "status": "active",
    "intent": "order",
    "medicationCodeableConcept": {
        "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1049502"}]
    },
    "subject": {"reference": "Patient/a"},
}

TOKEN_CASES: list[tuple[str, dict[str, Any], str, list[TokenValue], bool | None]] = [
    ("lab category", LAB_OBS, "category", [(OBS_CAT, "laboratory")], True),
    ("vitals is not lab", VITALS_OBS, "category", [(OBS_CAT, "laboratory")], False),
    (
        "OR within values",
        VITALS_OBS,
        "category",
        [(OBS_CAT, "laboratory"), (OBS_CAT, "vital-signs")],
        True,
    ),
    ("code in another system", LAB_OBS, "category", [("http://other", "laboratory")], False),
    ("code alone never matches a coding", LAB_OBS, "category", [(None, "laboratory")], False),
    ("|code matches a coding without system", LAB_OBS, "category", [("", "chemistry")], True),
    ("|code needs the system absent", LAB_OBS, "category", [("", "laboratory")], False),
    ("second coding of the code", LAB_OBS, "code", [(LOINC, "2339-0")], True),
    ("first coding of the code", LAB_OBS, "code", [("http://example.org/local", "GLU")], True),
    ("display is not a code", LAB_OBS, "code", [(LOINC, "Glucose")], False),
    ("case sensitive", LAB_OBS, "category", [(OBS_CAT, "Laboratory")], False),
    (
        "identifier system|value",
        LAB_OBS,
        "identifier",
        [("https://lab.example.org/accession", "ACC-1")],
        True,
    ),
    ("identifier other system", LAB_OBS, "identifier", [("https://x", "ACC-1")], False),
    ("status primitive, code only", LAB_OBS, "status", [(None, "final")], True),
    (
        "status primitive with a system never matches",
        LAB_OBS,
        "status",
        [("http://hl7.org/fhir/observation-status", "final")],
        False,
    ),
    (
        "meta.security",
        LAB_OBS,
        "_security",
        [("http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "N")],
        True,
    ),
    ("meta.tag", LAB_OBS, "_tag", [("https://example.org/tags", "released")], True),
    ("choice element via ofType", LAB_OBS, "component-value-concept", [(LOINC, "LA6576-8")], True),
    ("combo code reads component.code", LAB_OBS, "combo-code", [(LOINC, "8480-6")], True),
    ("value-concept absent", LAB_OBS, "value-concept", [(LOINC, "LA6576-8")], False),
    ("condition category", CONDITION, "category", [(COND_CAT, "problem-list-item")], True),
    (
        "condition encounter-diagnosis",
        CONDITION,
        "category",
        [(COND_CAT, "encounter-diagnosis")],
        False,
    ),
    (
        "condition clinical status",
        CONDITION,
        "clinical-status",
        [("http://terminology.hl7.org/CodeSystem/condition-clinical", "active")],
        True,
    ),
    (
        "medication code via ofType",
        MED_REQUEST,
        "code",
        [("http://www.nlm.nih.gov/research/umls/rxnorm", "1049502")],
        True,
    ),
    ("not a token param", LAB_OBS, "date", [(None, "2024")], None),
    ("reference param", LAB_OBS, "subject", [(None, "Patient/a")], None),
    ("unknown param", LAB_OBS, "nope", [(OBS_CAT, "laboratory")], None),
    ("modifier is not a param", LAB_OBS, "category:not", [(OBS_CAT, "laboratory")], None),
    (
        "telecom is not evaluable",
        {"resourceType": "Patient", "telecom": [{"system": "email", "value": "a@b"}]},
        "telecom",
        [("email", "a@b")],
        None,
    ),
]


@pytest.mark.parametrize(
    ("resource", "param", "values", "expected"),
    [pytest.param(r, p, v, e, id=name) for name, r, p, v, e in TOKEN_CASES],
)
def test_matches_token(
    resource: dict[str, Any], param: str, values: list[TokenValue], expected: bool | None
) -> None:
    result = matches_token(resource, resource["resourceType"], param, values)
    assert result is expected


def test_type_mismatch_is_not_evaluable() -> None:
    assert (
        matches_token(CONDITION, "Observation", "category", [(COND_CAT, "problem-list-item")])
        is None
    )
    assert (
        matches_query(CONDITION, "Observation", (("category", f"{COND_CAT}|problem-list-item"),))
        is False
    )


MALFORMED_ELEMENTS = [
    {"category": "laboratory"},
    {"category": [{"coding": {"system": OBS_CAT, "code": "laboratory"}}]},
    {"category": [{"coding": [{"system": OBS_CAT, "code": 5}]}]},
    {"category": [{"coding": ["laboratory"]}]},
    {"category": [{"text": "laboratory"}]},
    {"category": [None, 1, Decimal("1.0"), True]},
    {},
]


@pytest.mark.parametrize("body", MALFORMED_ELEMENTS)
def test_malformed_elements_never_match(body: dict[str, Any]) -> None:
    resource = {"resourceType": "Observation", **body}
    assert matches_token(resource, "Observation", "category", [(OBS_CAT, "laboratory")]) is False


def test_boolean_primitive() -> None:
    group = {"resourceType": "Group", "actual": True, "characteristic": [{"valueBoolean": False}]}
    assert matches_token(group, "Group", "actual", [(None, "true")]) is True
    assert matches_token(group, "Group", "actual", [(None, "false")]) is False
    assert matches_token(group, "Group", "value", [(None, "false")]) is True


# --------------------------------------------------------------------------- queries

QUERY_CASES = [
    ("lab", LAB_OBS, (("category", LAB),), True),
    ("lab vs vitals", VITALS_OBS, (("category", LAB),), False),
    ("comma OR", VITALS_OBS, (("category", f"{LAB},{VITALS}"),), True),
    ("two params AND: both", LAB_OBS, (("category", LAB), ("code", f"{LOINC}|2339-0")), True),
    ("two params AND: one fails", LAB_OBS, (("category", LAB), ("code", f"{LOINC}|718-7")), False),
    ("repeated param AND", LAB_OBS, (("category", LAB), ("category", VITALS)), False),
    (
        "repeated param AND both present",
        LAB_OBS,
        (("category", LAB), ("category", "|chemistry")),
        True,
    ),
    ("unevaluable param", LAB_OBS, (("category", LAB), ("date", "ge2020")), False),
    ("unknown param", LAB_OBS, (("bogus", LAB),), False),
    ("modifier", LAB_OBS, (("category:not", VITALS),), False),
    ("chain", LAB_OBS, (("subject.name", "x"),), False),
    ("empty value", LAB_OBS, (("category", ""),), False),
    ("system without code", LAB_OBS, (("category", f"{OBS_CAT}|"),), False),
    ("empty alternative", LAB_OBS, (("category", f"{LAB},"),), False),
    ("two bars", LAB_OBS, (("category", f"{LAB}|x"),), False),
    ("code only on a coding", LAB_OBS, (("category", "laboratory"),), False),
    ("code only on a primitive", LAB_OBS, (("status", "final"),), True),
    ("empty query: no restriction", LAB_OBS, (), True),
    ("condition category", CONDITION, (("category", f"{COND_CAT}|problem-list-item"),), True),
    (
        "condition wrong category",
        CONDITION,
        (("category", f"{COND_CAT}|encounter-diagnosis"),),
        False,
    ),
]


@pytest.mark.parametrize(
    ("resource", "query", "expected"),
    [pytest.param(r, q, e, id=name) for name, r, q, e in QUERY_CASES],
)
def test_matches_query(
    resource: dict[str, Any], query: tuple[tuple[str, str], ...], expected: bool
) -> None:
    snapshot = copy.deepcopy(resource)
    assert matches_query(resource, resource["resourceType"], query) is expected
    assert resource == snapshot


def test_unknown_type_is_not_evaluable() -> None:
    assert matches_query({"resourceType": "Spaceship"}, "Spaceship", ()) is False
    assert not is_evaluable("Spaceship", ())
    assert is_evaluable("Observation", (("category", LAB),))
    assert not is_evaluable("Observation", (("category", "a|"),))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (LAB, ((OBS_CAT, "laboratory"),)),
        (f"{LAB},{VITALS}", ((OBS_CAT, "laboratory"), (OBS_CAT, "vital-signs"))),
        ("final", ((None, "final"),)),
        ("|x", (("", "x"),)),
        (r"s|a\,b", (("s", "a,b"),)),
        (r"s\|t|c", (("s|t", "c"),)),
        (r"s|a\\,s|b", (("s", "a\\"), ("s", "b"))),
        (r"s|\$x", (("s", "$x"),)),
        ("", None),
        (",", None),
        ("s|", None),
        ("a|b|c", None),
        ("s|c\\", None),
    ],
)
def test_parse_token_values(raw: str, expected: tuple[TokenValue, ...] | None) -> None:
    assert parse_token_values(raw) == expected


def test_escaped_comma_is_part_of_the_code() -> None:
    res = {
        "resourceType": "Observation",
        "category": [{"coding": [{"system": "s", "code": "a,b"}]}],
    }
    assert matches_query(res, "Observation", (("category", r"s|a\,b"),)) is True
    assert matches_query(res, "Observation", (("category", "s|a,s|b"),)) is False


# --------------------------------------------------------------------------- the table


def test_token_paths_are_token_params() -> None:
    for rtype, params in TOKEN_PATHS.items():
        for param, paths in params.items():
            assert SEARCH_PARAMS[rtype][param] == "token", (rtype, param)
            assert paths, (rtype, param)
            assert all(p and all(seg.isalpha() for seg in p.split(".")) for p in paths)


def test_token_paths_examples() -> None:
    assert TOKEN_PATHS["Observation"]["category"] == ["category"]
    assert TOKEN_PATHS["Observation"]["combo-code"] == ["code", "component.code"]
    assert TOKEN_PATHS["Observation"]["value-concept"] == ["valueCodeableConcept"]
    assert TOKEN_PATHS["MedicationRequest"]["code"] == ["medicationCodeableConcept"]
    assert TOKEN_PATHS["Condition"]["category"] == ["category"]
    assert TOKEN_PATHS["Binary"]["_tag"] == ["meta.tag"]
    assert "telecom" not in TOKEN_PATHS["Patient"]
    assert "email" not in TOKEN_PATHS["Patient"]
    assert "deceased" not in TOKEN_PATHS["Patient"]
