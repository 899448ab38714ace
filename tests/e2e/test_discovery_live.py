"""Discovery against the real parts: what apps read before they have a token.

The well-known document merges the gateway's ``smart`` section with the real authorization
server's own discovery document; ``metadata`` is the real upstream's statement, rewritten.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from tests.e2e.stack import ADVERTISED, SmartStack, get_json


def fetch(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)  # loopback URLs only
    with urllib.request.urlopen(request, timeout=30) as resp:
        return resp.status, dict(resp.headers), resp.read()


def test_well_known_document_points_at_the_real_authorization_server(
    smart_stack: SmartStack,
) -> None:
    doc = get_json(f"{smart_stack.base}/.well-known/smart-configuration")
    server = get_json(f"{smart_stack.issuer}/.well-known/openid-configuration")
    # every one the merged document backs; the ones the real AS contradicts are dropped
    assert doc["capabilities"] == ADVERTISED
    assert "client_credentials" in doc["grant_types_supported"]
    assert doc["code_challenge_methods_supported"] == ["S256"]
    for key in (
        "issuer",
        "jwks_uri",
        "authorization_endpoint",
        "token_endpoint",
        "introspection_endpoint",
        "revocation_endpoint",
    ):
        assert doc[key] == server[key], key
    assert doc["management_endpoint"] == f"{smart_stack.issuer}/manage"  # from the config
    assert {"launch", "launch/patient", "offline_access", "patient/*.rs"} <= set(
        doc["scopes_supported"]
    )
    for value in doc.values():
        if isinstance(value, str):
            assert urlsplit(value).scheme == "http" and urlsplit(value).hostname, value


def test_well_known_document_is_json_for_any_accept_header(smart_stack: SmartStack) -> None:
    url = f"{smart_stack.base}/.well-known/smart-configuration"
    status, headers, body = fetch(url, {"Accept": "text/html", "Origin": "https://any.example"})
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert json.loads(body)["token_endpoint"].startswith(smart_stack.issuer)


def test_metadata_is_the_upstream_statement_rewritten(smart_stack: SmartStack) -> None:
    status, headers, body = fetch(f"{smart_stack.base}/metadata", {})
    assert status == 200
    assert headers["Content-Type"].startswith("application/fhir+json")
    doc: dict[str, Any] = json.loads(body)
    well_known = get_json(f"{smart_stack.base}/.well-known/smart-configuration")
    upstream = urlsplit(smart_stack.upstream.base_url)
    text = body.decode()
    assert upstream.netloc not in text
    assert "sekmet" not in text.lower()
    assert doc["url"] == f"{smart_stack.base}/metadata"
    assert doc["implementation"]["url"] == smart_stack.base
    assert "software" not in doc and "messaging" not in doc
    rest = doc["rest"][0]
    security = rest["security"]
    assert security["cors"] is True
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris == {
        "authorize": well_known["authorization_endpoint"],
        "token": well_known["token_endpoint"],
        "introspect": well_known["introspection_endpoint"],
        "revoke": well_known["revocation_endpoint"],
        "manage": well_known["management_endpoint"],
    }
    operations = {
        (r["type"], op["name"]) for r in rest["resource"] for op in r.get("operation", [])
    }
    assert operations <= {("Patient", "everything"), ("Observation", "lastn")}
    assert "operation" not in rest
