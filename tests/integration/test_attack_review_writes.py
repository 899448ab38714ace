"""Security review of writes: patient A (write token or Patient user) against patient B.

Real sekmet-fhir upstream (World ``w`` from ``test_access_real_upstream``). Each test asserts
the SAFE behaviour. Tests whose docstring starts with ``Found in review:`` failed when this
review wrote them (real gaps); the others are regressions for probes not covered elsewhere.
Every resource a probe may have stored is removed with the admin token.
"""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import pytest

from tests.integration.test_access_real_upstream import (
    MISSING_ID,
    TEST_SYSTEM,
    World,
    a_observation,
    assert_clean,
    assert_outcome,
    call,
    count_marker,
    real_upstream,
    w,
    writer_token,
)

__all__ = ["real_upstream", "w"]

pytestmark = pytest.mark.real_upstream


def patient_user(w: World) -> str:
    """A Patient logged in as a user with write scopes: ``fhirUser=Patient/A``, no claim."""
    return w.issuer.mint(
        scope="openid fhirUser user/*.cruds", patient=None, fhirUser=f"Patient/{w.a}"
    )


def tokens(w: World) -> list[str]:
    return [writer_token(w), patient_user(w)]


async def _admin_create(w: World, body: dict[str, Any]) -> str:
    answer = await call(w.gw, "POST", body["resourceType"], w.admin, body=body)
    assert answer.status == 201, str(answer)
    return str(answer.json()["id"])


async def _admin_delete(w: World, rtype: str, rid: str) -> None:
    await call(w.gw, "DELETE", f"{rtype}/{rid}", w.admin)


async def _cleanup_created(w: World, answer: Any) -> None:
    """Delete what an answered create stored, when the gateway let it through."""
    if answer.status in (200, 201) and answer.raw:
        doc = answer.json()
        if isinstance(doc, dict) and doc.get("id") and doc.get("resourceType"):
            await _admin_delete(w, doc["resourceType"], doc["id"])
    location = answer.headers.get("Location", "")
    if "/_history/" in location:
        parts = location.split("/_history/")[0].rsplit("/", 2)
        await _admin_delete(w, parts[-2], parts[-1])


# --------------------------------------------------------------------------- other types naming B


def _non_compartment_bodies(w: World, marker: str) -> dict[str, dict[str, Any]]:
    """Types outside the Patient compartment whose elements still reference a patient."""
    ident = [{"system": TEST_SYSTEM, "value": marker}]
    return {
        "Device": {
            "resourceType": "Device",
            "identifier": ident,
            "status": "active",
            "patient": {"reference": f"Patient/{w.b}"},
        },
        "Linkage": {
            "resourceType": "Linkage",
            "item": [
                {"type": "source", "resource": {"reference": f"Patient/{w.a}"}},
                {"type": "alternate", "resource": {"reference": f"Patient/{w.b}"}},
            ],
        },
        "GuidanceResponse": {
            "resourceType": "GuidanceResponse",
            "identifier": ident,
            "moduleUri": "urn:x",
            "status": "success",
            "subject": {"reference": f"Patient/{w.b}"},
        },
    }


@pytest.mark.parametrize("rtype", ["Device", "Linkage", "GuidanceResponse"])
async def test_create_of_a_non_compartment_type_naming_b_is_refused(w: World, rtype: str) -> None:
    """Found in review: the write check only looks at the *compartment* paths of the type, and
    types outside the Patient compartment have none, so a confined caller may create a
    ``Device`` with ``patient = Patient/B``, a ``Linkage`` joining A and B, a
    ``GuidanceResponse`` about B: a write into B's record (``Device?patient=B`` now shows A's
    device to B's clinicians; a Linkage asserts A and B are the same person)."""
    marker = f"nc-{uuid.uuid4().hex[:10]}"
    body = _non_compartment_bodies(w, marker)[rtype]
    for token in tokens(w):
        answer = await call(w.gw, "POST", rtype, token, body=body)
        try:
            assert answer.status == 403, f"A stored a {rtype} naming Patient/B: {answer}"
        finally:
            await _cleanup_created(w, answer)


