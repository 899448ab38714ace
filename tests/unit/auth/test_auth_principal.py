"""Claims → Principal: SMART context claims are validated, never half-accepted."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.auth.bearer import TokenRejected
from gateway.auth.principal import (
    FHIR_ID,
    Principal,
    build_principal,
    fingerprint,
    parse_fhir_user,
)
from gateway.config import ClaimNames

NAMES = ClaimNames()
EXP = int(time.time()) + 300


def build(names: ClaimNames = NAMES, **claims: Any) -> Principal:
    base: dict[str, Any] = {
        "iss": "https://as.example",
        "sub": "u1",
        "exp": EXP,
        "scope": "patient/*.rs",
    }
    base.update(claims)
    base = {k: v for k, v in base.items() if v is not None}
    return build_principal(base, names=names, token_fingerprint="f" * 64, token_kind="jwt")


def test_defaults() -> None:
    p = build(client_id="app", patient="p-1.a", encounter="e1", fhirUser="Patient/p-1.a")
    assert p.subject == "u1"
    assert p.client_id == "app"
    assert p.issuer == "https://as.example"
    assert p.scopes == ("patient/*.rs",)
    assert (p.patient, p.encounter, p.fhir_user) == ("p-1.a", "e1", "Patient/p-1.a")
    assert p.fhir_user_reference() == ("Patient", "p-1.a")
    assert p.expires_at == float(EXP)
    assert p.token_kind == "jwt"


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"scope": "a b  c a"}, ("a", "b", "c")),
        ({"scope": ""}, ()),
        ({"scope": None, "scp": ["x", "y"]}, ("x", "y")),
        ({"scope": None, "scp": "x y"}, ("x", "y")),
        (
            {"scope": ["launch/patient", "openid fhirUser"]},
            ("launch/patient", "openid", "fhirUser"),
        ),
        (
            {"scope": "patient/Observation.rs?category=http://loinc.org|lab"},
            ("patient/Observation.rs?category=http://loinc.org|lab",),
        ),
    ],
)
def test_scopes(claims: dict[str, Any], expected: tuple[str, ...]) -> None:
    assert build(**claims).scopes == expected


@pytest.mark.parametrize(
    "claims",
    [
        {"scope": None},  # no scope claim at all (an ID token, RFC 9068 §2.2.3)
        {"scope": 42},
        {"scope": ["a", 1]},
        {"scope": 'a "b"'},
        {"scope": "a\\b"},
        {"scope": "a\tb"},
        {"scope": "é"},
        {"scope": " ".join(f"s{i}" for i in range(300))},
        {"exp": None},
        {"exp": "123"},
        {"exp": True},
        {"exp": float("inf")},
        {"exp": float("nan")},
        {"sub": 5},
        {"sub": ""},
        {"iss": ["a"]},
        {"client_id": {"a": 1}},
        {"client_id": None, "azp": 7},
    ],
)
def test_malformed_claims_refuse_the_token(claims: dict[str, Any]) -> None:
    with pytest.raises(TokenRejected):
        build(**claims)


@pytest.mark.parametrize(
    "patient",
    ["../x", "a" * 65, "a b", 123, ["p"], "", "p/1", "p%2F1", "p\n", "ü", {"id": "p"}, True],
)
def test_malformed_patient_refuses_the_token(patient: Any) -> None:
    with pytest.raises(TokenRejected):
        build(patient=patient)
    with pytest.raises(TokenRejected):
        build(encounter=patient)


@pytest.mark.parametrize("patient", ["a", "A-1.b", "a" * 64, "123", "-.-"])
def test_valid_patient_ids(patient: str) -> None:
    assert build(patient=patient).patient == patient


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Practitioner/123", ("Practitioner", "123")),
        ("Patient/a.b-c", ("Patient", "a.b-c")),
        ("https://ehr.example/fhir/Practitioner/123", ("Practitioner", "123")),
        ("http://localhost:8080/RelatedPerson/r1", ("RelatedPerson", "r1")),
    ],
)
def test_valid_fhir_user(value: str, expected: tuple[str, str]) -> None:
    assert parse_fhir_user(value) == expected
    assert build(fhirUser=value).fhir_user == value


@pytest.mark.parametrize(
    "value",
    [
        "Practitioner",
        "practitioner/1",
        "Practitioner/",
        "/Practitioner/1",
        "Practitioner/1/_history/2",
        "Practitioner/../1",
        "Practitioner/a b",
        "Practitioner/" + "a" * 65,
        "Prac-titioner/1",
        "ftp://ehr.example/Practitioner/1",
        "https://ehr.example/Practitioner/1?x=1",
        "https://ehr.example/Practitioner/1#f",
        "https://user:pw@ehr.example/Practitioner/1",
        "https:///Practitioner/1",
        "https://ehr.example/1",
        "https://[::1/Practitioner/1",
        "",
    ],
)
def test_malformed_fhir_user_refuses_the_token(value: str) -> None:
    assert parse_fhir_user(value) is None
    with pytest.raises(TokenRejected):
        build(fhirUser=value)


@pytest.mark.parametrize("value", [5, ["Practitioner/1"], {"reference": "Practitioner/1"}])
def test_non_string_fhir_user_refuses_the_token(value: Any) -> None:
    with pytest.raises(TokenRejected):
        build(fhirUser=value)


def test_client_id_falls_back_to_azp_only() -> None:
    assert build(client_id="c1", azp="a1").client_id == "c1"
    assert build(azp="a1").client_id == "a1"
    assert build().client_id is None  # never guessed from `sub`


def test_configured_claim_names() -> None:
    names = ClaimNames(scope="scopes", patient="pid", fhir_user="profile", client_id="cid")
    p = build(names, scope=None, scopes="user/*.rs", pid="p9", profile="Practitioner/1", cid="c")
    assert (p.scopes, p.patient, p.fhir_user, p.client_id) == (
        ("user/*.rs",),
        "p9",
        "Practitioner/1",
        "c",
    )


def test_claims_are_a_read_only_copy() -> None:
    source: dict[str, Any] = {
        "iss": "i",
        "exp": EXP,
        "scope": "s",
        "ext": {"roles": ["a"]},
    }
    p = build_principal(source, names=NAMES, token_fingerprint="f", token_kind="opaque")
    source["ext"]["roles"].append("admin")
    assert p.claims["ext"] == {"roles": ["a"]}
    with pytest.raises(TypeError):
        p.claims["scope"] = "x"  # type: ignore[index]


def test_repr_shows_no_claims_or_context() -> None:
    p = build(patient="secret-patient", fhirUser="Patient/secret-patient", name="Jane Doe")
    text = repr(p)
    assert "secret-patient" not in text
    assert "Jane" not in text
    assert "fingerprint=ffffffffffff..." in text


def test_fingerprint_is_sha256_hex() -> None:
    assert fingerprint("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


@given(st.text(max_size=80))
def test_fhir_user_parser_agrees_with_the_id_rule(value: str) -> None:
    parsed = parse_fhir_user(f"Patient/{value}")
    assert (parsed is not None) == (FHIR_ID.fullmatch(value) is not None)
