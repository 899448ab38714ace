"""Review probes: the gateway as a SMART App Launch 2.x resource server.

What the SMART App Launch 2.x "Conformance" page (well-known document, capabilities), the
"Scopes and Launch Context" page, FHIR R4 http.html / search.html and the Inferno "SMART App
Launch" and ONC "(g)(10) Standardized API" test kits expect from the FHIR server side, checked
through a running gateway in front of the recording fake upstream. Tests whose docstring starts
with ``Found in review:`` are real non-conformances and fail on purpose.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

import pytest
from aiohttp import web

from gateway.errors import ConfigError
from gateway.smart.scopes import parse_scopes
from tests.conftest import GatewayFactory
from tests.support.fake_upstream import FakeUpstream, Recorded, default_answer, self_link
from tests.support.gateway import RunningGateway, make_config
from tests.support.issuer import TestIssuer

FHIR_JSON = "application/fhir+json"
PAT = "pat-1"
OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
LAB = f"{OBS_CAT}|laboratory"
SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


# --------------------------------------------------------------------------- plumbing


def smart_section(issuer: TestIssuer, **extra: Any) -> dict[str, Any]:
    return {
        "authorization_endpoint": f"{issuer.url}/authorize",
        "token_endpoint": f"{issuer.url}/token",
        "scopes_supported": ["openid", "fhirUser", "launch/patient", "patient/*.rs"],
        "capabilities": [
            "launch-standalone",
            "client-public",
            "context-standalone-patient",
            "permission-patient",
            "permission-v2",
        ],
        **extra,
    }


async def call(
    gw: RunningGateway,
    method: str,
    path: str,
    token: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    body: Any = None,
) -> tuple[int, Any, bytes]:
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", FHIR_JSON)
    async with gw.session.request(method, f"{gw.base}/{path}", headers=hdrs, data=data) as r:
        return r.status, r.headers, await r.read()


def obs(oid: str, code: str, patient: str = PAT) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": [{"coding": [{"system": OBS_CAT, "code": code}]}],
        "code": {"text": code},
        "subject": {"reference": f"Patient/{patient}"},
    }


def clinical_upstream(fake: FakeUpstream) -> None:
    """Reads answer the resource (Observations in pat-1's compartment); searches answer a
    lab and a vital-signs Observation of pat-1 with an honest ``self`` link."""

    async def answer(_: web.Request, rec: Recorded) -> web.StreamResponse:
        parts = [p for p in rec.path.split("/") if p][1:]
        if rec.method == "GET" and len(parts) == 2 and parts[0] == "Observation":
            doc: Any = obs(parts[1], "laboratory")
        elif parts[:1] == ["Observation"] and (
            (rec.method == "GET" and len(parts) == 1) or parts[1:] == ["_search"]
        ):
            doc = {
                "resourceType": "Bundle",
                "type": "searchset",
                "link": [{"relation": "self", "url": self_link(fake.base_url, rec)}],
                "entry": [
                    {"fullUrl": f"{fake.base_url}/Observation/{o['id']}", "resource": o}
                    for o in (obs("lab-1", "laboratory"), obs("vs-1", "vital-signs"))
                ],
            }
        else:
            return default_answer(fake.base_url, rec)
        return web.Response(body=json.dumps(doc).encode(), content_type=FHIR_JSON)

    fake.reply(answer)


def patient_token(issuer: TestIssuer, scope: str, **claims: Any) -> str:
    return issuer.mint(scope=f"openid fhirUser launch/patient {scope}", patient=PAT, **claims)


def forwarded_query(fake: FakeUpstream) -> list[tuple[str, str]]:
    [rec] = [r for r in fake.requests if not r.path.endswith("/metadata")]
    form = rec.body.decode() if rec.method == "POST" and rec.path.endswith("/_search") else ""
    text = "&".join(t for t in (rec.query, form) if t)
    return parse_qsl(text, keep_blank_values=True)


# --------------------------------------------------------------------------- well-known


@pytest.mark.parametrize(
    "capability",
    ["context-banner", "context-style", "authorize-post", "client-confidential-asymmetric"],
)
def test_well_known_can_advertise_capabilities_the_g10_kit_requires(capability: str) -> None:
    """Found in review: SMART App Launch 2.x, Conformance §"Capabilities" defines
    ``context-banner``, ``context-style``, ``authorize-post`` and
    ``client-confidential-asymmetric`` (and ``context-ehr-encounter``,
    ``context-standalone-encounter``, ``permission-online``, ``smart-app-state``); the ONC
    (g)(10) kit's "well-known configuration contains required capabilities" test requires
    context-banner/context-style (and authorize-post for SMART v2), and Backend Services
    discovery requires ``client-confidential-asymmetric``. ``smart.capabilities`` is a closed
    Literal of 12 values, so the gateway refuses to start with any of these: a deployment
    whose authorization server supports them can never advertise them."""
    issuer_url = "https://auth.example.test"
    smart = {
        "authorization_endpoint": f"{issuer_url}/authorize",
        "token_endpoint": f"{issuer_url}/token",
        "capabilities": ["launch-ehr", "context-ehr-patient", capability],
    }
    try:
        cfg = make_config("http://127.0.0.1:1/fhir", issuer_url, smart=smart)
    except ConfigError as exc:  # pragma: no cover - the observed failure
        pytest.fail(f"capability {capability!r} refused: {exc}")
    assert capability in cfg.smart.capabilities


async def test_backend_services_signing_algs_are_relayed_from_the_authorization_server(
    gateway_factory: GatewayFactory, issuer: TestIssuer
) -> None:
    """Found in review: SMART App Launch 2.x, Conformance (metadata table) lists
    ``token_endpoint_auth_signing_alg_values_supported``; SMART Backend Services
    ("Authenticating to the token endpoint") requires clients to use RS384 or ES384 and the
    Inferno Backend Services / (g)(10) bulk discovery tests check this key (RS384 or ES384)
    and ``private_key_jwt``. The gateway's allow-list (URL_KEYS/LIST_KEYS) drops it from the
    authorization server's document, and it cannot be configured either."""
    issuer.discovery_overrides = {
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "scopes_supported": ["system/*.rs"],
    }
    smart = {
        "capabilities": ["permission-v2"],
        "openid_configuration_url": f"{issuer.url}/.well-known/openid-configuration",
    }
    gw = await gateway_factory(smart=smart)
    status, _, body = await call(gw, "GET", ".well-known/smart-configuration")
    assert status == 200
    doc = json.loads(body)
    assert doc["grant_types_supported"] == ["client_credentials"]
    assert doc["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert doc.get("token_endpoint_auth_signing_alg_values_supported") == ["RS384", "ES384"]


async def test_well_known_always_has_grant_types_supported(
    gateway_factory: GatewayFactory, issuer: TestIssuer
) -> None:
    """Found in review: SMART App Launch 2.x, Conformance, metadata table:
    ``grant_types_supported`` is REQUIRED ("Array of grant types supported at the token
    endpoint"). With a valid smart section that advertises no launch capability (a
    backend-services or permission-only deployment), ``well_known_document`` derives an
    empty list and omits the key."""
    smart = {"token_endpoint": f"{issuer.url}/token", "capabilities": ["permission-v2"]}
    gw = await gateway_factory(smart=smart)
    status, _, body = await call(gw, "GET", ".well-known/smart-configuration")
    assert status == 200
    doc = json.loads(body)
    assert doc.get("grant_types_supported"), doc


async def test_well_known_required_fields_pkce_and_public_access(
    gateway_factory: GatewayFactory, issuer: TestIssuer
) -> None:
    """SMART 2.x Conformance: capabilities, token/authorization endpoints, issuer + jwks_uri
    with sso-openid-connect; code_challenge_methods_supported has S256 and never ``plain``
    even when the authorization server lists it; public (no token, a bad token is ignored),
    CORS ``*`` for any origin, ``application/json`` for ``*/*`` and ``application/fhir+json``."""
    issuer.discovery_overrides = {"code_challenge_methods_supported": ["plain", "S256"]}
    smart = smart_section(
        issuer,
        openid_configuration_url=f"{issuer.url}/.well-known/openid-configuration",
        capabilities=[*smart_section(issuer)["capabilities"], "sso-openid-connect"],
    )
    gw = await gateway_factory(smart=smart)
    for headers in (
        {"Accept": "*/*", "Origin": "https://elsewhere.example"},
        {"Accept": "application/fhir+json"},
        {"Authorization": "Bearer not-a-token"},
    ):
        status, h, body = await call(gw, "GET", ".well-known/smart-configuration", headers=headers)
        assert status == 200, headers
        assert h["Content-Type"].split(";")[0] == "application/json"
        assert h.get("Access-Control-Allow-Origin") == "*"
        doc = json.loads(body)
        assert doc["issuer"] == issuer.url and doc["jwks_uri"] == issuer.jwks_uri
        assert doc["authorization_endpoint"] and doc["token_endpoint"]
        assert "sso-openid-connect" in doc["capabilities"]
        assert doc["code_challenge_methods_supported"] == ["S256"]
        assert "authorization_code" in doc["grant_types_supported"]
    status, h, _ = await call(
        gw,
        "OPTIONS",
        ".well-known/smart-configuration",
        headers={"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "GET"},
    )
    assert status in (200, 204)
    assert h.get("Access-Control-Allow-Origin") == "*"


# --------------------------------------------------------------------------- metadata


async def test_metadata_is_public_json_in_every_json_form(
    gateway_factory: GatewayFactory, issuer: TestIssuer, fake_upstream: FakeUpstream
) -> None:
    """FHIR R4 http.html "capabilities" + "Content Types": metadata without a token;
    ``Accept`` application/fhir+json, application/json, */* and ``_format`` json /
    application/fhir+json all give a JSON CapabilityStatement (fhirVersion 4.0.1, the SMART
    security service coding and the oauth-uris extension); XML is 406 with an
    OperationOutcome; HEAD works."""
    gw = await gateway_factory(smart=smart_section(issuer))
    variants: list[tuple[str, dict[str, str]]] = [
        ("metadata", {"Accept": "application/fhir+json"}),
        ("metadata", {"Accept": "application/json"}),
        ("metadata", {"Accept": "*/*"}),
        ("metadata", {}),
        ("metadata?_format=json", {}),
        ("metadata?_format=application/fhir%2Bjson", {}),
        ("metadata?_format=application/json", {}),
    ]
    for path, headers in variants:
        status, h, body = await call(gw, "GET", path, headers=headers)
        assert status == 200, (path, headers)
        assert h["Content-Type"].split(";")[0] in (FHIR_JSON, "application/json"), (path, headers)
        doc = json.loads(body)
        assert doc["resourceType"] == "CapabilityStatement"
        assert doc["fhirVersion"] == "4.0.1"
        assert doc["kind"] == "instance"
        security = doc["rest"][0]["security"]
        codings = [c for s in security["service"] for c in s["coding"]]
        assert {"system": SECURITY_SERVICE, "code": "SMART-on-FHIR"} in codings
        uris = {
            e["url"]: e["valueUri"]
            for ext in security["extension"]
            if ext["url"] == OAUTH_URIS
            for e in ext["extension"]
        }
        assert uris["authorize"] == f"{issuer.url}/authorize"
        assert uris["token"] == f"{issuer.url}/token"
    for path, headers in (
        ("metadata?_format=xml", {}),
        ("metadata", {"Accept": "application/fhir+xml"}),
    ):
        status, h, body = await call(gw, "GET", path, headers=headers)
        assert status == 406, (path, headers)
        assert json.loads(body)["resourceType"] == "OperationOutcome"
    status, h, body = await call(gw, "HEAD", "metadata")
    assert status == 200 and body == b""
    assert h["Content-Type"].split(";")[0] == FHIR_JSON


async def test_fhir_json_answers_declare_charset_utf_8(
    gateway_factory: GatewayFactory, issuer: TestIssuer, fake_upstream: FakeUpstream
) -> None:
    """Found in review: FHIR R4 http.html §"Content Types and encodings": "requests and
    responses SHALL explicitly set the character encoding to UTF-8 using the charset parameter
    of the MIME-type in the Content-Type header". Checked on answers the gateway builds itself:
    metadata (rewritten statement) and its own OperationOutcome errors (401, 403, 404, 406);
    observed ``application/fhir+json`` with no charset on every one."""
    gw = await gateway_factory(smart=smart_section(issuer))
    clinical_upstream(fake_upstream)
    token = patient_token(issuer, "patient/*.rs")
    seen = {}
    for label, path, tok, headers in (
        ("metadata", "metadata", None, {}),
        ("401", "Observation", None, {}),
        ("403", f"Condition?patient={PAT}", patient_token(issuer, "patient/Observation.rs"), {}),
        ("404", "Patient/someone-else", token, {}),
        ("406", "Observation", token, {"Accept": "application/fhir+xml"}),
    ):
        _, h, _ = await call(gw, "GET", path, tok, headers=headers)
        seen[label] = h.get("Content-Type", "")
    bad = {k: v for k, v in seen.items() if "charset=utf-8" not in v.lower().replace(" ", "")}
    assert not bad, bad


# --------------------------------------------------------------------------- scopes


@pytest.mark.parametrize("scope", ["patient/*.read", "patient/*.rs", "patient/*.cruds"])
async def test_v1_read_and_v2_rs_grant_the_same(
    gateway_factory: GatewayFactory, issuer: TestIssuer, fake_upstream: FakeUpstream, scope: str
) -> None:
    """SMART 2.x Scopes §"Scopes for requesting FHIR Resources": v1 ``read`` = v2 ``rs``
    (read and search, no create); through the gateway, not only in the parser."""
    gw = await gateway_factory()
    clinical_upstream(fake_upstream)
    token = patient_token(issuer, scope)
    assert (await call(gw, "GET", "Observation/lab-1", token))[0] == 200
    assert (await call(gw, "GET", f"Observation?patient={PAT}", token))[0] == 200
    assert (await call(gw, "GET", f"Patient/{PAT}", token))[0] == 200
    status, h, _ = await call(gw, "POST", "Observation", token, body=obs("n", "laboratory"))
    if scope == "patient/*.cruds":
        assert status == 201
    else:
        assert status == 403
        assert 'error="insufficient_scope"' in h["WWW-Authenticate"]


@pytest.mark.parametrize("scope", ["patient/Observation.c", "patient/Observation.write"])
async def test_create_only_scope_creates_but_cannot_read_or_search(
    gateway_factory: GatewayFactory, issuer: TestIssuer, fake_upstream: FakeUpstream, scope: str
) -> None:
    """SMART 2.x Scopes: ``c`` alone (and v1 ``write`` = ``cud``) permits create, not read or
    search: 403 ``insufficient_scope`` naming a scope that would grant it, nothing sent."""
    gw = await gateway_factory()
    clinical_upstream(fake_upstream)
    token = patient_token(issuer, scope)
    status, _, _ = await call(gw, "POST", "Observation", token, body=obs("n", "laboratory"))
    assert status == 201
    fake_upstream.requests.clear()
    for path in ("Observation/lab-1", f"Observation?patient={PAT}"):
        status, h, body = await call(gw, "GET", path, token)
        assert status == 403, path
        challenge = h["WWW-Authenticate"]
        assert challenge.startswith("Bearer ") and 'error="insufficient_scope"' in challenge
        assert 'scope="' in challenge and "Observation" in challenge
        assert json.loads(body)["issue"][0]["code"] == "forbidden"
    assert fake_upstream.requests == []


async def test_mixed_v1_v2_and_unknown_scopes_are_ignored_not_fatal(
    gateway_factory: GatewayFactory, issuer: TestIssuer, fake_upstream: FakeUpstream
) -> None:
    """SMART 2.x Scopes: v1 and v2 scopes may be mixed; scopes a server does not understand
    grant nothing but do not invalidate the token (RFC 6749 §3.3)."""
    gw = await gateway_factory()
    clinical_upstream(fake_upstream)
    scope = (
        "patient/Observation.read patient/Patient.rs */* patient/Bogus.rs "
        "user/Observation.xyz custom:thing launch"
    )
    token = patient_token(issuer, scope)
    assert (await call(gw, "GET", "Observation?category=laboratory", token))[0] == 200
    assert (await call(gw, "GET", f"Patient/{PAT}", token))[0] == 200
    status, h, _ = await call(gw, "GET", f"Condition?patient={PAT}", token)
    assert status == 403 and 'error="insufficient_scope"' in h["WWW-Authenticate"]


async def test_patient_scope_without_patient_claim_grants_nothing(
    gateway_factory: GatewayFactory, issuer: TestIssuer, fake_upstream: FakeUpstream
) -> None:
    """``launch/patient patient/*.rs`` but no ``patient`` in the token: never an unconfined
    search (SMART 2.x "patient/" scopes are for "the current patient")."""
    gw = await gateway_factory()
    token = issuer.mint(scope="openid launch/patient patient/*.rs", patient=None)
    for path in ("Observation", "Observation/lab-1", f"Patient/{PAT}"):
        status, _, _ = await call(gw, "GET", path, token)
        assert status in (401, 403, 404), path
    assert fake_upstream.requests == []


@pytest.mark.parametrize(
    "claims",
    [
        {"scope": "openid fhirUser user/*.rs", "fhirUser": "Practitioner/dr-1", "patient": None},
        {"scope": "system/*.rs", "patient": None, "sub": "backend-client"},
    ],
    ids=["user-practitioner", "system"],
)
async def test_user_and_system_tokens_search_across_patients(
    gateway_factory: GatewayFactory,
    issuer: TestIssuer,
    fake_upstream: FakeUpstream,
    claims: dict[str, Any],
) -> None:
    """``user/*.rs`` for a Practitioner and ``system/*.rs`` without a patient are not
    narrowed to a patient; a write is still refused with insufficient_scope."""
    gw = await gateway_factory()
    clinical_upstream(fake_upstream)
    token = issuer.mint(**claims)
    status, _, body = await call(gw, "GET", "Observation?category=laboratory", token)
    assert status == 200
    assert len(json.loads(body)["entry"]) == 2
    assert dict(forwarded_query(fake_upstream)) == {"category": "laboratory"}
    status, h, _ = await call(gw, "DELETE", "Observation/lab-1", token)
    assert status == 403 and 'error="insufficient_scope"' in h["WWW-Authenticate"]


def test_g10_granular_scopes_are_understood() -> None:
    """The granular scopes the (g)(10) kit requests (SMART 2.x Scopes, "Finer-grained
    resource constraints"; US Core 6 category slices) parse as granular grants."""
    raw = (
        f"patient/Observation.rs?category={LAB} "
        "patient/Condition.rs?category=http://terminology.hl7.org/CodeSystem/"
        "condition-category|encounter-diagnosis "
        "patient/Condition.rs?category=http://hl7.org/fhir/us/core/CodeSystem/"
        "condition-category|health-concern"
    )
    parsed = parse_scopes(raw)
    assert not parsed.rejected
    assert len(parsed.granular("patient", "Observation", "s")) == 1
    assert len(parsed.granular("patient", "Condition", "r")) == 2


async def test_granular_observation_scope_returns_only_labs(
    gateway_factory: GatewayFactory, issuer: TestIssuer, fake_upstream: FakeUpstream
) -> None:
    """``patient/Observation.rs?category=...|laboratory``: a search returns only labs, a read
    of a non-lab is 404, a non-lab category search yields nothing of another category."""
    gw = await gateway_factory()
    clinical_upstream(fake_upstream)
    token = patient_token(issuer, f"patient/Observation.rs?category={LAB}")
    status, _, body = await call(gw, "GET", f"Observation?patient={PAT}", token)
    assert status == 200
    ids = [e["resource"]["id"] for e in json.loads(body).get("entry", [])]
    assert ids == ["lab-1"]
    q = forwarded_query(fake_upstream)
    assert ("category", LAB) in q


# --------------------------------------------------------------------------- FHIR basics


async def test_inferno_style_reads_and_searches_pass_through(
    gateway_factory: GatewayFactory, issuer: TestIssuer, fake_upstream: FakeUpstream
) -> None:
    """US Core / (g)(10) single-patient API probes: Patient read, ``_id`` search,
    ``patient + category`` search, ``_revinclude=Provenance:target``; the client's
    parameters reach the upstream unchanged (beside the narrowing)."""
    gw = await gateway_factory()
    token = patient_token(issuer, "patient/*.rs")
    status, h, body = await call(gw, "GET", f"Patient/{PAT}", token)
    assert status == 200 and json.loads(body)["id"] == PAT
    assert h["Content-Type"].split(";")[0] == FHIR_JSON
    for path, expected in (
        (f"Patient?_id={PAT}", ("_id", PAT)),
        (f"Observation?patient={PAT}&category=laboratory", ("category", "laboratory")),
        (f"Patient?_id={PAT}&_revinclude=Provenance:target", ("_revinclude", "Provenance:target")),
        (
            f"Observation?patient={PAT}&category=laboratory&_revinclude=Provenance:target",
            ("_revinclude", "Provenance:target"),
        ),
    ):
        fake_upstream.requests.clear()
        status, _, body = await call(gw, "GET", path, token)
        assert status == 200, path
        assert json.loads(body)["type"] == "searchset"
        assert expected in forwarded_query(fake_upstream), path


async def test_errors_are_operation_outcomes_with_the_right_issue_code(
    gateway_factory: GatewayFactory, issuer: TestIssuer, fake_upstream: FakeUpstream
) -> None:
    """FHIR R4 http.html: errors carry an OperationOutcome; issue.code from issue-type.
    RFC 6750 §3: 401 challenges ``Bearer`` with ``invalid_token`` for a bad token."""
    gw = await gateway_factory()
    token = patient_token(issuer, "patient/Observation.rs")
    cases = [
        ("Observation", None, {}, 401, "login"),
        ("Observation", "garbage.token.value", {}, 401, "login"),
        ("Patient/pat-other", patient_token(issuer, "patient/*.rs"), {}, 404, "not-found"),
        (f"Condition?patient={PAT}", token, {}, 403, "forbidden"),
        ("Observation", token, {"Accept": "application/fhir+xml"}, 406, "not-supported"),
        ("NotAType/1", token, {}, 400, "not-supported"),
    ]
    for path, tok, headers, status_wanted, code in cases:
        status, h, body = await call(gw, "GET", path, tok, headers=headers)
        assert status == status_wanted, path
        doc = json.loads(body)
        assert doc["resourceType"] == "OperationOutcome", path
        assert doc["issue"][0]["code"] == code, path
        if status == 401:
            assert h["WWW-Authenticate"].startswith("Bearer ")
            if tok is not None:
                assert 'error="invalid_token"' in h["WWW-Authenticate"]


async def test_summary_count_for_an_unconfined_clinician_is_forwarded(
    gateway_factory: GatewayFactory, issuer: TestIssuer, fake_upstream: FakeUpstream
) -> None:
    """FHIR R4 search.html §3.1.1.5.8 (``_summary=count``): for a clinician (``user/*.rs``,
    no patient context) the parameter reaches the upstream, so the server's count semantics
    apply (confined callers get 403, covered elsewhere)."""
    gw = await gateway_factory()
    clinical_upstream(fake_upstream)
    token = issuer.mint(
        scope="openid fhirUser user/*.rs", fhirUser="Practitioner/dr-1", patient=None
    )
    status, _, _ = await call(gw, "GET", "Observation?_summary=count", token)
    assert status == 200
    assert ("_summary", "count") in forwarded_query(fake_upstream)


async def test_well_known_with_trailing_slash_or_query(
    gateway_factory: GatewayFactory, issuer: TestIssuer
) -> None:
    """Not a SMART requirement (the URL is exactly ``{base}/.well-known/smart-configuration``);
    checked that common variants give the same document or a clean 404, never a 401/5xx."""
    gw = await gateway_factory(smart=smart_section(issuer))
    _, _, ref = await call(gw, "GET", ".well-known/smart-configuration")
    for path in (".well-known/smart-configuration/", ".well-known/smart-configuration?x=1"):
        status, _, body = await call(gw, "GET", path)
        assert status in (200, 404), path
        if status == 200:
            assert body == ref, path