@pytest.mark.parametrize("method", ["DELETE", "PUT"])
async def test_b_device_cannot_be_deleted_or_taken_over(w: World, method: str) -> None:
    """Found in review: the stored-version check of an update/delete (``in_compartment``) lets
    every resource of a type outside the Patient compartment through: A deletes B's Device
    (``Device.patient = Patient/B``), or rewrites it (here: moves it to A)."""
    marker = f"dv-{uuid.uuid4().hex[:10]}"
    body = _non_compartment_bodies(w, marker)["Device"]
    did = await _admin_create(w, body)
    try:
        before = await call(w.gw, "GET", f"Device/{did}", w.admin)
        new = dict(before.json(), patient={"reference": f"Patient/{w.a}"}, status="inactive")
        answer = await call(
            w.gw, method, f"Device/{did}", writer_token(w), body=new if method == "PUT" else None
        )
        after = await call(w.gw, "GET", f"Device/{did}", w.admin)
        assert after.status == 200, f"A deleted B's Device: {answer}"
        assert after.json()["meta"] == before.json()["meta"], f"A changed B's Device: {answer}"
        assert_outcome(answer, 403)  # confined writes outside the compartment: refused outright
    finally:
        await _admin_delete(w, "Device", did)


async def test_reference_to_b_resource_is_no_existence_oracle(w: World) -> None:
    """A create naming one of B's resources, or a missing id, in a non-patient reference: the
    answers must not differ (referential integrity checks would reveal which ids exist)."""
    answers = []
    for target in (w.b_obs, MISSING_ID):
        marker = f"ro-{uuid.uuid4().hex[:10]}"
        body = {
            **a_observation(w, w.a, marker),
            "hasMember": [{"reference": f"Observation/{target}"}],
        }
        answer = await call(w.gw, "POST", "Observation", writer_token(w), body=body)
        await _cleanup_created(w, answer)
        answers.append(answer.status)
    assert answers[0] == answers[1], answers


# --------------------------------------------------------------------------- Patient/A updates


async def test_patient_a_cannot_take_b_identifier(w: World) -> None:
    """Found in review: ``PUT Patient/A`` may rewrite A's ``identifier`` to B's MRN (only
    ``link`` and security labels are protected). ``Patient?identifier=<B's MRN>`` now answers
    A as well: clinicians and systems matching patients by MRN (conditional references, lab
    interfaces) route B's data to A's record, or fail on a double match."""
    stored = (await call(w.gw, "GET", f"Patient/{w.a}", w.admin)).json()
    original = stored.get("identifier")
    body = dict(stored, identifier=[*(original or []), {"value": w.secrets.identifiers[0]}])
    answer = await call(w.gw, "PUT", f"Patient/{w.a}", writer_token(w), body=body)
    try:
        assert_clean(answer, w.secrets) if answer.status >= 400 else None
        assert answer.status == 403, f"A took B's identifier: {answer.status}"
    finally:
        if answer.status in (200, 201):
            current = (await call(w.gw, "GET", f"Patient/{w.a}", w.admin)).json()
            restore = dict(current, identifier=original)
            if original is None:
                restore.pop("identifier")
            restored = await call(w.gw, "PUT", f"Patient/{w.a}", w.admin, body=restore)
            assert restored.status == 200, str(restored)
            assert w.secrets.identifiers[0] not in restored.raw.decode()


async def test_patient_a_link_to_b_is_refused(w: World) -> None:
    """``PUT Patient/A`` adding ``link.other = Patient/B`` (decision 11), both token kinds."""
    stored = (await call(w.gw, "GET", f"Patient/{w.a}", w.admin)).json()
    body = dict(stored, link=[{"other": {"reference": f"Patient/{w.b}"}, "type": "seealso"}])
    for token in tokens(w):
        answer = await call(w.gw, "PUT", f"Patient/{w.a}", token, body=body)
        assert_outcome(answer, 403)
    after = (await call(w.gw, "GET", f"Patient/{w.a}", w.admin)).json()
    assert after["meta"]["versionId"] == stored["meta"]["versionId"]


# --------------------------------------------------------------------------- headers, patches


