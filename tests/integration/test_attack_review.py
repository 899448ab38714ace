"""Security review: patient A (token or Patient user) against patient B, on the real sekmet-fhir.

Each test asserts the SAFE behaviour. Tests whose docstring starts with ``Found in review:``
failed when the review (session 2) wrote them: each pins the fix of a real cross-patient hole.
The other tests are regressions for probes that are not covered elsewhere.

Fixtures and helpers come from ``test_access_real_upstream`` (World ``w``: A, B, B's secrets,
A's ``patient/*.rs`` token, a clinician and an admin token).
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

import pytest

from tests.integration.test_access_real_upstream import (
    TEST_SYSTEM,
    World,
    a_observation,
    assert_clean,
    assert_only_a,
    assert_outcome,
    call,
    count_marker,
    real_upstream,
    w,
    writer_token,
)

__all__ = ["real_upstream", "w"]

pytestmark = pytest.mark.real_upstream

REVIEW_TAG = "urn:fhir-gateway:attack-review"


def patient_user(w: World, scope: str = "user/*.rs") -> str:
    """A Patient logged in as a user: ``fhirUser=Patient/A``, ``user/`` scopes, no claim."""
    return w.issuer.mint(scope=f"openid fhirUser {scope}", patient=None, fhirUser=f"Patient/{w.a}")


async def _delete_marked(w: World, rtype: str, marker: str) -> None:
    """Remove what a probe may have stored (admin token), whatever the gateway answered."""
    query = f"{rtype}?identifier={quote(TEST_SYSTEM + '|' + marker)}"
    answer = await call(w.gw, "GET", query, w.admin)
    for entry in answer.json().get("entry", []) if answer.status == 200 else []:
        res = entry["resource"]
        await call(w.gw, "DELETE", f"{res['resourceType']}/{res['id']}", w.admin)


# --------------------------------------------------------------------------- bypasses


@pytest.mark.parametrize("bundle_type", ["batch", "transaction"])
@pytest.mark.parametrize("token_kind", ["read-only", "patient-user"])
async def test_bundle_post_search_entry_does_not_create_a_resource_for_b(
    w: World, bundle_type: str, token_kind: str
) -> None:
    """Found in review: a Bundle entry ``POST Observation/_search`` carrying a ``resource`` was
    judged as a *search* (permission ``s`` only, narrowed, no body check), but sekmet executes
    every POST entry that is not a ``$operation`` as a *create* of ``entry.resource``: A, with a
    READ-ONLY
    token (``patient/*.rs``, or a Patient user's ``user/*.rs``), stores an Observation whose
    subject is Patient/B (a write into B's record). The gateway hides the created resource in
    its answer (404 entry), but the write has happened.
    """
    marker = f"ps-{uuid.uuid4().hex[:10]}"
    token = w.a_token if token_kind == "read-only" else patient_user(w)
    bundle = {
        "resourceType": "Bundle",
        "type": bundle_type,
        "entry": [
            {
                "resource": a_observation(w, w.b, marker),
                "request": {"method": "POST", "url": "Observation/_search"},
            }
        ],
    }
    try:
        answer = await call(w.gw, "POST", "", token, body=bundle)
        assert_clean(answer, w.secrets)
        stored = await count_marker(w, marker)
        assert stored == 0, (
            f"A's read-only token created {stored} Observation(s) with subject Patient/B "
            f"through a POST _search entry: {answer}"
        )
    finally:
        await _delete_marked(w, "Observation", marker)


async def test_transaction_conditional_reference_cannot_resolve_b(w: World) -> None:
    """Found in review: in a transaction sekmet resolves every inline match URL (``Type?criteria``)
    anywhere in an entry's resource; the gateway only refuses them in the type's *compartment*
    paths (Observation: ``subject``, ``performer``). ``Observation.focus =
    Patient?identifier=<B's MRN>`` is resolved upstream to ``Patient/B`` and stored in A's own
    Observation, which A then reads back: B's id is learned from B's identifier (and a match
    URL that matches nothing fails the transaction with 404: an existence oracle).
    """
    marker = f"cr-{uuid.uuid4().hex[:10]}"
    obs = a_observation(w, w.a, marker)
    obs["focus"] = [{"reference": f"Patient?identifier={w.secrets.identifiers[0]}"}]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": obs,
                "request": {"method": "POST", "url": "Observation"},
            }
        ],
    }
    try:
        answer = await call(w.gw, "POST", "", writer_token(w), body=bundle)
        readback = ""
        if answer.status == 200:
            mine = await call(
                w.gw,
                "GET",
                f"Observation?identifier={quote(TEST_SYSTEM + '|' + marker)}",
                w.a_token,
            )
            readback = mine.raw.decode()
        assert w.b not in readback, f"A read B's id back from its own Observation: {readback[:400]}"
        assert_outcome(answer, 403)
        assert await count_marker(w, marker) == 0
    finally:
        await _delete_marked(w, "Observation", marker)


async def test_transaction_conditional_reference_is_no_count_oracle(w: World) -> None:
    """Found in review: the same inline match URL, used as an oracle on B's clinical data: sekmet
    answers ``Observation?patient=B&code=...`` with "criteria matched N resources" (412), or
    "matched nothing" (404), and the gateway relays the transaction's OperationOutcome. A learns
    whether / how many of B's Observations match any criteria it likes. Safe: refused (403)
    before anything is sent, the same answer for every criteria.
    """
    marker = f"co-{uuid.uuid4().hex[:10]}"
    answers = []
    for criteria in (f"Observation?patient={w.b}", f"Observation?patient={w.b}&code=no-such"):
        obs = a_observation(w, w.a, marker)
        obs["derivedFrom"] = [{"reference": criteria}]
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"resource": obs, "request": {"method": "POST", "url": "Observation"}}],
        }
        try:
            answers.append(await call(w.gw, "POST", "", writer_token(w), body=bundle))
        finally:
            await _delete_marked(w, "Observation", marker)
    many, none = answers
    assert (many.status, none.status) == (403, 403), f"{many}\n{none}"
    assert b"matched" not in many.raw + none.raw


@pytest.mark.parametrize("rtype", ["Goal", "FamilyMemberHistory"])
async def test_count_zero_total_does_not_count_b(w: World, rtype: str) -> None:
    """Found in review: decision 5 (``Bundle.total`` never counts withheld entries). For ~27 Patient
    compartment types sekmet has no ``patient``/``subject`` search parameter (Goal,
    FamilyMemberHistory, CareTeam, Composition, List, QuestionnaireResponse, ...): the
    gateway's narrowing constraint is ignored upstream ("parameter ignored" warning), the
    search runs over every patient, and the gateway only filters the returned entries. With
    ``_count=0`` nothing is returned, nothing is removed, and the upstream ``total`` (all
    patients) goes out unchanged — ``_summary=count`` is refused, ``_count=0`` is its twin.
    Combined with any supported criteria (``_tag``, ``_id``, ``_lastUpdated``...) it is an
    oracle on B's records.
    """
    marker = f"cz-{uuid.uuid4().hex[:10]}"
    bodies: dict[str, dict[str, Any]] = {
        "Goal": {
            "resourceType": "Goal",
            "lifecycleStatus": "active",
            "description": {"text": "stop smoking"},
            "subject": {"reference": f"Patient/{w.b}"},
        },
        "FamilyMemberHistory": {
            "resourceType": "FamilyMemberHistory",
            "status": "completed",
            "patient": {"reference": f"Patient/{w.b}"},
            "relationship": {"text": "mother"},
        },
    }
    body = dict(bodies[rtype])
    body["identifier"] = [{"system": TEST_SYSTEM, "value": marker}]
    body["meta"] = {"tag": [{"system": REVIEW_TAG, "code": marker}]}
    created: list[str] = []
    try:
        for _ in range(2):
            answer = await call(w.gw, "POST", rtype, w.admin, body=body)
            assert answer.status == 201, str(answer)
            created.append(answer.json()["id"])
        tag = quote(f"{REVIEW_TAG}|{marker}")
        for token in (w.a_token, patient_user(w)):
            answer = await call(w.gw, "GET", f"{rtype}?_tag={tag}&_count=0", token)
            assert answer.status == 200, str(answer)
            assert_clean(answer, w.secrets)
            total = answer.json().get("total", 0)
            assert total == 0, f"A learns that {total} of B's {rtype} resources match: {answer}"
            answer = await call(w.gw, "GET", f"{rtype}?_id={created[0]}&_count=0", token)
            assert answer.json().get("total", 0) == 0, f"existence of B's {rtype}: {answer}"
            # page sizes and cursors are the same oracle: one match per page, two pages of B's
            answer = await call(w.gw, "GET", f"{rtype}?_tag={tag}&_count=1", token)
            assert answer.status == 200, str(answer)
            doc = answer.json()
            relations = {link.get("relation") for link in doc.get("link", [])}
            assert not relations & {"next", "previous", "prev", "last"}, str(answer)
            matches = [e for e in doc.get("entry", []) if e["search"]["mode"] != "outcome"]
            assert not matches and doc.get("total", 0) == 0, str(answer)
    finally:
        for rid in created:
            await call(w.gw, "DELETE", f"{rtype}/{rid}", w.admin)


# --------------------------------------------------------------------------- regressions (safe)

#: probes not covered by the other suites; each must be refused, 400 or 404, and clean
REFUSED: list[tuple[str, str, int]] = [
    # search modifiers on compartment parameters, identifier/chain forms, Group membership
    ("GET", "Observation?subject:identifier={B_ident}", 403),
    ("GET", "Observation?subject:not=Patient/{A}", 403),
    ("GET", "Observation?subject:above=Patient/{B}", 403),
    ("GET", "Observation?subject:below=Patient/{B}", 403),
    ("GET", "Observation?patient:missing=false", 403),
    ("GET", "Group?member={B}", 403),
    ("GET", "Group?member=Patient/{B}", 403),
    ("GET", "Observation?subject=Patient/{B}/_history/1", 403),
    ("GET", "Observation?subject=Patient/{B}/", 403),
    ("GET", "Observation?subject=Patient//{B}", 403),
    ("GET", "Observation?subject={A}%2C{B}", 403),
    ("GET", "Patient?_id={A}&_id={B}", 403),
    ("GET", "Patient/{A}/$everything?patient={B}", 200),  # params ignored; checked for B below
    # operations and history levels
    ("GET", "Observation/{B_obs}/$validate", 403),
    ("POST", "Observation/$validate", 403),
    ("GET", "Observation/{B_obs}/$meta", 403),
    ("POST", "Observation/{B_obs}/$meta-add", 403),
    ("GET", "Patient/_history", 403),
    ("GET", "_history?_since=2000-01-01", 403),
    ("GET", "?_type=Patient&_id={B}", 403),
    # case and trailing-slash variants of B's read
    ("GET", "patient/{B}", 400),
    ("GET", "PATIENT/{B}", 400),
    ("GET", "Patient/{B}/", 404),
    ("GET", "Observation/{B_obs}/", 404),
    ("GET", "Observation/{B_obs}?_format=json&_pretty=true", 404),
    ("GET", "Observation/{B_obs}?_summary=data&_elements=subject", 404),
    ("GET", "Observation/{B_obs}?_format=xml", 406),
]


@pytest.mark.parametrize(("method", "template", "status"), REFUSED)
async def test_probe_is_refused(w: World, method: str, template: str, status: int) -> None:
    token = w.a_token if method == "GET" else writer_token(w)
    body = {"resourceType": "Parameters"} if method == "POST" else None
    answer = await call(w.gw, method, w.fill(template), token, body=body)
    assert_clean(answer, w.secrets)
    if status == 200:
        assert answer.status == 200, str(answer)
        assert_only_a(answer.json(), w.a)
    else:
        assert_outcome(answer, status)


@pytest.mark.parametrize(
    "headers",
    [
        {"If-Match": 'W/"1"'},
        {"If-Unmodified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"},
        {"If-None-Match": "*"},
        {"If-Modified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"},
        {"Prefer": "handling=strict"},
    ],
)
async def test_conditional_read_of_b_is_the_plain_404(w: World, headers: dict[str, str]) -> None:
    """Conditional/Prefer headers on a read of B's Observation: the same 404 as a missing id."""
    hidden = await call(w.gw, "GET", f"Observation/{w.b_obs}", w.a_token, headers=headers)
    missing = await call(
        w.gw, "GET", "Observation/no-such-resource-0000", w.a_token, headers=headers
    )
    assert hidden.status == missing.status == 404, f"{hidden}\n{missing}"
    assert hidden.raw == missing.raw
    assert_clean(hidden, w.secrets)


NARROWED = [
    "Observation?_count=0",
    "Observation?_count=5&_count=500",
    "Observation?_count=100000",
    "Observation?_sort=patient,-date&_count=50",
    "Observation?_sort=subject&_count=50",
    "Observation?_id={B_obs}",
    "Observation?identifier=x&_id={B_obs},{B_obs}",
    "Observation?focus={B}",
    "Observation?focus:missing=true",
    "Observation?_revinclude=Provenance:target&_include=Observation:performer",
    "Encounter?_include=Encounter:participant&_revinclude=Observation:encounter",
    "Encounter?_id={B_enc}&_revinclude=Observation:encounter",
    "Condition?_id={B_cond}&_include=Condition:subject",
    "DiagnosticReport?_id={B_dr}&_include=DiagnosticReport:result",
    "AuditEvent",
    "Provenance",
    "Patient?_id:not={A}",
    "Patient?identifier={B_ident}&_revinclude=Observation:subject",
]


@pytest.mark.parametrize("template", NARROWED)
async def test_narrowed_probe_holds_only_a(w: World, template: str) -> None:
    for token in (w.a_token, patient_user(w)):
        answer = await call(w.gw, "GET", w.fill(template), token)
        assert answer.status == 200, str(answer)
        assert_clean(answer, w.secrets)
        bundle = answer.json()
        assert_only_a(bundle, w.a)
        if "_count=0" in template:
            clinician = await call(w.gw, "GET", f"Observation?patient={w.a}&_count=0", w.clinician)
            assert bundle.get("total") == clinician.json().get("total")


async def test_post_search_with_query_and_form_naming_b(w: World) -> None:
    """POST _search: B in the query string, in the form, or a second ``patient`` in the form."""
    form = "application/x-www-form-urlencoded"
    for path, body in [
        (f"Observation/_search?patient={w.b}", f"patient={w.a}"),
        (f"Observation/_search?patient={w.a}", f"patient={w.b}"),
        ("Observation/_search", f"patient={w.a}&patient={w.b}"),
        ("Observation/_search", f"subject:Patient={w.b}"),
        ("Group/_search", f"member={w.b}"),
    ]:
        answer = await call(w.gw, "POST", path, w.a_token, body=body.encode(), content_type=form)
        assert_outcome(answer, 403)
        assert_clean(answer, w.secrets)


async def test_patch_moving_subject_to_b_is_refused(w: World) -> None:
    """JSON Patch on A's own Observation moving ``subject`` (or copying it to ``performer``)."""
    marker = f"pt-{uuid.uuid4().hex[:10]}"
    created = await call(w.gw, "POST", "Observation", w.admin, body=a_observation(w, w.a, marker))
    assert created.status == 201, str(created)
    oid = created.json()["id"]
    try:
        for patch in (
            [{"op": "replace", "path": "/subject/reference", "value": f"Patient/{w.b}"}],
            [{"op": "add", "path": "/performer", "value": [{"reference": f"Patient/{w.b}"}]}],
            [
                {"op": "add", "path": "/focus", "value": [{"reference": f"Patient/{w.b}"}]},
                {"op": "move", "from": "/focus/0", "path": "/subject"},
            ],
            [{"op": "replace", "path": "/subject/reference", "value": f"Patient?_id={w.b}"}],
        ):
            answer = await call(
                w.gw,
                "PATCH",
                f"Observation/{oid}",
                writer_token(w),
                body=patch,
                content_type="application/json-patch+json",
            )
            assert_outcome(answer, 403)
        after = await call(w.gw, "GET", f"Observation/{oid}", w.admin)
        assert after.json()["subject"]["reference"] == f"Patient/{w.a}"
        assert "performer" not in after.json()
    finally:
        await call(w.gw, "DELETE", f"Observation/{oid}", w.admin)


async def test_put_with_if_match_on_b_and_conditional_put_are_refused(w: World) -> None:
    token = writer_token(w)
    stored = (await call(w.gw, "GET", f"Observation/{w.b_obs}", w.clinician)).json()
    version = stored["meta"]["versionId"]
    answer = await call(
        w.gw,
        "PUT",
        f"Observation/{w.b_obs}",
        token,
        body=dict(stored, status="cancelled"),
        headers={"If-Match": f'W/"{version}"'},
    )
    assert_outcome(answer, 404)
    answer = await call(
        w.gw,
        "PUT",
        f"Observation?_id={w.b_obs}",
        token,
        body=dict(stored, status="cancelled"),
    )
    assert_outcome(answer, 403)
    answer = await call(w.gw, "DELETE", f"Observation?_id={w.b_obs}", token)
    assert_outcome(answer, 403)
    after = await call(w.gw, "GET", f"Observation/{w.b_obs}", w.clinician)
    assert after.json()["meta"]["versionId"] == version


async def test_bundle_entries_pointing_at_b(w: World) -> None:
    """Batch entries whose ``fullUrl`` names B, conditional creates, ``$validate`` entries."""
    marker = f"bf-{uuid.uuid4().hex[:10]}"
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "fullUrl": f"Patient/{w.b}",
                "request": {"method": "GET", "url": f"Patient/{w.a}"},
            },
            {
                "fullUrl": f"{w.up.base_url}/Observation/{w.b_obs}",
                "resource": a_observation(w, w.a, marker),
                "request": {
                    "method": "POST",
                    "url": "Observation",
                    "ifNoneExist": f"patient={w.b}",
                },
            },
            {
                "resource": {"resourceType": "Parameters"},
                "request": {"method": "POST", "url": f"Observation/{w.b_obs}/$validate"},
            },
            {"request": {"method": "GET", "url": f"Patient/{w.b}/_history"}},
            {"request": {"method": "GET", "url": f"Observation/{w.b_obs}/_history/1"}},
            {"request": {"method": "HEAD", "url": f"Observation/{w.b_obs}"}},
        ],
    }
    try:
        answer = await call(w.gw, "POST", "", writer_token(w), body=bundle)
        assert answer.status == 200, str(answer)
        assert_clean(answer, w.secrets)
        statuses = [e["response"]["status"][:3] for e in answer.json()["entry"]]
        assert statuses == ["200", "403", "403", "404", "404", "404"], statuses
        assert await count_marker(w, marker) == 0
    finally:
        await _delete_marked(w, "Observation", marker)


async def test_transaction_urn_uuid_reference_to_a_new_patient_is_refused(w: World) -> None:
    marker = f"tu-{uuid.uuid4().hex[:10]}"
    pid = f"urn:uuid:{uuid.uuid4()}"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": pid,
                "resource": {"resourceType": "Patient", "name": [{"family": "Mallory"}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    **a_observation(w, w.a, marker),
                    "performer": [{"reference": pid}],
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    answer = await call(w.gw, "POST", "", writer_token(w), body=bundle)
    assert_outcome(answer, 403)
    assert await count_marker(w, marker) == 0
