"""A browser SMART app (JS ``fhirclient`` 2.x) in headless Chromium, through the gateway.

The app page (``tests/e2e/app``) is served on its own loopback origin. One Chromium runs three
launches, each in a fresh browser context:

- **standalone**: the page is opened with ``iss`` = the gateway's base; the client reads
  ``{base}/.well-known/smart-configuration``, sends the user to the real authorization server
  (code + PKCE S256; the test patient logs in through ``login_hint``), exchanges the code, then
  reads the patient, pages through the patient's Observations and runs two POST ``_search``es;
- **EHR launch**: the same page opened by an "EHR" with ``iss`` and ``launch``; the
  authorization server resolves the launch to patient 2 and a clinician, the gateway only
  sees the resulting token;
- **other origin**: the same page on an origin that is not in ``cors.allowed_origins``: discovery
  and the token exchange work (both are the authorization server's or public), the first FHIR
  call is blocked by the browser's CORS check.

Screenshots of each end state go to ``test-artifacts/``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

import pytest

from gateway.demo import PatientSummary
from tests.e2e.expectations import assert_patient_facing_view
from tests.e2e.stack import ARTIFACTS, CLINICIAN, SmartStack

Run = dict[str, Any]


@pytest.fixture(scope="module")
def browser_run(smart_stack: SmartStack) -> Run:
    base = smart_stack.base
    p1 = smart_stack.patient_id(1)
    standalone = urlencode({"iss": base, "login_hint": f"Patient/{p1}"}, quote_via=quote)
    ehr = urlencode({"iss": base, "launch": "ehr-launch-1"}, quote_via=quote)
    offset = smart_stack.upstream_log_offset()
    run = smart_stack.run_browser(
        [
            {
                "name": "standalone",
                "url": f"{smart_stack.app_origin}/launch.html?{standalone}",
                "screenshot": str(ARTIFACTS / "smart-app-standalone.png"),
            },
            {
                "name": "ehr",
                "url": f"{smart_stack.app_origin}/launch.html?{ehr}",
                "screenshot": str(ARTIFACTS / "smart-app-ehr-launch.png"),
            },
            {
                "name": "other-origin",
                "url": f"{smart_stack.other_origin}/launch.html?{standalone}",
                "screenshot": str(ARTIFACTS / "smart-app-other-origin.png"),
            },
        ]
    )
    run["upstream_requests"] = smart_stack.upstream_requests(offset)
    print(f"browser flows: {run['seconds']} s", {k: v["ms"] for k, v in run["scenarios"].items()})
    return run


def outcome(run: Run, name: str) -> dict[str, Any]:
    scenario = run["scenarios"][name]
    assert scenario["error"] is None, (scenario["error"], scenario["console"], scenario["finalUrl"])
    result: dict[str, Any] = scenario["result"]
    return result


def entries(result: dict[str, Any]) -> list[dict[str, Any]]:
    pages = [e for page in result["pages"] for e in page["entries"]]
    return pages + result["labs"] + result["conditions"]


def assert_app_results(result: dict[str, Any], patient: PatientSummary) -> None:
    """The page's own results are coherent; what it received is checked by the shared list."""
    pid = patient["patient_id"]
    assert result["patient"] == {"resourceType": "Patient", "id": pid}
    observations = [e for page in result["pages"] for e in page["entries"]]
    assert {e["resourceType"] for e in observations} == {"Observation"}
    ids = [e["id"] for e in observations]
    assert len(ids) == len(set(ids)), "a page repeated an entry"
    assert {e["resourceType"] for e in result["labs"]} == {"Observation"}
    assert all("laboratory" in e["category"] for e in result["labs"])
    assert {e["resourceType"] for e in result["conditions"]} <= {"Condition"}
    assert_patient_facing_view(patient, [result["patient"], *entries(result)])