@pytest.mark.parametrize(
    "headers",
    [
        {"Prefer": "return=representation"},
        {"Prefer": "return=OperationOutcome"},
        {"If-Match": "*"},
        {"If-Match": '"1"'},
        {"If-Match": 'W/"1"'},
    ],
)
@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
async def test_write_to_b_with_headers_is_the_plain_404(
    w: World, method: str, headers: dict[str, str]
) -> None:
    """Prefer / If-Match on a write to B's Observation: identical to one on a missing id."""
    stored = (await call(w.gw, "GET", f"Observation/{w.b_obs}", w.clinician)).json()
    answers = []
    for rid in (w.b_obs, MISSING_ID):
        body: Any = None
        ctype = "application/fhir+json"
        if method == "PUT":
            body = dict(stored, id=rid, status="cancelled")
        elif method == "PATCH":
            body = [{"op": "replace", "path": "/status", "value": "cancelled"}]
            ctype = "application/json-patch+json"
        answer = await call(
            w.gw,
            method,
            f"Observation/{rid}",
            writer_token(w),
            body=body,
            content_type=ctype,
            headers=headers,
        )
        assert_clean(answer, w.secrets)
        answers.append(answer)
    assert answers[0].status == answers[1].status == 404, f"{answers[0]}\n{answers[1]}"
    assert answers[0].raw == answers[1].raw
    after = (await call(w.gw, "GET", f"Observation/{w.b_obs}", w.clinician)).json()
    assert after["meta"] == stored["meta"]


async def test_update_as_create_at_a_new_id_is_refused(w: World) -> None:
    """``PUT Observation/<new id>`` (update-as-create) with a body for A: no stored version to
    check, so refused like a write to a hidden id (the id could later be B's)."""
    rid = f"rv-{uuid.uuid4().hex[:12]}"
    body = dict(a_observation(w, w.a, rid), id=rid)
    for token in tokens(w):
        answer = await call(w.gw, "PUT", f"Observation/{rid}", token, body=body)
        assert_outcome(answer, 404)
    assert (await call(w.gw, "GET", f"Observation/{rid}", w.admin)).status == 404


async def test_fhirpath_patch_is_refused_for_a_and_b_alike(w: World) -> None:
    """FHIRPath Patch (Parameters) on A's and on B's Observation: never applied upstream."""
    marker = f"fp-{uuid.uuid4().hex[:10]}"
    oid = await _admin_create(w, a_observation(w, w.a, marker))
    params = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "operation",
                "part": [
                    {"name": "type", "valueCode": "replace"},
                    {"name": "path", "valueString": "Observation.subject"},
                    {"name": "value", "valueReference": {"reference": f"Patient/{w.b}"}},
                ],
            }
        ],
    }
    try:
        statuses = []
        for rid in (oid, w.b_obs, MISSING_ID):
            answer = await call(w.gw, "PATCH", f"Observation/{rid}", writer_token(w), body=params)
            assert_clean(answer, w.secrets)
            statuses.append(answer.status)
        assert statuses[0] in (403, 415), statuses
        assert statuses[1] == statuses[2], statuses
        after = (await call(w.gw, "GET", f"Observation/{oid}", w.admin)).json()
        assert after["subject"]["reference"] == f"Patient/{w.a}"
    finally:
        await _admin_delete(w, "Observation", oid)


async def test_meta_operations_on_own_resource_are_refused(w: World) -> None:
    """``$meta-delete`` / ``$meta-add`` on A's own labelled Observation: not allow-listed."""
    marker = f"md-{uuid.uuid4().hex[:10]}"
    label = {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}
    oid = await _admin_create(w, {**a_observation(w, w.a, marker), "meta": {"security": [label]}})
    params = {
        "resourceType": "Parameters",
        "parameter": [{"name": "meta", "valueMeta": {"security": [label]}}],
    }
    try:
        for op in ("$meta-delete", "$meta-add"):
            answer = await call(
                w.gw, "POST", f"Observation/{oid}/{op}", writer_token(w), body=params
            )
            assert_outcome(answer, 403)
        after = (await call(w.gw, "GET", f"Observation/{oid}", w.admin)).json()
        assert after["meta"]["security"][0]["code"] == "R"
    finally:
        await _admin_delete(w, "Observation", oid)


