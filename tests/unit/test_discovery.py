"""SMART discovery: the well-known document, the rewritten CapabilityStatement, their caches.

Pure rules are table-tested; the component is tested through a running gateway in front of the
recording fake upstream, with the test issuer standing in for the authorization server's own
discovery document (``/.well-known/openid-configuration``).
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any, get_args

import pytest
from aiohttp import web

from gateway.config import SmartConfig, parse_config
from gateway.errors import ConfigError, UpstreamError
from gateway.smart.capability_statement import (
    OAUTH_URIS,
    SECURITY_SERVICE,
    rewrite_capability_statement,
    security_section,
)
from gateway.smart.discovery import TtlDocument
from gateway.smart.smart_configuration import (
    CAPABILITY_RULES,
    capability_gaps,
    derived_grant_types,
    server_fields,
    well_known_document,
)
from tests.conftest import GatewayFactory
from tests.support.fake_upstream import FakeUpstream, Recorded
from tests.support.gateway import PUBLIC_BASE, RunningGateway
from tests.support.issuer import FakeClock, TestIssuer

UPSTREAM = "http://10.9.8.7:8080/fhir"
AS = "https://auth.example.test"
FULL = {
    "authorization_endpoint": f"{AS}/authorize",
    "token_endpoint": f"{AS}/token",
    "scopes_supported": [
        "openid",
        "fhirUser",
        "launch",
        "launch/patient",
        "launch/encounter",
        "offline_access",
        "online_access",
        "patient/*.rs",
        "user/*.read",
    ],
    "response_types_supported": ["code"],
    "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
    "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "private_key_jwt"],
    "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
    "issuer": AS,
    "jwks_uri": f"{AS}/jwks",
}
ALL_CAPABILITIES = list(CAPABILITY_RULES)


def test_rules_cover_exactly_the_configurable_capabilities() -> None:
    annotation = SmartConfig.model_fields["capabilities"].annotation
    (literal,) = get_args(annotation)
    assert set(get_args(literal)) == set(CAPABILITY_RULES)


# --------------------------------------------------------------------------- capability rules


def without(doc: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in keys}


def replaced(doc: dict[str, Any], **values: Any) -> dict[str, Any]:
    return {**doc, **values}


GAPS = [
    ("everything-backed", FULL, ALL_CAPABILITIES, []),
    ("no-token-endpoint", without(FULL, "token_endpoint"), ["permission-v2"], ["permission-v2"]),
    (
        "launch-without-authorize",
        without(FULL, "authorization_endpoint"),
        ["launch-standalone", "permission-v2"],
        ["launch-standalone"],
    ),
    (
        "launch-without-code",
        replaced(FULL, response_types_supported=["token"]),
        ["launch-ehr"],
        ["launch-ehr"],
    ),
    (
        "ehr-launch-without-launch-scope",
        replaced(FULL, scopes_supported=["openid", "patient/*.rs"]),
        ["launch-ehr"],
        ["launch-ehr"],
    ),
    ("public-client-needs-a-launch", FULL, ["client-public"], ["client-public"]),
    (
        "public-client-needs-none",
        replaced(FULL, token_endpoint_auth_methods_supported=["client_secret_basic"]),
        ["launch-standalone", "client-public"],
        ["client-public"],
    ),
    (
        "symmetric-needs-a-secret-method",
        replaced(FULL, token_endpoint_auth_methods_supported=["none", "private_key_jwt"]),
        ["client-confidential-symmetric"],
        ["client-confidential-symmetric"],
    ),
    ("ehr-context-needs-ehr-launch", FULL, ["context-ehr-patient"], ["context-ehr-patient"]),
    (
        "standalone-context-needs-launch-patient",
        replaced(FULL, scopes_supported=["openid", "patient/*.rs"]),
        ["launch-standalone", "context-standalone-patient"],
        ["context-standalone-patient"],
    ),
    (
        "permissions-need-matching-scopes",
        replaced(FULL, scopes_supported=["openid", "patient/*.read"]),
        ["permission-patient", "permission-user", "permission-v1", "permission-v2"],
        ["permission-user", "permission-v2"],
    ),
    (
        "offline-needs-refresh-grant",
        replaced(FULL, grant_types_supported=["authorization_code"]),
        ["permission-offline"],
        ["permission-offline"],
    ),
    (
        "sso-needs-issuer-and-jwks",
        without(FULL, "jwks_uri"),
        ["sso-openid-connect"],
        ["sso-openid-connect"],
    ),
    (
        "unknown-lists-are-not-held-against-it",
        {"token_endpoint": f"{AS}/token", "authorization_endpoint": f"{AS}/authorize"},
        [
            "launch-ehr",
            "launch-standalone",
            "client-public",
            "client-confidential-symmetric",
            "permission-v1",
            "permission-offline",
        ],
        [],
    ),
    (
        "asymmetric-needs-private-key-jwt",
        replaced(FULL, token_endpoint_auth_methods_supported=["client_secret_basic"]),
        ["client-confidential-asymmetric"],
        ["client-confidential-asymmetric"],
    ),
    (
        "asymmetric-needs-rs384-or-es384",
        replaced(FULL, token_endpoint_auth_signing_alg_values_supported=["RS256"]),
        ["client-confidential-asymmetric"],
        ["client-confidential-asymmetric"],
    ),
    (
        "launch-only-capabilities-need-a-launch",
        FULL,
        ["authorize-post", "context-banner", "context-style", "context-ehr-encounter"],
        ["authorize-post", "context-banner", "context-style", "context-ehr-encounter"],
    ),
    (
        "authorize-post-needs-authorize",
        without(FULL, "authorization_endpoint"),
        ["authorize-post"],
        ["authorize-post"],
    ),
    (
        "standalone-encounter-needs-launch-encounter",
        replaced(FULL, scopes_supported=["openid", "launch/patient", "patient/*.rs"]),
        ["launch-standalone", "context-standalone-encounter"],
        ["context-standalone-encounter"],
    ),
    (
        "online-needs-online-access-and-refresh",
        replaced(FULL, grant_types_supported=["authorization_code"]),
        ["permission-online"],
        ["permission-online"],
    ),
    (
        "not-checkable-not-held-against-it",
        {"token_endpoint": f"{AS}/token"},
        ["smart-app-state", "client-confidential-asymmetric", "permission-online"],
        [],
    ),
    ("not-a-capability", FULL, ["launch-sideways"], ["launch-sideways"]),
]


@pytest.mark.parametrize(
    ("doc", "caps", "failing"), [g[1:] for g in GAPS], ids=[g[0] for g in GAPS]
)
def test_capability_gaps(doc: dict[str, Any], caps: list[str], failing: list[str]) -> None:
    assert sorted({g.capability for g in capability_gaps(doc, caps)}) == sorted(failing)


TOKEN_ONLY = {"token_endpoint": f"{AS}/token"}
WITH_AUTHORIZE = {**TOKEN_ONLY, "authorization_endpoint": f"{AS}/authorize"}
GRANTS = [
    ("launch", WITH_AUTHORIZE, ["launch-ehr"], ["authorization_code"]),
    (
        "launch-offline",
        WITH_AUTHORIZE,
        ["launch-standalone", "permission-offline"],
        ["authorization_code", "refresh_token"],
    ),
    (
        "online",
        WITH_AUTHORIZE,
        ["launch-ehr", "permission-online"],
        ["authorization_code", "refresh_token"],
    ),
    ("backend-services", TOKEN_ONLY, ["client-confidential-asymmetric"], ["client_credentials"]),
    (
        "system-scopes",
        {**WITH_AUTHORIZE, "scopes_supported": ["launch", "system/*.rs"]},
        ["launch-ehr"],
        ["authorization_code", "client_credentials"],
    ),
    ("permission-only-token-endpoint", TOKEN_ONLY, ["permission-v2"], ["client_credentials"]),
    ("permission-only-with-authorize", WITH_AUTHORIZE, ["permission-v2"], ["authorization_code"]),
]


@pytest.mark.parametrize(
    ("doc", "caps", "grants"), [g[1:] for g in GRANTS], ids=[g[0] for g in GRANTS]
)
def test_grant_types_are_derived_and_never_empty(
    doc: dict[str, Any], caps: list[str], grants: list[str]
) -> None:
    assert derived_grant_types(doc, caps) == grants
    result = well_known_document(None, doc, caps)
    assert result is not None and result["grant_types_supported"] == grants


def test_grant_types_from_the_authorization_server_or_config_are_kept() -> None:
    server = {**WITH_AUTHORIZE, "grant_types_supported": ["client_credentials", "refresh_token"]}
    result = well_known_document(server, {}, ["permission-v2"])
    assert result is not None
    assert result["grant_types_supported"] == ["client_credentials", "refresh_token"]
    configured = {"grant_types_supported": ["authorization_code"]}
    result = well_known_document(server, configured, ["permission-v2"])
    assert result is not None and result["grant_types_supported"] == ["authorization_code"]


def test_signing_algs_are_relayed_in_document_order() -> None:
    fields = server_fields(
        {
            **TOKEN_ONLY,
            "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        }
    )
    result = well_known_document(fields, {}, ["client-confidential-asymmetric"])
    assert result is not None
    assert list(result)[:4] == [
        "grant_types_supported",
        "token_endpoint",
        "token_endpoint_auth_methods_supported",
        "token_endpoint_auth_signing_alg_values_supported",
    ]
    assert result["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    assert result["capabilities"] == ["client-confidential-asymmetric"]


def minimal(**smart: Any) -> dict[str, Any]:
    return {
        "server": {"public_base_url": PUBLIC_BASE},
        "upstream": {"url": UPSTREAM},
        "auth": {"jwt": [{"issuer": AS}]},
        "smart": smart,
    }


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=Path("/nonexistent"), env={})
    return info.value.problems


def test_a_complete_smart_section_is_valid() -> None:
    cfg = parse_config(minimal(**FULL, capabilities=ALL_CAPABILITIES), base_dir=Path("/x"), env={})
    assert cfg.smart.capabilities == ALL_CAPABILITIES


def test_every_start_up_problem_is_reported_at_once() -> None:
    found = problems(
        minimal(
            authorization_endpoint=f"{AS}/authorize",
            issuer=AS,
            scopes_supported=["openid", "patient/Nope.rs", "patient/*.xyz"],
            capabilities=["launch-standalone", "context-ehr-patient", "sso-openid-connect"],
        )
    )
    assert found == [
        "smart.capabilities: launch-standalone needs token_endpoint",
        "smart.capabilities: context-ehr-patient needs token_endpoint",
        "smart.capabilities: context-ehr-patient needs the launch-ehr capability",
        "smart.capabilities: sso-openid-connect needs token_endpoint",
        "smart.capabilities: sso-openid-connect needs jwks_uri",
        "smart.scopes_supported: the gateway grants nothing for patient/*.xyz, patient/Nope.rs",
        "smart.token_endpoint: required (or smart.openid_configuration_url)",
    ]


def test_issuer_and_jwks_only_with_sso() -> None:
    found = problems(minimal(token_endpoint=f"{AS}/token", issuer=AS, jwks_uri=f"{AS}/jwks"))
    assert found == [
        "smart.issuer: advertised only with the sso-openid-connect capability",
        "smart.jwks_uri: advertised only with the sso-openid-connect capability",
    ]


def test_missing_keys_may_come_from_the_authorization_server() -> None:
    data = minimal(
        openid_configuration_url=f"{AS}/.well-known/openid-configuration",
        capabilities=["launch-standalone", "sso-openid-connect"],
    )
    parse_config(data, base_dir=Path("/x"), env={})
    # ... but a contradiction in what is configured is still an error
    data["smart"]["response_types_supported"] = ["token"]
    assert problems(data) == [
        "smart.capabilities: launch-standalone needs code in response_types_supported"
    ]


def test_smart_without_any_token_validation_is_refused() -> None:
    data = minimal(token_endpoint=f"{AS}/token")
    del data["auth"]
    assert problems(data) == [
        "smart: apps are sent to an authorization server, but the gateway accepts no tokens "
        "(configure auth.jwt or auth.introspection)"
    ]


@pytest.mark.parametrize(
    ("smart", "message"),
    [
        ({"token_endpoint": "http://auth.example.test/token"}, "must use https"),
        ({"token_endpoint": "/token"}, "absolute http(s) URL"),
        ({"capabilities": ["launch-standalone", "launch-standalone"]}, "twice"),
        ({"capabilities": ["launch-sideways"]}, "Input should be"),
        ({"token_endpoint_auth_signing_alg_values_supported": []}, "must not be empty"),
        ({"scopes_supported": []}, "must not be empty"),
        ({"grant_types_supported": ["authorization code"]}, "without spaces"),
        ({"cache_ttl_s": 0}, "greater than 0"),
    ],
)
def test_smart_keys_are_validated(smart: dict[str, Any], message: str) -> None:
    found = problems(minimal(**smart))
    assert any(message in p for p in found), found


# --------------------------------------------------------------------------- the statement


def upstream_statement() -> dict[str, Any]:
    """What a legacy server says about itself: names, versions, hosts, extras."""
    search = [
        {"name": "patient", "type": "reference", "documentation": "Sekmet-specific note"},
        {"name": "code", "type": "token", "definition": f"{UPSTREAM}/SearchParameter/code"},
        {"name": "custom", "type": "string", "definition": "http://10.9.8.7:8080/sp/custom"},
    ]
    return {
        "resourceType": "CapabilityStatement",
        "id": "legacy",
        "url": f"{UPSTREAM}/metadata",
        "version": "9.9.9",
        "name": "LegacyCapabilityStatement",
        "title": "Legacy FHIR server",
        "publisher": "Legacy Corp",
        "contact": [{"telecom": [{"system": "email", "value": "ops@legacy.example"}]}],
        "text": {"status": "generated", "div": "<div>Legacy 9.9.9</div>"},
        "extension": [{"url": "http://legacy.example/ext", "valueString": "x"}],
        "status": "active",
        "date": "2026-01-02",
        "kind": "instance",
        "software": {"name": "Legacy", "version": "9.9.9"},
        "implementation": {"description": "Legacy at 10.9.8.7", "url": UPSTREAM},
        "fhirVersion": "4.0.1",
        "format": ["json", "xml"],
        "patchFormat": ["application/json-patch+json", "application/fhir+xml"],
        "messaging": [{"endpoint": [{"address": f"{UPSTREAM}/$process-message"}]}],
        "rest": [
            {
                "mode": "server",
                "documentation": "Legacy REST",
                "security": {"cors": False, "description": "none"},
                "interaction": [
                    {"code": "transaction"},
                    {"code": "batch"},
                    {"code": "history-system"},
                    {"code": "search-system"},
                ],
                "operation": [
                    {"name": "export", "definition": "http://hl7.org/fhir/OperationDefinition/x"},
                ],
                "searchParam": [{"name": "_id", "type": "token"}],
                "compartment": ["http://hl7.org/fhir/CompartmentDefinition/patient"],
                "resource": [
                    {
                        "type": "Patient",
                        "profile": "http://hl7.org/fhir/StructureDefinition/Patient",
                        "documentation": "Legacy patients",
                        "extension": [{"url": "http://legacy.example/x", "valueBoolean": True}],
                        "interaction": [{"code": "read"}, {"code": "search-type"}],
                        "conditionalRead": "full-support",
                        "searchParam": search,
                        "operation": [
                            {
                                "name": "everything",
                                "definition": f"{UPSTREAM}/OperationDefinition/everything",
                            },
                            {"name": "$match", "definition": "http://hl7.org/fhir/x"},
                        ],
                    },
                    {
                        "type": "Observation",
                        "interaction": [{"code": "read"}, {"code": "bogus"}],
                        "conditionalRead": "modified-since",
                        "operation": [{"name": "lastn", "definition": "http://x/lastn"}],
                    },
                    {"type": "NotAType", "interaction": [{"code": "read"}]},
                ],
            }
        ],
    }


def rewritten(**kw: Any) -> dict[str, Any]:
    return rewrite_capability_statement(
        upstream_statement(),
        public_base=PUBLIC_BASE,
        upstream_base=UPSTREAM,
        **kw,
    )


def test_statement_names_the_gateway_only() -> None:
    doc = rewritten()
    raw = json.dumps(doc)
    for leak in ("10.9.8.7", "Legacy", "legacy", "9.9.9", "Sekmet", "xml", "process-message"):
        assert leak not in raw, leak
    assert doc["url"] == f"{PUBLIC_BASE}/metadata"
    assert doc["implementation"]["url"] == PUBLIC_BASE
    assert doc["format"] == ["json", "application/fhir+json"]
    assert doc["patchFormat"] == ["application/json-patch+json"]
    assert doc["date"] == "2026-01-02" and doc["kind"] == "instance"
    for key in ("software", "publisher", "contact", "text", "extension", "messaging", "id"):
        assert key not in doc


def test_statement_lists_only_what_the_gateway_serves() -> None:
    rest = rewritten()["rest"][0]
    assert rest["mode"] == "server"
    assert "operation" not in rest  # no system-level operation is allowed
    assert [i["code"] for i in rest["interaction"]] == [
        "transaction",
        "batch",
        "history-system",
        "search-system",
    ]
    patient, observation = rest["resource"]
    assert patient["type"] == "Patient" and observation["type"] == "Observation"
    assert patient["operation"] == [
        {
            "name": "everything",
            "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
        }
    ]
    assert observation["operation"] == [
        {"name": "lastn", "definition": "http://hl7.org/fhir/OperationDefinition/Observation-lastn"}
    ]
    assert [i["code"] for i in observation["interaction"]] == ["read"]
    assert patient["conditionalRead"] == "not-match"  # If-Modified-Since never goes upstream
    assert observation["conditionalRead"] == "not-supported"
    assert patient["searchParam"] == [
        {"name": "patient", "type": "reference"},
        {"name": "code", "definition": f"{PUBLIC_BASE}/SearchParameter/code", "type": "token"},
        {"name": "custom", "type": "string"},  # a URL on the upstream host outside its base
    ]
    assert "documentation" not in patient and "extension" not in patient


def test_refused_search_parameters_are_removed() -> None:
    rest = rewritten(
        refused_params=lambda rtype: frozenset({"patient", "_id"} if rtype else {"_id"})
    )["rest"][0]
    assert [p["name"] for p in rest["resource"][0]["searchParam"]] == ["code", "custom"]
    assert "searchParam" not in rest


def test_a_minimal_statement_still_makes_a_valid_one() -> None:
    doc = rewrite_capability_statement(
        {"resourceType": "CapabilityStatement", "status": "active"},
        public_base=PUBLIC_BASE,
        upstream_base=UPSTREAM,
    )
    assert doc["rest"] == [{"mode": "server"}]
    assert doc["fhirVersion"] == "4.0.1" and doc["date"]


def test_security_section_mirrors_the_well_known_document() -> None:
    assert security_section(None) == {"cors": True}
    smart = {
        "authorization_endpoint": f"{AS}/authorize",
        "token_endpoint": f"{AS}/token",
        "revocation_endpoint": f"{AS}/revoke",
    }
    security = security_section(smart)
    assert security["cors"] is True
    assert security["service"][0]["coding"] == [
        {"system": SECURITY_SERVICE, "code": "SMART-on-FHIR"}
    ]
    [ext] = security["extension"]
    assert ext["url"] == OAUTH_URIS
    assert ext["extension"] == [
        {"url": "authorize", "valueUri": f"{AS}/authorize"},
        {"url": "token", "valueUri": f"{AS}/token"},
        {"url": "revoke", "valueUri": f"{AS}/revoke"},
    ]


def test_server_fields_keep_only_checked_smart_keys() -> None:
    fields = server_fields(
        {
            "issuer": AS,
            "token_endpoint": f"{AS}/token",
            "authorization_endpoint": "/relative",
            "revocation_endpoint": "http://auth.example.test/revoke",  # plain http, not loopback
            "introspection_endpoint": "http://127.0.0.1:9/introspect",
            "userinfo_endpoint": f"{AS}/me",
            "scopes_supported": ["openid", 7],
            "grant_types_supported": ["authorization_code"],
        }
    )
    assert fields == {
        "issuer": AS,
        "token_endpoint": f"{AS}/token",
        "introspection_endpoint": "http://127.0.0.1:9/introspect",
        "grant_types_supported": ["authorization_code"],
    }


# --------------------------------------------------------------------------- the TTL cache


async def test_ttl_document_serves_the_last_good_copy() -> None:
    clock = FakeClock(1000.0)
    answers: list[Any] = [{"n": 1}, UpstreamError(), {"n": 2}]
    calls = 0

    async def fetch() -> dict[str, int]:
        nonlocal calls
        calls += 1
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return dict(answer)

    doc = TtlDocument("test", fetch, 60.0, clock=clock)
    assert await doc.get() == {"n": 1}
    clock.advance(59)
    assert await doc.get() == {"n": 1} and calls == 1
    clock.advance(2)  # stale: the refresh fails, the last good copy is served
    assert await doc.get() == {"n": 1} and calls == 2
    clock.advance(5)  # no new attempt before RETRY_S
    assert await doc.get() == {"n": 1} and calls == 2
    clock.advance(6)
    assert await doc.get() == {"n": 2} and calls == 3


async def test_ttl_document_shares_one_fetch_and_may_have_none() -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    async def fetch() -> int:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        raise UpstreamError()

    doc = TtlDocument("test", fetch, 60.0, clock=FakeClock())
    waiters = [asyncio.create_task(doc.get()) for _ in range(5)]
    await started.wait()
    release.set()
    assert await asyncio.gather(*waiters) == [None] * 5
    assert calls == 1


# --------------------------------------------------------------------------- through the gateway


def smart_section(issuer: TestIssuer, **extra: Any) -> dict[str, Any]:
    return {
        "authorization_endpoint": f"{issuer.url}/authorize",
        "token_endpoint": f"{issuer.url}/token",
        "scopes_supported": ["openid", "launch/patient", "patient/*.rs", "offline_access"],
        "capabilities": [
            "launch-standalone",
            "client-public",
            "context-standalone-patient",
            "permission-patient",
            "permission-v2",
            "permission-offline",
        ],
        **extra,
    }


def serve_metadata(fake: FakeUpstream, doc: dict[str, Any] | None = None) -> None:
    body = json.dumps(doc or upstream_statement_for(fake)).encode()

    async def answer(_: web.Request, rec: Recorded) -> web.StreamResponse:
        if rec.path == "/fhir/metadata":
            return web.Response(body=body, content_type="application/fhir+json")
        return web.Response(status=500)

    fake.reply(answer)


def upstream_statement_for(fake: FakeUpstream) -> dict[str, Any]:
    raw = json.dumps(upstream_statement()).replace(UPSTREAM, fake.base_url)
    doc: dict[str, Any] = json.loads(raw)
    return doc


async def get(gw: RunningGateway, path: str, **kw: Any) -> tuple[int, Any, Any]:
    async with gw.session.get(f"{gw.base}/{path}", **kw) as resp:
        raw = await resp.read()
        return resp.status, resp.headers, (json.loads(raw) if raw else None)


async def test_well_known_document_is_json_whatever_is_accepted(
    gateway_factory: GatewayFactory, issuer: TestIssuer
) -> None:
    gw = await gateway_factory(smart=smart_section(issuer))
    for accept in (None, "text/html", "application/fhir+xml", "application/json"):
        headers = {"Accept": accept} if accept else {}
        status, h, doc = await get(gw, ".well-known/smart-configuration", headers=headers)
        assert status == 200, accept
        assert h["Content-Type"].startswith("application/json")
        assert h["Access-Control-Allow-Origin"] == "*"
    assert doc == {
        "authorization_endpoint": f"{issuer.url}/authorize",
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "token_endpoint": f"{issuer.url}/token",
        "scopes_supported": ["openid", "launch/patient", "patient/*.rs", "offline_access"],
        "capabilities": smart_section(issuer)["capabilities"],
        "code_challenge_methods_supported": ["S256"],
    }
    async with gw.session.head(f"{gw.base}/.well-known/smart-configuration") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/json")
        assert await resp.read() == b""
    async with gw.session.post(f"{gw.base}/.well-known/smart-configuration") as resp:
        assert resp.status == 405


async def test_without_a_smart_section_there_is_no_well_known_document(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    status, _, doc = await get(gateway, ".well-known/smart-configuration")
    assert status == 404
    assert doc["resourceType"] == "OperationOutcome"
    serve_metadata(fake_upstream)
    status, _, statement = await get(gateway, "metadata")
    assert status == 200
    assert statement["rest"][0]["security"] == {"cors": True}


async def test_authorization_server_document_is_merged_and_config_wins(
    gateway_factory: GatewayFactory, issuer: TestIssuer
) -> None:
    issuer.discovery_overrides = {
        "revocation_endpoint": f"{issuer.url}/revoke",
        "response_types_supported": ["code", "none"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic"],
        "scopes_supported": ["openid", "offline_access", "patient/*.rs", "patient/Bogus.rs"],
        "userinfo_endpoint": f"{issuer.url}/me",
    }
    smart = {
        "token_endpoint": f"{issuer.url}/configured-token",
        "capabilities": ["launch-standalone", "client-public", "sso-openid-connect"],
        "openid_configuration_url": f"{issuer.url}/.well-known/openid-configuration",
    }
    gw = await gateway_factory(smart=smart)
    status, _, doc = await get(gw, ".well-known/smart-configuration")
    assert status == 200
    assert doc == {
        "issuer": issuer.url,
        "jwks_uri": issuer.jwks_uri,
        "authorization_endpoint": f"{issuer.url}/authorize",
        "grant_types_supported": ["authorization_code"],
        "token_endpoint": f"{issuer.url}/configured-token",
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic"],
        "scopes_supported": ["openid", "offline_access", "patient/*.rs"],
        "response_types_supported": ["code", "none"],
        "introspection_endpoint": issuer.introspection_endpoint,
        "revocation_endpoint": f"{issuer.url}/revoke",
        "capabilities": ["launch-standalone", "client-public", "sso-openid-connect"],
        "code_challenge_methods_supported": ["S256"],
    }
    # cached: a second request does not ask the authorization server again
    fetched = issuer.requests["/.well-known/openid-configuration"]
    await get(gw, ".well-known/smart-configuration")
    assert issuer.requests["/.well-known/openid-configuration"] == fetched


async def test_capabilities_the_authorization_server_contradicts_are_dropped(
    gateway_factory: GatewayFactory, issuer: TestIssuer
) -> None:
    issuer.discovery_overrides = {"token_endpoint_auth_methods_supported": ["client_secret_basic"]}
    smart = {
        "capabilities": ["launch-standalone", "client-public", "client-confidential-symmetric"],
        "openid_configuration_url": f"{issuer.url}/.well-known/openid-configuration",
    }
    gw = await gateway_factory(smart=smart)
    _, _, doc = await get(gw, ".well-known/smart-configuration")
    assert doc["capabilities"] == ["launch-standalone", "client-confidential-symmetric"]
    assert "issuer" not in doc and "jwks_uri" not in doc  # no sso-openid-connect


async def test_authorization_server_down_from_the_start_is_a_503(
    gateway_factory: GatewayFactory, issuer: TestIssuer, fake_upstream: FakeUpstream
) -> None:
    smart = {
        "capabilities": ["launch-standalone"],
        "openid_configuration_url": f"{issuer.url}/.well-known/openid-configuration",
    }
    gw = await gateway_factory(smart=smart)
    issuer.available = False
    status, headers, doc = await get(gw, ".well-known/smart-configuration")
    assert status == 503 and headers["Retry-After"] == "10"
    assert doc["issue"][0]["code"] == "transient"
    serve_metadata(fake_upstream)
    status, _, _ = await get(gw, "metadata")
    assert status == 503


async def test_metadata_is_rewritten_and_points_at_the_well_known_endpoints(
    gateway_factory: GatewayFactory, issuer: TestIssuer, fake_upstream: FakeUpstream
) -> None:
    serve_metadata(fake_upstream)
    gw = await gateway_factory(smart=smart_section(issuer, revocation_endpoint=f"{AS}/revoke"))
    status, headers, doc = await get(
        gw, "metadata", headers={"Accept": "application/fhir+json", "Origin": "https://x.test"}
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/fhir+json")
    assert headers["Access-Control-Allow-Origin"] == "*"
    _, _, well_known = await get(gw, ".well-known/smart-configuration")
    security = doc["rest"][0]["security"]
    assert security["cors"] is True
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris == {
        "authorize": well_known["authorization_endpoint"],
        "token": well_known["token_endpoint"],
        "revoke": f"{AS}/revoke",
    }
    raw = json.dumps(doc)
    assert fake_upstream.base_url.split("//")[1] not in raw
    assert "Legacy" not in raw
    assert doc["implementation"]["url"] == PUBLIC_BASE
    # XML is still refused (406), as for every FHIR resource
    status, _, _ = await get(gw, "metadata", headers={"Accept": "application/fhir+xml"})
    assert status == 406
    [recorded] = fake_upstream.requests
    assert recorded.raw_target == "/fhir/metadata"
    assert recorded.headers["Accept"] == "application/fhir+json"


async def test_metadata_survives_the_upstream_going_down(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    gw = await gateway_factory(smart=smart_section(issuer, cache_ttl_s=0.2))
    fake_upstream.reply_json({"resourceType": "Bundle", "type": "searchset"})  # not a statement
    status, headers, _ = await get(gw, "metadata")
    assert status == 503 and headers["Retry-After"] == "10"
    statement = upstream_statement_for(fake_upstream)
    serve_metadata(fake_upstream, statement)
    await asyncio.sleep(0.25)  # a failed refresh waits min(RETRY_S, cache_ttl_s)
    status, _, first = await get(gw, "metadata")
    assert status == 200
    changed = copy.deepcopy(statement)
    changed["date"] = "2026-02-03"
    serve_metadata(fake_upstream, changed)
    status, _, cached = await get(gw, "metadata")
    assert cached == first  # within the TTL: not fetched again
    await asyncio.sleep(0.25)
    status, _, fresh = await get(gw, "metadata")
    assert fresh["date"] == "2026-02-03"
    fake_upstream.reply_json({"resourceType": "OperationOutcome"}, status=500)
    await asyncio.sleep(0.25)
    status, _, last_good = await get(gw, "metadata")
    assert status == 200 and last_good == fresh
