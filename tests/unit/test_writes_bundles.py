"""Writes judged before they are stored (``check_body``, ``apply_patch``) and batch/transaction
entries judged one by one (``bundle_type``, ``authorize_entries``)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.access.authorize import ALL_LEVELS, UNCONFINED_LEVELS, Access
from gateway.access.bundles import authorize_entries, bundle_type, denied_entry
from gateway.access.writes import apply_patch, check_body, has_conditional_reference
from gateway.errors import BadRequest
from gateway.fhir.request import FhirRequest, classify
from gateway.fhir.target import parse_target
from gateway.smart.scopes import parse_scopes

BASES = ("https://gw.example.org/fhir", "http://upstream.internal:8080/fhir")
CONF = Access(parse_scopes("patient/*.cruds"), "A", ALL_LEVELS)
CONF_RS = Access(parse_scopes("patient/*.rs"), "A", ALL_LEVELS)
USER = Access(parse_scopes("user/*.cruds"), None, UNCONFINED_LEVELS)


def req(method: str, path: str) -> FhirRequest:
    target = parse_target("/" + path, "")
    assert target is not None
    return classify(method, target)


def obs(subject: Any = "Patient/A", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        **extra,
    }
    if subject is not None:
        body["subject"] = {"reference": subject} if isinstance(subject, str) else subject
    return body


CREATE = req("POST", "Observation")
UPDATE = req("PUT", "Observation/o1")


def reason(decision: Any) -> tuple[int, str] | None:
    return None if decision is None else (decision.status, decision.reason)


# --------------------------------------------------------------------------- check_body

CHECK_BODY_CASES = [
    ("create-A", CONF, CREATE, obs(), None, None),
    ("create-A-absolute-known-base", CONF, CREATE, obs(f"{BASES[0]}/Patient/A"), None, None),
    ("create-A-versioned", CONF, CREATE, obs("Patient/A/_history/2"), None, None),
    ("create-subject-B", CONF, CREATE, obs("Patient/B"), None, (403, "compartment.other-patient")),
    (
        "create-performer-B",
        CONF,
        CREATE,
        obs(performer=[{"reference": "Patient/B"}]),
        None,
        (403, "compartment.other-patient"),
    ),
    (
        "create-abs-B",
        CONF,
        CREATE,
        obs(f"{BASES[1]}/Patient/B"),
        None,
        (403, "compartment.other-patient"),
    ),
    (
        "create-contained-subject",
        CONF,
        CREATE,
        obs("#p1", contained=[{"resourceType": "Patient", "id": "p1"}]),
        None,
        (403, "write.unverifiable-reference"),
    ),
    (
        "create-urn-uuid",
        CONF,
        CREATE,
        obs("urn:uuid:1234"),
        None,
        (403, "write.unverifiable-reference"),
    ),
    (
        "create-identifier-only",
        CONF,
        CREATE,
        obs({"identifier": {"system": "urn:mrn", "value": "123"}}),
        None,
        (403, "write.unverifiable-reference"),
    ),
    (
        "create-query-ref",
        CONF,
        CREATE,
        obs("Patient?identifier=x"),
        None,
        (403, "write.unverifiable-reference"),
    ),
    (
        "create-foreign-host",
        CONF,
        CREATE,
        obs("https://evil.example/fhir/Patient/A"),
        None,
        (403, "write.unverifiable-reference"),
    ),
    (
        "create-A-plus-unverifiable-performer",
        CONF,
        CREATE,
        obs(performer=[{"reference": "urn:uuid:9"}]),
        None,
        (403, "write.unverifiable-reference"),
    ),
    ("create-no-subject", CONF, CREATE, obs(None), None, (403, "compartment.not-referenced")),
    (
        "create-display-only",
        CONF,
        CREATE,
        obs({"display": "Patient A"}),
        None,
        (403, "compartment.not-referenced"),
    ),
    (
        "create-malformed-ref",
        CONF,
        CREATE,
        obs({"reference": 5}),
        None,
        (403, "write.unverifiable-reference"),
    ),
    (
        "create-type-mismatch",
        CONF,
        CREATE,
        {**obs(), "resourceType": "Condition"},
        None,
        (400, "write.type-mismatch"),
    ),
    ("create-not-dict", CONF, CREATE, [obs()], None, (400, "write.type-mismatch")),
    ("create-none", CONF, CREATE, None, None, (400, "write.type-mismatch")),
    (
        "update-id-mismatch",
        CONF,
        UPDATE,
        {**obs(), "id": "o2"},
        obs(id="o1"),
        (400, "write.id-mismatch"),
    ),
    ("update-id-missing", CONF, UPDATE, obs(), obs(id="o1"), (400, "write.id-mismatch")),
    ("update-A", CONF, UPDATE, {**obs(), "id": "o1"}, {**obs(), "id": "o1"}, None),
    (
        "update-repoint-B",
        CONF,
        UPDATE,
        {**obs("Patient/B"), "id": "o1"},
        {**obs(), "id": "o1"},
        (403, "compartment.other-patient"),
    ),
    (
        "patient-create",
        CONF,
        req("POST", "Patient"),
        {"resourceType": "Patient", "id": "A"},
        None,
        (403, "write.patient-create"),
    ),
    (
        "patient-update-link",
        CONF,
        req("PUT", "Patient/A"),
        {
            "resourceType": "Patient",
            "id": "A",
            "link": [{"other": {"reference": "Patient/B"}, "type": "seealso"}],
        },
        {"resourceType": "Patient", "id": "A"},
        (403, "write.patient-link"),
    ),
    (
        "patient-update-link-removed",
        CONF,
        req("PUT", "Patient/A"),
        {"resourceType": "Patient", "id": "A"},
        {
            "resourceType": "Patient",
            "id": "A",
            "link": [{"other": {"reference": "Patient/A2"}, "type": "seealso"}],
        },
        (403, "write.patient-link"),
    ),
    (
        "patient-update-name",
        CONF,
        req("PUT", "Patient/A"),
        {"resourceType": "Patient", "id": "A", "name": [{"family": "New"}]},
        {"resourceType": "Patient", "id": "A"},
        None,
    ),
    (
        "patient-update-B",
        CONF,
        req("PUT", "Patient/B"),
        {"resourceType": "Patient", "id": "B"},
        None,
        (403, "compartment.other-patient"),
    ),
    (
        "security-label-removed",
        CONF,
        UPDATE,
        {**obs(), "id": "o1", "meta": {"security": [{"system": "s", "code": "N"}]}},
        {
            **obs(),
            "id": "o1",
            "meta": {"security": [{"system": "s", "code": "R"}, {"system": "s", "code": "N"}]},
        },
        (403, "write.security-label-removed"),
    ),
    (
        "security-meta-dropped",
        CONF,
        UPDATE,
        {**obs(), "id": "o1"},
        {**obs(), "id": "o1", "meta": {"security": [{"system": "s", "code": "R"}]}},
        (403, "write.security-label-removed"),
    ),
    (
        "security-label-added",
        CONF,
        UPDATE,
        {**obs(), "id": "o1", "meta": {"security": [{"system": "s", "code": "R"}]}},
        {**obs(), "id": "o1"},
        None,
    ),
    (
        "non-compartment-type",
        CONF,
        req("POST", "Medication"),
        {"resourceType": "Medication", "code": {"text": "x"}},
        None,
        None,
    ),
    # unconfined: only the type and id checks
    ("user-subject-B", USER, CREATE, obs("Patient/B"), None, None),
    ("user-urn", USER, CREATE, obs("urn:uuid:1"), None, None),
    ("user-patient-create", USER, req("POST", "Patient"), {"resourceType": "Patient"}, None, None),
    (
        "user-type-mismatch",
        USER,
        CREATE,
        {"resourceType": "Patient"},
        None,
        (400, "write.type-mismatch"),
    ),
    ("user-id-mismatch", USER, UPDATE, {**obs(), "id": "zz"}, None, (400, "write.id-mismatch")),
    (
        "user-label-removed",
        USER,
        UPDATE,
        {**obs(), "id": "o1"},
        {**obs(), "id": "o1", "meta": {"security": [{"system": "s", "code": "R"}]}},
        None,
    ),
]


@pytest.mark.parametrize(
    ("access", "request_", "body", "stored", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in CHECK_BODY_CASES],
)
def test_check_body(
    access: Access, request_: FhirRequest, body: Any, stored: Any, expected: Any
) -> None:
    before = copy.deepcopy(body)
    assert reason(check_body(access, request_, body, stored, BASES)) == expected
    assert body == before  # judged, never changed


# --------------------------------------------------------------------------- apply_patch

STORED = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "subject": {"reference": "Patient/A"},
}


def test_apply_patch_applies_without_touching_the_stored_version() -> None:
    stored = copy.deepcopy(STORED)
    out = apply_patch(stored, [{"op": "replace", "path": "/status", "value": "amended"}])
    assert out is not None and out["status"] == "amended"
    assert stored == STORED


def test_patched_body_judged_like_an_update() -> None:
    out = apply_patch(
        STORED, [{"op": "replace", "path": "/subject/reference", "value": "Patient/B"}]
    )
    assert out is not None
    denial = check_body(CONF, req("PATCH", "Observation/o1"), out, STORED, BASES)
    assert reason(denial) == (403, "compartment.other-patient")


@pytest.mark.parametrize(
    "patch",
    [
        [{"op": "replace", "path": "/nope/deeper", "value": 1}],
        [{"op": "remove", "path": "/missing"}],
        [{"op": "add", "path": "no-slash", "value": 1}],
        [{"op": "bogus", "path": "/status"}],
        [{"op": "add"}],
        [{"op": "test", "path": "/status", "value": "other"}],
        [{"op": "move", "from": 1, "path": "/a"}],
        [{"op": "add", "path": 5, "value": 1}],
        [{"op": "replace", "path": "", "value": [1]}],
        [{"op": "replace", "path": "", "value": "x"}],
        [None],
        ["x"],
        [1],
    ],
)
def test_apply_patch_bad_patch_is_none(patch: Any) -> None:
    assert apply_patch(STORED, patch) is None


@pytest.mark.parametrize("patch", [None, {}, {"op": "add"}, "[]", 5])
def test_apply_patch_non_list_is_none(patch: Any) -> None:
    assert apply_patch(STORED, patch) is None


# --------------------------------------------------------------------------- bundle_type


@pytest.mark.parametrize("btype", ["batch", "transaction"])
def test_bundle_type_accepts_batch_and_transaction(btype: str) -> None:
    assert bundle_type({"resourceType": "Bundle", "type": btype, "entry": []}) == btype
    assert bundle_type({"resourceType": "Bundle", "type": btype}) == btype


@pytest.mark.parametrize(
    "doc",
    [
        {"resourceType": "Bundle", "type": "collection"},
        {"resourceType": "Bundle", "type": "searchset"},
        {"resourceType": "Bundle", "type": "document"},
        {"resourceType": "Bundle", "type": "batch-response"},
        {"resourceType": "Bundle"},
        {"resourceType": "Bundle", "type": ["batch"]},
        {"resourceType": "Parameters", "type": "batch"},
        {"type": "batch"},
        [],
        None,
        {"resourceType": "Bundle", "type": "batch", "entry": {"resource": {}}},
        {"resourceType": "Bundle", "type": "batch", "entry": None},
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"resource": {"resourceType": "Bundle", "type": "batch"}}],
        },
    ],
    ids=[
        "collection",
        "searchset",
        "document",
        "batch-response",
        "no-type",
        "list-type",
        "not-bundle",
        "no-resource-type",
        "list",
        "none",
        "entry-dict",
        "entry-null",
        "nested",
    ],
)
def test_bundle_type_refuses(doc: Any) -> None:
    with pytest.raises(BadRequest):
        bundle_type(doc)


# --------------------------------------------------------------------------- authorize_entries


def bundle(*entries: Any, btype: str = "batch") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": btype, "entry": list(entries)}


def get(url: str) -> dict[str, Any]:
    return {"request": {"method": "GET", "url": url}}


def judged(accesses: tuple[Access, ...], *entries: Any) -> list[Any]:
    doc = bundle(*entries)
    bundle_type(doc)
    return authorize_entries(accesses, doc, BASES)


ENTRY_CASES = [
    # BUG: an unhashable method crashes (TypeError -> 500) instead of a 400 entry
    (
        "method-list",
        {"request": {"method": ["GET"], "url": "Observation"}},
        (400, "bundle.entry-invalid"),
    ),
    (
        "method-dict",
        {"request": {"method": {"m": 1}, "url": "Observation"}},
        (400, "bundle.entry-invalid"),
    ),
    ("absolute-url", get("https://x/fhir/Patient/B"), (400, "bundle.entry-absolute-url")),
    (
        "absolute-url-http",
        get("http://upstream.internal:8080/fhir/Observation"),
        (400, "bundle.entry-absolute-url"),
    ),
    ("leading-slash", get("/Patient/B"), (400, "bundle.entry-absolute-url")),
    ("dot-dot", get("../Patient/B"), (400, "request.target")),
    ("dot-dot-inner", get("Observation/../Patient/B"), (400, "request.target")),
    ("encoded-slash", get("Patient%2FB"), (400, "request.target")),
    ("unknown-type", get("Nope/1"), (400, "request.unknown-type")),
    ("no-request", {"resource": {"resourceType": "Observation"}}, (400, "bundle.entry-invalid")),
    (
        "bad-method",
        {"request": {"method": "TRACE", "url": "Observation"}},
        (400, "bundle.entry-invalid"),
    ),
    (
        "lowercase-method",
        {"request": {"method": "get", "url": "Observation"}},
        (400, "bundle.entry-invalid"),
    ),
    ("empty-url", {"request": {"method": "GET", "url": ""}}, (400, "bundle.entry-invalid")),
    (
        "url-not-str",
        {"request": {"method": "GET", "url": ["Observation"]}},
        (400, "bundle.entry-invalid"),
    ),
    ("entry-not-dict", "Observation", (400, "bundle.entry-invalid")),
    ("nested-batch", {"request": {"method": "POST", "url": ""}}, (400, "bundle.entry-invalid")),
    ("discovery", get(".well-known/smart-configuration"), (400, "bundle.entry-invalid")),
    (
        "method-not-allowed",
        {"request": {"method": "POST", "url": "Observation/x"}},
        (405, "request.method"),
    ),
    ("patient-B-search", get("Observation?patient=B"), (403, "compartment.other-patient")),
    ("patient-B-read", get("Patient/B"), (404, "compartment.other-patient")),
    ("everything-B", get("Patient/B/$everything"), (404, "compartment.other-patient")),
    ("has", get("Patient?_has:Observation:patient:code=x"), (403, "param.forbidden")),
    ("system-history", get("_history"), (403, "interaction.history-system")),
    ("export", get("$export"), (403, "operation.not-allowed")),
    ("compartment-B", get("Patient/B/Observation"), (403, "compartment.other-patient")),
    (
        "create-subject-B",
        {"request": {"method": "POST", "url": "Observation"}, "resource": obs("Patient/B")},
        (403, "compartment.other-patient"),
    ),
    (
        "create-urn",
        {"request": {"method": "POST", "url": "Observation"}, "resource": obs("urn:uuid:1")},
        (403, "write.unverifiable-reference"),
    ),
    (
        "create-no-resource",
        {"request": {"method": "POST", "url": "Observation"}},
        (400, "write.type-mismatch"),
    ),
    (
        "create-if-none-exist",
        {
            "request": {"method": "POST", "url": "Observation", "ifNoneExist": "identifier=x"},
            "resource": obs(),
        },
        (403, "write.conditional"),
    ),
    (
        "put",
        {"request": {"method": "PUT", "url": "Observation/o1"}, "resource": {**obs(), "id": "o1"}},
        (403, "bundle.entry-needs-own-request"),
    ),
    (
        "delete",
        {"request": {"method": "DELETE", "url": "Observation/o1"}},
        (403, "bundle.entry-needs-own-request"),
    ),
    (
        "patch",
        {
            "request": {"method": "PATCH", "url": "Observation/o1"},
            "resource": {"resourceType": "Binary"},
        },
        (403, "bundle.entry-needs-own-request"),
    ),
    (
        "cond-delete",
        {"request": {"method": "DELETE", "url": "Observation?identifier=x"}},
        (403, "write.conditional"),
    ),
    (
        "cond-put",
        {"request": {"method": "PUT", "url": "Observation?identifier=x"}, "resource": obs()},
        (403, "write.conditional"),
    ),
    (
        "binary-create",
        {"request": {"method": "POST", "url": "Binary"}, "resource": {"resourceType": "Binary"}},
        (403, "write.binary"),
    ),
]


@pytest.mark.parametrize(
    ("entry", "expected"), [pytest.param(*case[1:], id=case[0]) for case in ENTRY_CASES]
)
def test_confined_entry_denied(entry: Any, expected: tuple[int, str]) -> None:
    [decided] = authorize_entries((CONF,), bundle(entry), BASES)
    assert decided.index == 0
    assert not decided.decision.allowed
    assert (decided.decision.status, decided.decision.reason) == expected
    rendered = denied_entry(decided.decision)
    assert rendered["response"]["status"].startswith(
        str(expected[0] if expected[0] != 405 else 403)
    )


def test_entries_judged_each_in_position() -> None:
    decisions = judged(
        (CONF,),
        get("Observation?patient=B"),
        get("Observation?patient=A"),
        get("Observation?_elements=id&code=x"),
        {"request": {"method": "POST", "url": "Observation"}, "resource": obs()},
        get("Patient/A/$everything"),
        get("Observation/o1"),
        get("metadata"),
    )
    assert [d.index for d in decisions] == list(range(7))
    assert [d.decision.allowed for d in decisions] == [False, True, True, True, True, True, True]
    assert decisions[1].url == "Observation?patient=A&patient=Patient%2FA"
    assert decisions[2].url == "Observation?code=x&patient=Patient%2FA"
    assert decisions[3].url == "Observation"
    assert decisions[4].url == "Patient/A/$everything"
    assert decisions[5].url == "Observation/o1"
    assert decisions[5].decision.verify is not None
    assert decisions[5].decision.verify.patient == "A"


def test_entry_url_is_rebuilt_from_validated_parts() -> None:
    [decided] = judged((CONF,), get("Observation?code=a%7Cb&_include=Observation:subject"))
    assert decided.decision.allowed
    assert decided.url == (
        "Observation?code=a%7Cb&_include=Observation%3Asubject&patient=Patient%2FA"
    )


def test_confined_rs_only_cannot_create_in_a_batch() -> None:
    [decided] = judged(
        (CONF_RS,), {"request": {"method": "POST", "url": "Observation"}, "resource": obs()}
    )
    assert (decided.decision.reason, decided.decision.required_scope) == (
        "scope.missing",
        "patient/Observation.c",
    )


def test_unconfined_entries_only_type_checked() -> None:
    decisions = judged(
        (USER,),
        get("Observation?patient=B"),
        {"request": {"method": "POST", "url": "Observation"}, "resource": obs("Patient/B")},
        {"request": {"method": "PUT", "url": "Observation/o1"}, "resource": {**obs(), "id": "o1"}},
        {"request": {"method": "PUT", "url": "Observation/o1"}, "resource": {**obs(), "id": "o2"}},
        {"request": {"method": "DELETE", "url": "Observation?identifier=x"}},
        {
            "request": {"method": "POST", "url": "Observation", "ifNoneExist": "identifier=x"},
            "resource": obs(),
        },
        get("https://x/fhir/Patient/B"),
    )
    got = [(d.decision.allowed, d.decision.reason) for d in decisions]
    assert got == [
        (True, "allowed"),
        (True, "allowed"),
        (True, "allowed"),
        (False, "write.id-mismatch"),
        (True, "allowed"),
        (True, "allowed"),
        (False, "bundle.entry-absolute-url"),
    ]


def test_clinician_views_per_entry() -> None:
    """Unconfined view first; a create only the patient/ scope grants is judged confined."""
    scopes = parse_scopes("user/*.rs patient/Observation.c")
    views = (Access(scopes, None, UNCONFINED_LEVELS), Access(scopes, "A", ("patient",)))
    decisions = judged(
        views,
        get("Observation?patient=B"),
        {"request": {"method": "POST", "url": "Observation"}, "resource": obs("Patient/B")},
        {"request": {"method": "POST", "url": "Observation"}, "resource": obs()},
    )
    assert [(d.decision.allowed, d.decision.reason) for d in decisions] == [
        (True, "allowed"),
        (False, "compartment.other-patient"),
        (True, "allowed"),
    ]


def test_empty_and_missing_entries() -> None:
    assert authorize_entries((CONF,), bundle(), BASES) == []
    assert authorize_entries((CONF,), {"resourceType": "Bundle", "type": "batch"}, BASES) == []


def test_denied_entry_shapes() -> None:
    from gateway.access.decision import deny

    for status, text, code in (
        (400, "400 Bad Request", "invalid"),
        (403, "403 Forbidden", "forbidden"),
        (404, "404 Not Found", "not-found"),
    ):
        rendered = denied_entry(deny("x", status))
        assert rendered["response"]["status"] == text
        assert rendered["response"]["outcome"]["issue"][0]["code"] == code
        assert "resource" not in rendered


@pytest.mark.parametrize(
    ("body", "stored"),
    [
        (
            {**obs(), "id": "o1", "meta": {"security": [{"system": ["s"], "code": "R"}]}},
            obs(id="o1"),
        ),
        (
            {**obs(), "id": "o1"},
            {**obs(), "id": "o1", "meta": {"security": [{"system": "s", "code": {"c": 1}}]}},
        ),
    ],
    ids=["body-label-list-system", "stored-label-dict-code"],
)
def test_check_body_malformed_security_labels_denied_not_raised(body: Any, stored: Any) -> None:
    """BUG: ``_labels`` builds a set of (system, code) tuples; an unhashable ``system`` or
    ``code`` in a client body (or the stored version) raises TypeError, a 500 from
    ``prechecks`` instead of a refusal."""
    decision = check_body(CONF, UPDATE, body, stored, BASES)  # must not raise
    if "meta" in stored:  # the stored label is gone from the new body: refused
        assert decision is not None and not decision.allowed


@pytest.mark.parametrize(
    ("body", "conditional"),
    [
        ({"focus": [{"reference": "Patient?identifier=mrn|123"}]}, True),
        ({"derivedFrom": [{"reference": "Observation?patient=B"}]}, True),
        ({"contained": [{"resourceType": "Provenance", "target": [{"reference": "X?y=1"}]}]}, True),
        ({"extension": [{"valueReference": {"reference": "Patient?name=x"}}]}, True),
        ({"focus": [{"reference": "Patient/A"}], "note": [{"text": "why? because"}]}, False),
        ({"focus": [{"reference": "urn:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427"}]}, False),
        ({"reference": 5}, False),
    ],
    ids=["focus", "derived-from", "contained", "extension", "plain", "urn-uuid", "not-a-string"],
)
def test_conditional_references_anywhere_are_found(body: dict[str, Any], conditional: bool) -> None:
    assert has_conditional_reference(body) is conditional


def test_confined_write_with_a_conditional_reference_is_refused() -> None:
    body = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "Patient/A"},
        "focus": [{"reference": "Patient?identifier=mrn|B"}],
    }
    denial = check_body(CONF, req("POST", "Observation"), body, None, BASES)
    assert denial is not None and denial.reason == "write.conditional-reference"
    assert check_body(USER, req("POST", "Observation"), body, None, BASES) is None


@pytest.mark.parametrize(
    ("method", "url", "allowed_shape"),
    [
        (
            "POST",
            "Observation/_search",
            False,
        ),  # a search carrying a resource: a create in disguise
        ("GET", "Observation?patient=A", False),
        ("DELETE", "Observation/o1", False),
        ("POST", "Observation", True),
        ("POST", "Observation/$validate", True),  # Parameters: judged with the operation
    ],
    ids=["search", "read", "delete", "create", "operation"],
)
def test_an_entry_resource_is_accepted_only_as_a_request_body(
    method: str, url: str, allowed_shape: bool
) -> None:
    entry = {
        "resource": {"resourceType": "Observation", "subject": {"reference": "Patient/A"}},
        "request": {"method": method, "url": url},
    }
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [entry]}
    (decision,) = authorize_entries((CONF,), bundle, BASES)
    unexpected = decision.decision.reason == "bundle.entry-unexpected-resource"
    assert unexpected is (not allowed_shape)