async def test_delete_with_cascade_does_not_reach_b(w: World) -> None:
    """``DELETE Observation/<A's>?_cascade=delete`` where B's Observation references A's one:
    B's resource must survive (a cascade deletes what the gateway never checked)."""
    marker = f"cd-{uuid.uuid4().hex[:10]}"
    a_oid = await _admin_create(w, a_observation(w, w.a, marker))
    b_body = {
        **a_observation(w, w.b, marker),
        "derivedFrom": [{"reference": f"Observation/{a_oid}"}],
    }
    b_oid = await _admin_create(w, b_body)
    try:
        answer = await call(w.gw, "DELETE", f"Observation/{a_oid}?_cascade=delete", writer_token(w))
        assert_clean(answer, w.secrets)
        assert (await call(w.gw, "GET", f"Observation/{b_oid}", w.admin)).status == 200, str(answer)
    finally:
        await _admin_delete(w, "Observation", b_oid)
        await _admin_delete(w, "Observation", a_oid)


# --------------------------------------------------------------------------- bundles


def _tx(entries: list[dict[str, Any]], btype: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": btype, "entry": entries}


async def test_transaction_write_entries_aimed_at_b_are_refused_whole(w: World) -> None:
    """Transaction entries next to an allowed create: PUT of B's Observation with ``ifMatch``,
    DELETE by search URL or of B's id, a write whose ``fullUrl`` is B's Observation URL, a
    ``urn:uuid`` subject: the whole transaction is refused, nothing is stored, B unchanged."""
    marker = f"tx-{uuid.uuid4().hex[:10]}"
    stored = (await call(w.gw, "GET", f"Observation/{w.b_obs}", w.clinician)).json()
    ok_entry = {
        "resource": a_observation(w, w.a, marker),
        "request": {"method": "POST", "url": "Observation"},
    }
    u1 = f"urn:uuid:{uuid.uuid4()}"
    probes: list[dict[str, Any]] = [
        {
            "resource": dict(stored, status="cancelled"),
            "request": {
                "method": "PUT",
                "url": f"Observation/{w.b_obs}",
                "ifMatch": f'W/"{stored["meta"]["versionId"]}"',
            },
        },
        {"request": {"method": "DELETE", "url": f"Observation?_id={w.b_obs}"}},
        {"request": {"method": "DELETE", "url": f"Observation?patient={w.b}"}},
        {"request": {"method": "DELETE", "url": f"Observation/{w.b_obs}"}},
        {
            "fullUrl": f"{w.gw.base}/Observation/{w.b_obs}",
            "resource": a_observation(w, w.a, marker),
            "request": {"method": "PUT", "url": f"Observation/{w.b_obs}"},
        },
        {
            "fullUrl": u1,
            "resource": {**a_observation(w, w.a, marker), "subject": {"reference": u1}},
            "request": {"method": "POST", "url": "Observation"},
        },
    ]
    for token in tokens(w):
        for probe in probes:
            answer = await call(w.gw, "POST", "", token, body=_tx([ok_entry, probe]))
            assert_clean(answer, w.secrets)
            assert answer.status in (400, 403), str(answer)
            assert answer.json()["resourceType"] == "OperationOutcome"
    assert await count_marker(w, marker) == 0
    after = (await call(w.gw, "GET", f"Observation/{w.b_obs}", w.clinician)).json()
    assert after["meta"] == stored["meta"]


async def test_batch_with_transaction_only_fields_does_not_write_b(w: World) -> None:
    """A ``batch`` with urn:uuid fullUrls/references and ``ifMatch`` (transaction features):
    entries judged one by one, B untouched, the urn reference refused."""
    marker = f"bt-{uuid.uuid4().hex[:10]}"
    stored = (await call(w.gw, "GET", f"Observation/{w.b_obs}", w.clinician)).json()
    u1 = f"urn:uuid:{uuid.uuid4()}"
    bundle = _tx(
        [
            {
                "fullUrl": u1,
                "resource": a_observation(w, w.a, marker),
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "resource": {**a_observation(w, w.a, marker), "subject": {"reference": u1}},
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "resource": dict(stored, status="cancelled"),
                "request": {"method": "PUT", "url": f"Observation/{w.b_obs}", "ifMatch": "*"},
            },
        ],
        "batch",
    )
    try:
        answer = await call(w.gw, "POST", "", writer_token(w), body=bundle)
        assert_clean(answer, w.secrets)
        assert answer.status == 200, str(answer)
        statuses = [e["response"]["status"][:3] for e in answer.json()["entry"]]
        assert statuses[0] == "201" and statuses[1] == "403" and statuses[2] in ("403", "404"), (
            statuses
        )
        after = (await call(w.gw, "GET", f"Observation/{w.b_obs}", w.clinician)).json()
        assert after["meta"] == stored["meta"]
    finally:
        for _ in range(3):
            answer = await call(
                w.gw, "GET", f"Observation?identifier={TEST_SYSTEM}|{marker}", w.admin
            )
            for entry in answer.json().get("entry", []):
                await _admin_delete(w, "Observation", entry["resource"]["id"])


async def test_binary_create_with_security_context_of_b_is_refused(w: World) -> None:
    for token in tokens(w):
        body = {
            "resourceType": "Binary",
            "contentType": "text/plain",
            "securityContext": {"reference": f"Observation/{w.b_obs}"},
            "data": "aGVsbG8=",
        }
        answer = await call(w.gw, "POST", "Binary", token, body=body)
        try:
            assert_outcome(answer, 403)
        finally:
            await _cleanup_created(w, answer)


async def test_contained_patient_b_is_refused(w: World) -> None:
    """An Observation for A containing a Patient that is B (B's identifier, ``link`` to B) and
    pointing at it through ``#p``: refused (unverifiable), nothing stored."""
    marker = f"cp-{uuid.uuid4().hex[:10]}"
    body = {
        **a_observation(w, w.a, marker),
        "contained": [
            {
                "resourceType": "Patient",
                "id": "p",
                "identifier": [{"value": w.secrets.identifiers[0]}],
                "link": [{"other": {"reference": f"Patient/{w.b}"}, "type": "refer"}],
            }
        ],
        "performer": [{"reference": "#p"}],
    }
    answer = await call(w.gw, "POST", "Observation", writer_token(w), body=body)
    try:
        assert_outcome(answer, 403)
        assert await count_marker(w, marker) == 0
    finally:
        await _cleanup_created(w, answer)


# --------------------------------------------------------------------------- hostile bodies


def _deep(depth: int) -> bytes:
    return b'{"resourceType":"Observation","extension":' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize("kind", ["deep-array", "deep-object", "deep-patch", "deep-bundle", "huge"])
async def test_hostile_bodies_are_a_clear_4xx(w: World, kind: str) -> None:
    """Found in review: a body nested 5,000 levels deep (array or object; a create, a JSON Patch
    or a batch entry) makes the JSON decoder raise ``RecursionError`` (msgspec and the stdlib
    duplicate-key scan), which is not a ``JsonError``: the gateway answers 500 and logs an
    unhandled exception instead of a 400 OperationOutcome. (A 32 MiB body is a clean 413.)"""
    depth = 5000
    path, ctype = "Observation", "application/fhir+json"
    if kind == "deep-array":
        raw = _deep(depth)
    elif kind == "deep-object":
        raw = (
            b'{"resourceType":"Observation","code":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}"
        )
    elif kind == "deep-patch":
        marker = f"dp-{uuid.uuid4().hex[:10]}"
        oid = await _admin_create(w, a_observation(w, w.a, marker))
        path, ctype = f"Observation/{oid}", "application/json-patch+json"
        raw = b'[{"op":"add","path":"/note","value":' + b"[" * depth + b"]" * depth + b"}]"
    elif kind == "deep-bundle":
        path = ""
        raw = (
            b'{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"POST","url":"Observation"},"resource":'
            + _deep(depth)
            + b"}]}"
        )
    else:
        raw = json.dumps(
            {**a_observation(w, w.a, "huge"), "note": [{"text": "x" * (32 << 20)}]}
        ).encode()
    method = "PATCH" if kind == "deep-patch" else "POST"
    headers = {
        "Authorization": f"Bearer {writer_token(w)}",
        "Accept": "application/fhir+json",
        "Content-Type": ctype,
    }
    url = f"{w.gw.base}/{path}" if path else w.gw.base
    try:
        async with w.gw.session.request(method, url, headers=headers, data=io.BytesIO(raw)) as resp:
            status, doc = resp.status, await resp.read()
        assert 400 <= status < 500, f"{method} {kind} -> {status} {doc[:200]!r}"
        assert json.loads(doc)["resourceType"] == "OperationOutcome"
    finally:
        if kind == "deep-patch":
            await _admin_delete(w, "Observation", oid)
