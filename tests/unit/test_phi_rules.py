"""PHI rules (issue 5): which searches carry PHI, and how each one travels upstream.

Pure tables against ``PhiRules`` and ``rewrite.plan``; the wire is pinned in
``tests/integration/test_phi_conversion.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import PhiConfig
from gateway.errors import Forbidden
from gateway.fhir.request import classify
from gateway.fhir.tables import PHI_PARAMS
from gateway.fhir.target import Param, parse_target
from gateway.phi.rules import PhiRules, Transport
from gateway.rewrite import UpstreamRequest, plan


def rules(upstream_post: bool = True, **phi: Any) -> PhiRules:
    return PhiRules(PhiConfig(**phi), upstream_post)


def p(*names: str) -> tuple[Param, ...]:
    return tuple((n, "v") for n in names)


# ---------------------------------------------------------------- the default PHI table

PHI_BY_DEFAULT = [
    ("Patient", "name"),
    ("Patient", "family"),
    ("Patient", "given"),
    ("Patient", "phonetic"),
    ("Patient", "birthdate"),
    ("Patient", "death-date"),
    ("Patient", "identifier"),
    ("Patient", "telecom"),
    ("Patient", "phone"),
    ("Patient", "email"),
    ("Patient", "address"),
    ("Patient", "address-city"),
    ("Patient", "address-postalcode"),
    ("Patient", "_id"),  # the gateway's own narrowing constraint for Patient
    ("Practitioner", "name"),
    ("RelatedPerson", "birthdate"),
    ("Observation", "patient"),
    ("Observation", "subject"),
    ("Observation", "identifier"),
    ("Observation", "performer"),
    ("Condition", "patient"),
    ("Encounter", "subject"),
    ("MedicationRequest", "requester"),
    ("AllergyIntolerance", "patient"),
    ("Coverage", "beneficiary"),
]

NOT_PHI_BY_DEFAULT = [
    ("Patient", "gender"),  # named explicitly by the issue: not PHI
    ("Patient", "active"),
    ("Observation", "code"),
    ("Observation", "date"),
    ("Observation", "status"),
    ("Observation", "_count"),
    ("Observation", "_sort"),
    ("Medication", "code"),
    ("Organization", "name"),  # an organisation's name is not a person's
]


@pytest.mark.parametrize(("rtype", "name"), PHI_BY_DEFAULT)
def test_default_table_marks_phi(rtype: str, name: str) -> None:
    r = rules()
    assert r.carries_phi(rtype, p(name)), (rtype, name)
    assert r.transport(rtype, p("_count", name)) is Transport.POST


@pytest.mark.parametrize(("rtype", "name"), NOT_PHI_BY_DEFAULT)
def test_default_table_leaves_non_phi_alone(rtype: str, name: str) -> None:
    r = rules()
    assert not r.carries_phi(rtype, p(name)), (rtype, name)
    assert r.transport(rtype, p(name)) is Transport.GET


def test_gender_is_not_phi_for_any_type() -> None:
    assert all("gender" not in names for names in PHI_PARAMS.values())


def test_every_patient_compartment_type_has_a_patient_parameter_in_the_table() -> None:
    # every type whose patient param is a reference to Patient is PHI on that param
    for rtype in ("Observation", "Condition", "Procedure", "Encounter", "Immunization"):
        assert "patient" in PHI_PARAMS[rtype], rtype


@pytest.mark.parametrize(
    ("rtype", "name"),
    [
        ("Observation", "code:identifier"),  # any :identifier modifier
        ("Observation", "subject:identifier"),
        ("Encounter", "based-on:identifier"),
        ("Observation", "subject.name"),  # a chain touching a PHI name
        ("Observation", "subject:Patient.name"),
        ("Observation", "subject:Patient.birthdate"),
        ("Observation", "encounter.patient"),
        ("Encounter", "subject.identifier"),
        ("Patient", "_has:Observation:patient:code"),  # _has through a patient reference
        ("Patient", "_has:Observation:subject:_id"),
        ("Observation", "patient:missing"),  # a modifier does not hide the base name
        ("Observation", "subject:Patient"),
        ("Patient", "name:exact"),
        ("Patient", "family:contains"),
    ],
)
def test_modifiers_chains_and_has_count_as_phi(rtype: str, name: str) -> None:
    assert rules().carries_phi(rtype, p(name)), name


def test_system_search_uses_the_union_of_every_type() -> None:
    r = rules()
    for name in ("name", "birthdate", "patient", "identifier", "phone", "_id"):
        assert r.carries_phi(None, p(name)), name
    assert not r.carries_phi(None, p("_type", "_count", "_lastUpdated"))


# ---------------------------------------------------------------- modes


def test_mode_all_converts_every_search() -> None:
    r = rules(post_search="all")
    assert r.transport("Observation", p("code")) is Transport.POST
    assert r.transport("Observation", ()) is Transport.POST
    assert r.transport(None, p("_type")) is Transport.POST


def test_mode_off_never_converts_a_get() -> None:
    r = rules(post_search="off")
    assert r.transport("Patient", p("name", "birthdate")) is Transport.GET
    assert r.transport("Observation", p("patient")) is Transport.GET


def test_client_post_stays_post_in_every_mode() -> None:
    for mode in ("phi", "all", "off"):
        r = rules(post_search=mode)
        assert r.transport("Observation", p("code"), client_post=True) is Transport.POST, mode


# ---------------------------------------------------------------- parameter lists


def test_parameters_replace_the_table_for_every_type() -> None:
    r = rules(parameters=["code"])
    assert r.transport("Observation", p("code")) is Transport.POST
    assert r.transport("Medication", p("code")) is Transport.POST
    assert r.transport(None, p("code")) is Transport.POST
    # the table no longer applies ...
    assert r.transport("Patient", p("family")) is Transport.GET
    # ... but the :identifier modifier and PHI chains still count
    assert r.transport("Observation", p("subject:identifier")) is Transport.POST
    assert r.transport("Observation", p("subject.name")) is Transport.POST


def test_extra_parameters_add_to_the_table() -> None:
    r = rules(extra_parameters=["x-mrn", "code"])
    assert r.transport("Observation", p("x-mrn")) is Transport.POST
    assert r.transport("Observation", p("code")) is Transport.POST
    assert r.transport("Observation", p("patient")) is Transport.POST  # table still there
    assert r.transport("Observation", p("status")) is Transport.GET


def test_extra_parameters_add_to_an_override() -> None:
    r = rules(parameters=["code"], extra_parameters=["status"])
    assert r.names_for("Observation") == frozenset({"code", "status"})


def test_empty_override_means_only_modifiers_and_chains() -> None:
    r = rules(parameters=[])
    assert r.transport("Patient", p("name")) is Transport.GET
    assert r.transport("Patient", p("identifier:identifier")) is Transport.POST


# ---------------------------------------------------------------- upstream without POST _search


def test_no_post_upstream_refuses_phi_get() -> None:
    r = rules(upstream_post=False)
    with pytest.raises(Forbidden) as err:
        r.transport("Patient", p("name"))
    assert err.value.status == 403
    assert err.value.reason == "phi.no-post-search"
    assert "PHI" in err.value.diagnostics


def test_no_post_upstream_refuses_phi_client_post_too() -> None:
    with pytest.raises(Forbidden):
        rules(upstream_post=False).transport("Patient", p("name"), client_post=True)


def test_no_post_upstream_non_phi_goes_get() -> None:
    r = rules(upstream_post=False)
    assert r.transport("Observation", p("code")) is Transport.GET
    assert r.transport("Observation", p("code"), client_post=True) is Transport.GET


def test_no_post_upstream_with_fallback_goes_get() -> None:
    r = rules(upstream_post=False, allow_get_fallback=True)
    assert r.transport("Patient", p("name")) is Transport.GET


def test_no_post_upstream_mode_all_non_phi_goes_get() -> None:
    r = rules(upstream_post=False, post_search="all")
    assert r.transport("Observation", p("code")) is Transport.GET


# ---------------------------------------------------------------- plan()


def request(method: str, raw: str) -> Any:
    target = parse_target(raw, "")
    assert target is not None
    return classify(method, target)


@pytest.mark.parametrize(
    ("method", "raw", "expected"),
    [
        (
            "GET",
            "/Observation?patient=A&code=x",
            UpstreamRequest(
                "POST", ("Observation", "_search"), (), (("patient", "A"), ("code", "x"))
            ),
        ),
        ("GET", "/Observation?code=x", UpstreamRequest("GET", ("Observation",), (("code", "x"),))),
        ("GET", "/?name=x", UpstreamRequest("POST", ("_search",), (), (("name", "x"),))),
        (
            "GET",
            "/Patient/x/Observation?subject=Patient/x",
            UpstreamRequest(
                "POST",
                ("Patient", "x", "Observation", "_search"),
                (),
                (("subject", "Patient/x"),),
            ),
        ),
        (
            "POST",
            "/Observation/_search?code=x",
            UpstreamRequest("POST", ("Observation", "_search"), (), (("code", "x"),)),
        ),
        (
            "HEAD",
            "/Patient?family=x",
            UpstreamRequest("POST", ("Patient", "_search"), (), (("family", "x"),)),
        ),
        ("GET", "/Patient/x", UpstreamRequest("GET", ("Patient", "x"), ())),
    ],
)
def test_plan(method: str, raw: str, expected: UpstreamRequest) -> None:
    req = request(method, raw)
    assert plan(req, req.params, rules()) == expected


def test_plan_compartment_search_judges_the_compartment_type() -> None:
    req = request("GET", "/Patient/x/Observation?code=x")
    # in `phi` mode a compartment search without PHI parameters stays GET
    assert plan(req, req.params, rules()).method == "GET"
    assert plan(req, req.params, rules(post_search="all")) == UpstreamRequest(
        "POST", ("Patient", "x", "Observation", "_search"), (), (("code", "x"),)
    )


def test_plan_sends_the_decision_params_not_the_request_params() -> None:
    req = request("GET", "/Observation?code=x")
    narrowed = (("code", "x"), ("patient", "Patient/A"))
    assert plan(req, narrowed, rules()) == UpstreamRequest(
        "POST", ("Observation", "_search"), (), narrowed
    )


@pytest.mark.parametrize("name", ["_filter", "_content", "_text"])
@pytest.mark.parametrize("rtype", ["Patient", "Observation", None])
def test_free_text_parameters_carry_phi_on_every_type(name: str, rtype: str | None) -> None:
    assert rules().carries_phi(rtype, ((name, "family eq Chalmers"),)) is True
    assert rules().transport(rtype, ((name, "x"),)) is Transport.POST