def test_standalone_launch_reads_the_patients_data(
    browser_run: Run, smart_stack: SmartStack
) -> None:
    result = outcome(browser_run, "standalone")
    p1 = smart_stack.patient_id(1)
    assert result["steps"] == ["token", "patient", "observations", "post-search"]
    assert result["serverUrl"] == smart_stack.base
    assert result["patientId"] == result["tokenPatient"] == p1
    assert result["fhirUser"] == f"Patient/{p1}"
    assert "patient/*.rs" in result["scope"].split()
    assert result["refreshToken"] is True  # offline_access
    assert_app_results(result, smart_stack.upstream.patient(1))


def test_observations_are_paged_with_gateway_cursors(
    browser_run: Run, smart_stack: SmartStack
) -> None:
    pages = outcome(browser_run, "standalone")["pages"]
    assert len(pages) > 1, "expected more than one page of Observations"
    for page in pages[:-1]:
        [next_url] = [link["url"] for link in page["links"] if link["relation"] == "next"]
        assert next_url.startswith(f"{smart_stack.base}?_cursor=")
        assert smart_stack.patient_id(1) not in next_url


def test_ehr_launch_gets_the_patient_the_launch_names(
    browser_run: Run, smart_stack: SmartStack
) -> None:
    result = outcome(browser_run, "ehr")
    p2 = smart_stack.patient_id(2)
    assert result["steps"] == ["token", "patient", "observations", "post-search"]
    assert result["patientId"] == result["tokenPatient"] == p2
    assert result["fhirUser"] == CLINICIAN
    assert "patient/*.rs" in result["scope"].split()
    assert result["refreshToken"] is False  # no offline_access asked for
    assert_app_results(result, smart_stack.upstream.patient(2))


def test_the_browser_talked_to_the_gateway_and_the_authorization_server_only(
    browser_run: Run, smart_stack: SmartStack
) -> None:
    requests = browser_run["scenarios"]["standalone"]["requests"]
    origins = {r["url"].split("/", 3)[2] for r in requests}
    allowed = {
        f"127.0.0.1:{smart_stack.gateway_port}",
        f"127.0.0.1:{smart_stack.as_port}",
        f"127.0.0.1:{smart_stack.app_port}",
    }
    assert origins <= allowed
    urls = [(r["method"], r["url"]) for r in requests]
    assert ("GET", f"{smart_stack.base}/.well-known/smart-configuration") in urls
    assert ("POST", f"{smart_stack.issuer}/token") in urls
    assert ("POST", f"{smart_stack.base}/Observation/_search") in urls
    assert not [r for r in requests if r.get("failure")], "a request failed"


def test_an_origin_that_is_not_allowed_fails_with_a_cors_error(
    browser_run: Run, smart_stack: SmartStack
) -> None:
    scenario = browser_run["scenarios"]["other-origin"]
    result = scenario["result"]
    assert result is not None, scenario
    assert result["origin"] == smart_stack.other_origin
    assert result["steps"] == ["token"]  # discovery and the token exchange worked
    # the fetch rejects without a status (the page cannot tell why); the console says CORS
    assert result["error"] in ("Failed to fetch", "Network request failed"), result["error"]
    blocked = [line for line in scenario["console"] if "CORS policy" in line]
    assert blocked, scenario["console"]
    assert smart_stack.base in blocked[0]
    failed = [r for r in scenario["requests"] if r.get("failure")]
    assert failed and all(r["url"].startswith(smart_stack.base) for r in failed)


def test_searches_reached_the_upstream_as_post_search(browser_run: Run) -> None:
    """PHI stays out of upstream URLs: the patient's searches (including the paging the cursors
    stand for) arrived as POST ``_search``, never as a GET with a query string."""
    upstream = browser_run["upstream_requests"]
    searches = [(m, t) for m, t in upstream if "_search" in t or "?" in t]
    assert ("POST", "/fhir/Observation/_search") in searches
    assert ("POST", "/fhir/Condition/_search") in searches
    assert all(m == "POST" and "?" not in t for m, t in searches), searches


def test_screenshots_were_saved(browser_run: Run) -> None:
    for name in ("standalone", "ehr-launch", "other-origin"):
        path = ARTIFACTS / f"smart-app-{name}.png"
        assert path.is_file() and path.stat().st_size > 1000, path
