"""SMART App Launch 2.x scope parsing: strict grammar, v1 mapping, granular queries, ScopeSet."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.fhir.tables import RESOURCE_TYPES, SEARCH_PARAMS
from gateway.smart.scopes import (
    GRANULAR_PARAMS,
    LEVELS,
    PERMISSIONS,
    Scope,
    ScopeSet,
    parse_scope,
    parse_scopes,
)

LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
VITAL = "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"
LOINC_HR = "http://loinc.org|8867-4"
ALL = frozenset(PERMISSIONS)

# --------------------------------------------------------------------------- valid scopes

# (scope, level, type, permissions, query, v1)
VALID = [
    pytest.param("patient/Observation.rs", "patient", "Observation", "rs", (), False, id="v2-rs"),
    pytest.param("patient/Observation.r", "patient", "Observation", "r", (), False, id="v2-r"),
    pytest.param("patient/Observation.s", "patient", "Observation", "s", (), False, id="v2-s"),
    pytest.param("user/Observation.cud", "user", "Observation", "cud", (), False, id="v2-cud"),
    pytest.param("user/*.cruds", "user", "*", "cruds", (), False, id="user-star-cruds"),
    pytest.param("patient/*.rs", "patient", "*", "rs", (), False, id="patient-star-rs"),
    pytest.param("system/Patient.rs", "system", "Patient", "rs", (), False, id="system-level"),
    pytest.param("user/Patient.cd", "user", "Patient", "cd", (), False, id="v2-gapped-subset"),
    pytest.param("user/Patient.crud", "user", "Patient", "crud", (), False, id="v2-crud"),
    pytest.param("user/Patient.us", "user", "Patient", "us", (), False, id="v2-us"),
    pytest.param("patient/Encounter.read", "patient", "Encounter", "rs", (), True, id="v1-read"),
    pytest.param("user/Observation.write", "user", "Observation", "cud", (), True, id="v1-write"),
    pytest.param("user/Observation.*", "user", "Observation", "cruds", (), True, id="v1-star"),
    pytest.param("patient/*.*", "patient", "*", "cruds", (), True, id="v1-star-star"),
    pytest.param("patient/*.read", "patient", "*", "rs", (), True, id="v1-star-read"),
    pytest.param("system/*.write", "system", "*", "cud", (), True, id="v1-system-write"),
    pytest.param(
        "patient/Observation.rs?category=" + LAB,
        "patient", "Observation", "rs", (("category", LAB),), False,
        id="granular-spec-example",
    ),
    pytest.param(
        f"patient/Observation.rs?category={LAB}&code={LOINC_HR}",
        "patient", "Observation", "rs", (("category", LAB), ("code", LOINC_HR)), False,
        id="granular-two-params-and",
    ),
    pytest.param(
        f"patient/Observation.rs?category={LAB},{VITAL}",
        "patient", "Observation", "rs", (("category", f"{LAB},{VITAL}"),), False,
        id="granular-comma-or",
    ),
    pytest.param(
        f"patient/Observation.rs?category={LAB}&category={VITAL}",
        "patient", "Observation", "rs", (("category", LAB), ("category", VITAL)), False,
        id="granular-repeated-param",
    ),
    pytest.param(
        "patient/Observation.rs?category=http%3A%2F%2Fexample.org%7Clab%20work",
        "patient", "Observation", "rs", (("category", "http://example.org|lab work"),), False,
        id="granular-percent-decoded",
    ),
    pytest.param(
        "patient/Observation.rs?code=http://x|a+b",
        "patient", "Observation", "rs", (("code", "http://x|a+b"),), False,
        id="granular-plus-is-literal",
    ),
    pytest.param(
        "patient/Observation.rs?%63ategory=http://x|a",
        "patient", "Observation", "rs", (("category", "http://x|a"),), False,
        id="granular-encoded-name",
    ),
    pytest.param(
        "patient/Observation.rs?code=urn:x|caf%C3%A9",
        "patient", "Observation", "rs", (("code", "urn:x|café"),), False,
        id="granular-utf8-value",
    ),
    pytest.param(
        "user/Condition.rs?clinical-status=http://terminology.hl7.org/CodeSystem/condition-clinical|active",
        "user", "Condition", "rs",
        (("clinical-status", "http://terminology.hl7.org/CodeSystem/condition-clinical|active"),),
        False,
        id="granular-hyphenated-param",
    ),
    pytest.param(
        "system/Patient.cruds?gender=http://hl7.org/fhir/administrative-gender|female",
        "system", "Patient", "cruds",
        (("gender", "http://hl7.org/fhir/administrative-gender|female"),), False,
        id="granular-system-cruds",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "level", "rtype", "perms", "query", "v1"), VALID)
def test_valid_scope(
    raw: str,
    level: str,
    rtype: str,
    perms: str,
    query: tuple[tuple[str, str], ...],
    v1: bool,
) -> None:
    scope = parse_scope(raw)
    assert scope == Scope(raw, level, rtype, frozenset(perms), query, v1)  # type: ignore[arg-type]
    # the same token inside a scope string is a data scope, not "other"
    parsed = parse_scopes(f"openid {raw} launch")
    assert parsed.scopes == (scope,)
    assert parsed.other == {"openid", "launch"}
    assert parsed.rejected == frozenset()


def test_v1_maps_to_v2_permissions() -> None:
    for v1, v2 in (("read", "rs"), ("write", "cud"), ("*", "cruds")):
        a, b = parse_scope(f"user/Encounter.{v1}"), parse_scope(f"user/Encounter.{v2}")
        assert a is not None and b is not None
        assert a.permissions == b.permissions
        assert (a.v1, b.v1) == (True, False)


def test_codings_view_of_a_granular_query() -> None:
    scope = parse_scope(f"patient/Observation.rs?category={LAB},{VITAL}&code={LOINC_HR}")
    assert scope is not None
    assert scope.codings == (
        (
            "category",
            frozenset(
                {
                    ("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory"),
                    ("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs"),
                }
            ),
        ),
        ("code", frozenset({("http://loinc.org", "8867-4")})),
    )


# --------------------------------------------------------------------------- invalid scopes

INVALID = [
    # level
    pytest.param("Patient/Observation.rs", id="level-capitalised"),
    pytest.param("PATIENT/*.read", id="level-upper"),
    pytest.param("patients/Observation.rs", id="level-plural"),
    pytest.param("admin/Observation.rs", id="level-unknown"),
    pytest.param("/Observation.rs", id="level-missing"),
    pytest.param("patient//Observation.rs", id="double-slash"),
    # resource type
    pytest.param("patient/observation.rs", id="type-lowercase"),
    pytest.param("patient/OBSERVATION.rs", id="type-upper"),
    pytest.param("patient/Foo.rs", id="type-unknown"),
    pytest.param("patient/.rs", id="type-empty"),
    pytest.param("patient/**.rs", id="type-double-star"),
    pytest.param("patient/Obs*.rs", id="type-partial-wildcard"),
    pytest.param("patient/Resource.rs", id="type-abstract-resource"),
    pytest.param("patient/DomainResource.rs", id="type-abstract-domainresource"),
    pytest.param("patient/Observation/x.rs", id="type-with-path"),
    # permissions
    pytest.param("patient/Observation.RS", id="perms-upper"),
    pytest.param("patient/Observation.R", id="perm-upper-single"),
    pytest.param("patient/Observation.sr", id="perms-out-of-order"),
    pytest.param("patient/Observation.dc", id="perms-out-of-order-2"),
    pytest.param("patient/Observation.rr", id="perms-repeated"),
    pytest.param("patient/Observation.x", id="perms-unknown-letter"),
    pytest.param("patient/Observation.rsx", id="perms-trailing-unknown"),
    pytest.param("patient/Observation.", id="perms-empty"),
    pytest.param("patient/Observation", id="perms-missing"),
    pytest.param("patient/Observation.rs.rs", id="perms-twice"),
    pytest.param("patient/Observation.READ", id="v1-upper"),
    pytest.param("patient/Observation.Read", id="v1-capitalised"),
    pytest.param("patient/Observation.readwrite", id="v1-concatenated"),
    pytest.param("patient/Observation.**", id="v1-double-star"),
    pytest.param("patient/Observation.read,write", id="v1-list"),
    # granular queries
    pytest.param("patient/Observation.rs?", id="query-empty"),
    pytest.param("patient/Observation.rs?category=laboratory", id="query-no-system"),
    pytest.param("patient/Observation.rs?category=|laboratory", id="query-empty-system"),
    pytest.param("patient/Observation.rs?category=http://x|", id="query-empty-code"),
    pytest.param("patient/Observation.rs?category=", id="query-empty-value"),
    pytest.param("patient/Observation.rs?category", id="query-no-equals"),
    pytest.param("patient/Observation.rs?=a|b", id="query-empty-name"),
    pytest.param("patient/Observation.rs?category=a|b|c", id="query-two-bars"),
    pytest.param("patient/Observation.rs?category=a|b,", id="query-trailing-comma"),
    pytest.param("patient/Observation.rs?category=a|b,,c|d", id="query-empty-or-item"),
    pytest.param("patient/Observation.rs?category=a|b&", id="query-trailing-amp"),
    pytest.param("patient/Observation.rs?&category=a|b", id="query-leading-amp"),
    pytest.param("patient/Observation.rs?category:not=a|b", id="query-modifier"),
    pytest.param("patient/Observation.rs?category%3Anot=a|b", id="query-encoded-modifier"),
    pytest.param("patient/Observation.rs?code:text=a|b", id="query-modifier-text"),
    pytest.param("patient/Observation.rs?subject.name=x", id="query-chain"),
    pytest.param("patient/Observation.rs?subject:Patient.name=a|b", id="query-typed-chain"),
    pytest.param("patient/Observation.rs?_filter=x", id="query-filter"),
    pytest.param("patient/Observation.rs?_tag=a|b", id="query-underscore-token"),
    pytest.param("patient/Observation.rs?_security=a|b", id="query-underscore-security"),
    pytest.param("patient/Observation.rs?_has:Group:member:_id=a|b", id="query-has"),
    pytest.param("patient/Observation.rs?foo=a|b", id="query-unknown-param"),
    pytest.param("patient/Observation.rs?Category=a|b", id="query-param-wrong-case"),
    pytest.param("patient/Observation.rs?subject=a|b", id="query-reference-param"),
    pytest.param("patient/Observation.rs?date=a|b", id="query-date-param"),
    pytest.param("patient/Observation.rs?value-string=a|b", id="query-string-param"),
    pytest.param("patient/Observation.rs?code-value-concept=a|b", id="query-composite-param"),
    pytest.param("patient/Patient.rs?category=a|b", id="query-param-of-other-type"),
    pytest.param("patient/*.rs?category=a|b", id="query-on-wildcard-type"),
    pytest.param("patient/Observation.read?category=a|b", id="query-on-v1-read"),
    pytest.param("patient/Observation.*?category=a|b", id="query-on-v1-star"),
    pytest.param("patient/Observation.rs?category=a|b?code=c|d", id="query-second-question"),
    pytest.param("patient/Observation.rs?category=a%|b", id="query-bad-percent"),
    pytest.param("patient/Observation.rs?category=a|b%2", id="query-truncated-percent"),
    pytest.param("patient/Observation.rs?category=a|%ZZ", id="query-non-hex-percent"),
    pytest.param("patient/Observation.rs?category=a|%FF", id="query-invalid-utf8"),
    pytest.param("patient/Observation.rs?category=a|b%00", id="query-nul"),
    pytest.param("patient/Observation.rs?category=a|b%0A", id="query-newline"),
    pytest.param("patient/Observation.rs?category=a|%20b", id="query-padded-code"),
    pytest.param("patient/Observation.rs?category=a%20|b", id="query-padded-system"),
    pytest.param("patient/Observation.rs?category=a|b%5C,c", id="query-escaped-comma"),
    pytest.param("patient/Observation.rs?category=a%7Cb%7Cc", id="query-encoded-two-bars"),
    # not scope-tokens at all (RFC 6749 §3.3 character set)
    pytest.param('patient/Observation.rs?code=a|"b"', id="quote-in-token"),
    pytest.param("patient/Observation.rs?code=a|b\\,c", id="backslash-in-token"),
    pytest.param("patient/Observatión.rs", id="non-ascii-type"),
    pytest.param("patient/Observation.rs?code=a|é", id="raw-non-ascii-value"),
    pytest.param("patient/\u0000Observation.rs", id="nul"),
    pytest.param("", id="empty"),
    # non-data scopes are not Scopes
    pytest.param("openid", id="openid"),
    pytest.param("fhirUser", id="fhirUser"),
    pytest.param("launch", id="launch"),
    pytest.param("launch/patient", id="launch-patient"),
    pytest.param("launch/encounter", id="launch-encounter"),
    pytest.param("offline_access", id="offline-access"),
    pytest.param("online_access", id="online-access"),
]


@pytest.mark.parametrize("raw", INVALID)
def test_invalid_scope_grants_nothing(raw: str) -> None:
    assert parse_scope(raw) is None
    assert parse_scopes([raw]).scopes == ()


@pytest.mark.parametrize(
    "raw", [" patient/Observation.rs", "patient/Observation.rs\n", "patient/Observation.rs\t"]
)
def test_whitespace_is_not_part_of_a_single_scope(raw: str) -> None:
    assert parse_scope(raw) is None
    assert parse_scopes(raw).grants("patient", "Observation", "r")  # a separator in a string


def test_space_inside_a_query_splits_the_scope_string() -> None:
    assert parse_scope("patient/Observation.rs?code=a|b c") is None
    parsed = parse_scopes("patient/Observation.rs?code=a|b c")
    assert [s.query for s in parsed.scopes] == [(("code", "a|b"),)]
    assert parsed.other == {"c"}


@pytest.mark.parametrize(
    "raw",
    [
        "Patient/Observation.rs",
        "PATIENT/*.read",
        "patient/Foo.rs",
        "User/Patient.cruds",
        "patient/Observation.rs?category=laboratory",
        "patient/Observation.rs?" + "é",
    ],
)
def test_refused_data_looking_tokens_are_rejected_not_other(raw: str) -> None:
    parsed = parse_scopes(raw)
    assert parsed.scopes == ()
    assert parsed.other == frozenset()
    assert parsed.rejected == {raw}


def test_non_data_scopes_go_to_other() -> None:
    raw = (
        "openid fhirUser profile launch launch/patient launch/encounter "
        "offline_access online_access https://example.org/custom acme:admin"
    )
    parsed = parse_scopes(raw)
    assert parsed.scopes == ()
    assert parsed.other == frozenset(raw.split())
    assert parsed.levels == frozenset()
    assert not parsed.grants(None, "Patient", "r")


# --------------------------------------------------------------------------- scope strings


def test_whitespace_separators_and_duplicates() -> None:
    parsed = parse_scopes(
        "  patient/Patient.rs\tpatient/Observation.rs\n\npatient/Patient.rs \r\n openid openid "
    )
    assert [s.raw for s in parsed.scopes] == ["patient/Patient.rs", "patient/Observation.rs"]
    assert parsed.other == {"openid"}


def test_iterable_input_and_items_with_spaces() -> None:
    parsed = parse_scopes(["patient/Patient.rs", "launch/patient patient/Encounter.r", ""])
    assert [s.raw for s in parsed.scopes] == ["patient/Patient.rs", "patient/Encounter.r"]
    assert parsed.other == {"launch/patient"}
    assert parse_scopes(("user/*.cruds",)).grants("user", "Observation", "d")


def test_unicode_whitespace_is_not_a_separator() -> None:
    parsed = parse_scopes("patient/Patient.rs\u00a0patient/Observation.rs")
    assert parsed.scopes == ()
    assert parsed.rejected == {"patient/Patient.rs\u00a0patient/Observation.rs"}


@pytest.mark.parametrize(
    "raw",
    [None, 42, b"patient/Patient.rs", [b"patient/Patient.rs", 3, None], "", "   \t\n"],
    ids=["none", "int", "bytes", "list-of-non-str", "empty", "blank"],
)
def test_non_text_input_grants_nothing(raw: object) -> None:
    parsed = parse_scopes(raw)  # type: ignore[arg-type]
    assert parsed.scopes == ()
    assert parsed.other == frozenset()


def test_custom_resource_type_table() -> None:
    types = frozenset({"Patient"})
    assert parse_scope("patient/Observation.rs", resource_types=types) is None
    assert parse_scope("patient/Patient.rs", resource_types=types) is not None
    assert parse_scope("patient/*.rs", resource_types=types) is not None
    assert parse_scopes("patient/Observation.rs", resource_types=types).scopes == ()


def test_huge_input_is_refused_quickly() -> None:
    huge = "patient/Observation.rs?category=" + ",".join(["a|b"] * 50_000) + "%"
    assert parse_scope(huge) is None
    assert parse_scopes("x" * 1_000_000 + " " + "patient/Patient.rs").grants(
        "patient", "Patient", "r"
    )


# --------------------------------------------------------------------------- ScopeSet


def test_for_matches_exact_type_and_wildcard() -> None:
    s = parse_scopes("patient/Observation.rs patient/*.r user/Patient.cud")
    assert [x.raw for x in s.for_("patient", "Observation", "r")] == [
        "patient/Observation.rs",
        "patient/*.r",
    ]
    assert [x.raw for x in s.for_("patient", "Observation", "s")] == ["patient/Observation.rs"]
    assert [x.raw for x in s.for_("patient", "Condition", "r")] == ["patient/*.r"]
    assert s.for_("patient", "Condition", "s") == ()
    assert s.for_("patient", "Observation", "c") == ()


def test_level_filtering() -> None:
    s = parse_scopes("patient/Observation.rs user/Patient.cud system/Group.r")
    assert s.levels == {"patient", "user", "system"}
    assert s.grants("patient", "Observation", "r")
    assert not s.grants("user", "Observation", "r")
    assert not s.grants("system", "Observation", "r")
    assert s.grants(None, "Observation", "r")
    assert s.grants("user", "Patient", "u")
    assert not s.grants("patient", "Patient", "u")
    assert [x.raw for x in s.for_(None, "Group", "r")] == ["system/Group.r"]


def test_wildcard_scope_does_not_match_other_levels() -> None:
    s = parse_scopes("patient/*.cruds")
    assert s.grants("patient", "Medication", "c")
    assert not s.grants("user", "Medication", "r")


def test_plain_and_granular() -> None:
    s = parse_scopes(f"patient/Observation.rs?category={LAB} patient/Condition.rs")
    assert s.grants("patient", "Observation", "r")
    assert not s.plain("patient", "Observation", "r")
    assert [x.query for x in s.granular("patient", "Observation", "r")] == [(("category", LAB),)]
    assert s.plain("patient", "Condition", "s")
    assert s.granular("patient", "Condition", "s") == ()
    assert not s.grants("patient", "Observation", "c")
    assert s.granular("patient", "Observation", "c") == ()


def test_plain_wins_over_granular() -> None:
    s = parse_scopes(f"patient/Observation.rs?category={LAB} patient/Observation.r")
    assert s.plain("patient", "Observation", "r")  # plain read beats the lab-only read
    assert not s.plain("patient", "Observation", "s")  # search is still lab-only
    assert len(s.granular("patient", "Observation", "s")) == 1


def test_plain_wildcard_wins_over_granular_type() -> None:
    s = parse_scopes(f"patient/Observation.rs?category={LAB} patient/*.rs")
    assert s.plain("patient", "Observation", "s")
    assert not s.plain("user", "Observation", "s")


def test_granular_scopes_or_together() -> None:
    s = parse_scopes(
        f"patient/Observation.rs?category={LAB} patient/Observation.rs?code={LOINC_HR}"
    )
    assert not s.plain("patient", "Observation", "r")
    assert [x.query[0][0] for x in s.granular("patient", "Observation", "r")] == [
        "category",
        "code",
    ]


def test_granular_levels_are_filtered() -> None:
    s = parse_scopes(f"user/Observation.rs?category={LAB} patient/Observation.rs")
    assert s.plain("patient", "Observation", "r")
    assert not s.plain("user", "Observation", "r")
    assert s.plain(None, "Observation", "r")


@pytest.mark.parametrize(
    ("level", "permission"),
    [("patient", "read"), ("patient", ""), ("patient", "R"), ("patient", "rs"), ("Patient", "r")],
)
def test_for_rejects_programming_errors(level: str, permission: str) -> None:
    with pytest.raises(ValueError, match="bad permission or level"):
        parse_scopes("user/*.cruds").for_(level, "Patient", permission)  # type: ignore[arg-type]


def test_empty_scope_set() -> None:
    s = ScopeSet((), frozenset())
    assert s.levels == frozenset()
    assert not s.grants(None, "Patient", "r")
    assert not s.plain(None, "Patient", "r")
    assert s.granular(None, "Patient", "r") == ()


def test_scopes_are_hashable_and_immutable() -> None:
    s = parse_scopes(f"patient/Observation.rs?category={LAB} openid")
    assert hash(s) == hash(parse_scopes(f"openid patient/Observation.rs?category={LAB}"))
    with pytest.raises(AttributeError):
        s.scopes[0].level = "user"  # type: ignore[misc]


def test_granular_params_table() -> None:
    assert set(GRANULAR_PARAMS) == set(RESOURCE_TYPES)
    assert {"category", "code", "status"} <= GRANULAR_PARAMS["Observation"]
    for rtype, names in GRANULAR_PARAMS.items():
        for name in names:
            assert SEARCH_PARAMS[rtype][name] == "token"
            assert not name.startswith("_")
            assert re.fullmatch(r"[a-z][a-z0-9-]*", name), name


# --------------------------------------------------------------------------- properties

# An independent reference grammar: anything that parses must match it.
_REF = re.compile(
    r"(?P<level>patient|user|system)/(?P<type>[A-Za-z]+|\*)\."
    r"(?P<perms>read|write|\*|c?r?u?d?s?)(?:\?(?P<query>[\x21\x23-\x3e\x40-\x5b\x5d-\x7e]+))?"
)
_TYPES = sorted(RESOURCE_TYPES)
_LEVEL_LIST = sorted(LEVELS)


def _check_scope(scope: Scope) -> None:
    assert scope.level in LEVELS
    assert scope.resource_type == "*" or scope.resource_type in RESOURCE_TYPES
    assert scope.permissions and scope.permissions <= ALL
    m = _REF.fullmatch(scope.raw)
    assert m is not None, scope.raw
    assert (m["level"], m["type"]) == (scope.level, scope.resource_type)
    if scope.query:
        assert not scope.v1 and scope.resource_type != "*"
        for name, value in scope.query:
            assert name in GRANULAR_PARAMS[scope.resource_type]
            for coding in value.split(","):
                system, bar, code = coding.partition("|")
                assert bar and system and code and "|" not in code


def _plain_oracle(text: str) -> bool:
    """True when ``text`` is a well-formed scope without a query (the reference grammar)."""
    m = _REF.fullmatch(text)
    return bool(m and m["query"] is None and m["perms"] and m["type"] in RESOURCE_TYPES | {"*"})


@given(st.text())
@example("patient/Observation.rs")
@example("patient/*.*")
def test_parse_scope_is_none_unless_grammar(text: str) -> None:
    scope = parse_scope(text)
    if scope is not None:
        assert scope.raw == text
        _check_scope(scope)
    if "?" not in text:
        assert (scope is not None) == _plain_oracle(text)


_NEAR = (
    r"(patient|user|system|Patient|USER|launch)/(Observation|observation|Patient|\*|Foo|)"
    r"\.[crudsxRSwrite*]{0,6}(\?[a-z_:.=|,&%0-9A-F-]{0,24})?"
)


@given(st.from_regex(_NEAR, fullmatch=True))
@settings(max_examples=500)
def test_near_grammar_strings(text: str) -> None:
    scope = parse_scope(text)
    if scope is not None:
        _check_scope(scope)
    if "?" not in text:
        assert (scope is not None) == _plain_oracle(text)


@given(st.text() | st.lists(st.text()).map(" ".join))
@settings(max_examples=300)
def test_parse_scopes_never_raises(text: str) -> None:
    parsed = parse_scopes(text)
    for scope in parsed.scopes:
        _check_scope(scope)
    assert not (parsed.other & parsed.rejected)
    assert all(s.raw not in parsed.other | parsed.rejected for s in parsed.scopes)


@given(st.binary())
def test_parse_scopes_never_raises_on_decoded_garbage(data: bytes) -> None:
    for scope in parse_scopes(data.decode("latin-1")).scopes:
        _check_scope(scope)


_perm_v2 = st.sets(st.sampled_from(PERMISSIONS), min_size=1).map(
    lambda s: "".join(p for p in PERMISSIONS if p in s)
)


@given(
    st.sampled_from(_LEVEL_LIST),
    st.sampled_from([*_TYPES, "*"]),
    _perm_v2 | st.sampled_from(["read", "write", "*"]),
)
def test_every_well_formed_plain_scope_parses(level: str, rtype: str, perm: str) -> None:
    raw = f"{level}/{rtype}.{perm}"
    scope = parse_scope(raw)
    assert scope is not None
    _check_scope(scope)
    assert scope.v1 == (perm in ("read", "write", "*"))
    if not scope.v1:
        assert "".join(p for p in PERMISSIONS if p in scope.permissions) == perm
    assert parse_scopes(raw).grants(level, rtype, next(iter(scope.permissions)))  # type: ignore[arg-type]


_code_text = st.text(
    st.characters(codec="ascii", categories=["L", "N"], include_characters="-.:/_"), min_size=1
)


@st.composite
def _granular(draw: st.DrawFn) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    rtype = draw(st.sampled_from([t for t in _TYPES if GRANULAR_PARAMS[t]]))
    names = draw(st.lists(st.sampled_from(sorted(GRANULAR_PARAMS[rtype])), min_size=1, max_size=3))
    query = tuple(
        (
            n,
            ",".join(
                f"{s}|{c}"
                for s, c in draw(
                    st.lists(st.tuples(_code_text, _code_text), min_size=1, max_size=3)
                )
            ),
        )
        for n in names
    )
    return rtype, draw(_perm_v2), query


@given(_granular(), st.sampled_from(_LEVEL_LIST))
def test_every_well_formed_granular_scope_parses(
    g: tuple[str, str, tuple[tuple[str, str], ...]], level: str
) -> None:
    rtype, perm, query = g
    raw = f"{level}/{rtype}.{perm}?" + "&".join(f"{n}={v}" for n, v in query)
    scope = parse_scope(raw)
    assert scope is not None
    assert scope.query == query
    _check_scope(scope)
    s = parse_scopes([raw])
    p = next(iter(scope.permissions))
    assert s.grants(level, rtype, p) and not s.plain(level, rtype, p)  # type: ignore[arg-type]
    assert s.granular(level, rtype, p) == (scope,)  # type: ignore[arg-type]
