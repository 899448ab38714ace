"""A server-side SMART app (Python ``fhirclient`` 4.x, PyPI) through the gateway.

The client finds the authorization server only through ``{base}/metadata`` (the ``oauth-uris``
extension), adds ``launch/patient`` to its scope, sends ``aud`` (not ``resource``) and PKCE
S256, and authenticates with its secret at the token endpoint (a confidential client). The
browser is replaced by following the redirects: the authorization server's headless
interaction logs the test patient in from ``login_hint`` and approves.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any
from urllib.parse import parse_qs, quote, urljoin, urlsplit

import pytest
import requests
from fhirclient import client as smart
from fhirclient.models.condition import Condition
from fhirclient.models.observation import Observation
from fhirclient.server import FHIRPermissionDeniedException

from tests.e2e.expectations import assert_patient_facing_view, summary
from tests.e2e.stack import PYTHON_APP, SmartStack


def authorize(stack: SmartStack, login_hint: str, scope: str) -> tuple[smart.FHIRClient, float]:
    """Complete authorization code + PKCE for the Python app; (client, seconds taken)."""
    started = time.monotonic()
    client = smart.FHIRClient(
        settings={
            "app_id": PYTHON_APP[0],
            "app_secret": PYTHON_APP[1],
            "api_base": stack.base,
            "redirect_uri": stack.python_redirect,
            "scope": scope,
        }
    )
    url = f"{client.authorize_url}&login_hint={quote(login_hint)}"  # reads {base}/metadata
    query = parse_qs(urlsplit(url).query)
    assert query["aud"] == [stack.base]
    assert "resource" not in query  # the server must default the resource to the gateway
    assert query["code_challenge_method"] == ["S256"]
    assert "launch/patient" in query["scope"][0].split()
    with requests.Session() as browser:  # keeps the authorization server's cookies
        for _ in range(10):
            answer = browser.get(url, allow_redirects=False, timeout=30)
            assert answer.status_code in (302, 303), (answer.status_code, answer.text[:500])
            url = urljoin(url, answer.headers["Location"])
            if url.startswith(stack.python_redirect):
                break
        else:
            pytest.fail("the authorization server never redirected back to the app")
    client.handle_callback(url)
    return client, time.monotonic() - started


def jose_part(token: str, index: int) -> dict[str, Any]:
    """The decoded JOSE header (0) or claims (1) of a JWT, unverified (the gateway verifies)."""
    part = token.split(".")[index]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def subjects(resources: list[Any]) -> set[str]:
    return {r.subject.reference for r in resources}


def test_python_app_authorizes_reads_and_searches(smart_stack: SmartStack) -> None:
    pid = smart_stack.patient_id(2)  # a patient with a sensitive Condition and preliminary labs
    offset = smart_stack.upstream_log_offset()
    client, seconds = authorize(
        smart_stack, f"Patient/{pid}", "openid fhirUser offline_access patient/*.rs"
    )
    assert client.ready
    assert client.patient_id == pid  # from the token response's `patient`
    token = client.server.auth.access_token
    header = jose_part(token, 0)
    assert (header["alg"], header["typ"]) == ("RS256", "at+jwt")
    assert header["kid"].startswith("e2e-")
    claims = jose_part(token, 1)
    assert claims["aud"] == smart_stack.base
    assert claims["patient"] == pid
    assert claims["fhirUser"] == f"Patient/{pid}"
    assert claims["scope"] == "patient/*.rs"

    patient = client.patient  # GET Patient/{id} with the bearer token
    assert patient is not None and patient.id == pid

    search = Observation.where({"patient": pid, "_count": "10"})
    bundles = list(search.perform_iter(client.server))
    observations = [e.resource for b in bundles for e in b.entry or []]
    assert len(bundles) > 1 and observations
    assert subjects(observations) == {f"Patient/{pid}"}
    for bundle in bundles:
        for link in bundle.link or []:
            assert link.url.startswith(f"{smart_stack.base}?_cursor=") or link.relation == "self"

    conditions = list(Condition.where({"patient": pid}).perform_resources_iter(client.server))
    assert subjects(conditions) <= {f"Patient/{pid}"}
    received = [patient, *observations, *conditions]
    assert_patient_facing_view(
        smart_stack.upstream.patient(2), [summary(r.as_json()) for r in received]
    )

    # another patient is out of reach: a search naming them is refused (403) ...
    other = smart_stack.patient_id(1)
    with pytest.raises(FHIRPermissionDeniedException) as refused:
        list(Observation.where({"patient": other}).perform_iter(client.server))
    assert refused.value.response.status_code == 403
    # ... and a read of their record looks like a record that does not exist (404)
    answer = client.server.session.get(
        f"{smart_stack.base}/Patient/{other}",
        headers={"Authorization": f"Bearer {client.server.auth.access_token}"},
        timeout=30,
    )
    assert answer.status_code == 404

    # offline_access: the refresh token gets a new access token that works
    old = client.server.auth.access_token
    assert client.server.auth.refresh_token
    assert client.reauthorize()
    assert client.server.auth.access_token != old
    observations_again = list(
        Observation.where({"patient": pid, "_count": "50"}).perform_resources_iter(client.server)
    )
    assert subjects(observations_again) == {f"Patient/{pid}"}

    searches = [
        (m, t) for m, t in smart_stack.upstream_requests(offset) if "_search" in t or "?" in t
    ]
    assert ("POST", "/fhir/Observation/_search") in searches
    assert all(m == "POST" and "?" not in t for m, t in searches), searches
    print(f"python app: authorized in {seconds:.1f} s")
