"""A backend service: client_credentials with ``system/*.rs``, then searches across patients.

No user and no patient context: the token carries system scopes only, so the gateway does not
confine the searches to one compartment.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import requests

from tests.e2e.stack import BACKEND, SmartStack, get_json


def claims(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def test_backend_service_searches_across_patients(smart_stack: SmartStack) -> None:
    started = time.monotonic()
    well_known = get_json(f"{smart_stack.base}/.well-known/smart-configuration")
    assert "client_credentials" in well_known["grant_types_supported"]
    answer = requests.post(
        well_known["token_endpoint"],
        data={"grant_type": "client_credentials", "scope": "system/*.rs"},
        auth=BACKEND,
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    token = answer.json()["access_token"]
    payload = claims(token)
    assert payload["aud"] == smart_stack.base
    assert payload["scope"] == "system/*.rs"
    assert "patient" not in payload and "fhirUser" not in payload
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}

    offset = smart_stack.upstream_log_offset()
    patients = requests.get(f"{smart_stack.base}/Patient?_count=50", headers=headers, timeout=30)
    assert patients.status_code == 200
    found = {e["resource"]["id"] for e in patients.json()["entry"]}
    assert {smart_stack.patient_id(i) for i in (1, 2, 3)} <= found

    ids = [smart_stack.patient_id(i) for i in (1, 2)]
    form = {"patient": ",".join(f"Patient/{i}" for i in ids), "_count": "200"}
    labs = requests.post(
        f"{smart_stack.base}/Observation/_search",
        data={**form, "category": "laboratory"},
        headers=headers,
        timeout=30,
    )
    assert labs.status_code == 200
    subjects = {e["resource"]["subject"]["reference"] for e in labs.json()["entry"]}
    assert subjects == {f"Patient/{i}" for i in ids}

    searches = [
        (m, t) for m, t in smart_stack.upstream_requests(offset) if "_search" in t or "?" in t
    ]
    assert ("POST", "/fhir/Observation/_search") in searches
    # the Patient search carries no PHI parameter: it may travel as a GET
    assert all(m == "POST" for m, t in searches if "Observation" in t), searches

    # a token that fails verification is refused, whatever it claims
    tampered = requests.get(
        f"{smart_stack.base}/Patient?_count=1",
        headers={"Authorization": f"Bearer {token}x"},
        timeout=30,
    )
    assert tampered.status_code == 401
    print(f"backend service: {time.monotonic() - started:.1f} s")
