"""``verify_document`` / ``ResourceCheck``: every resource that comes back is judged.

Matches, includes, contained resources, history versions, batch-response entries and stored
Bundles; ``Bundle.total`` per decision 5; a single resource the caller may not see is a 404
(decision 3); nothing marks that something was hidden (decision 6).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest

from gateway.access.authorize import ALL_LEVELS, UNCONFINED_LEVELS, Access
from gateway.access.decision import Verify
from gateway.access.narrowing import UNPROVEN_REASON, unproven_searchset
from gateway.access.verify import ResourceCheck, verify_document
from gateway.errors import NotFound
from gateway.smart.scopes import parse_scopes

BASES = ("https://gw.example.org/fhir", "http://upstream.internal:8080/fhir")
CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
LAB_SCOPE = f"patient/Observation.rs?category={CAT}|laboratory"


def conf(scopes: str = "patient/*.rs", patient: str = "A") -> Verify:
    return Access(parse_scopes(scopes), patient, ALL_LEVELS).verify()


def unconf(scopes: str = "user/*.rs") -> Verify:
    return Access(parse_scopes(scopes), None, UNCONFINED_LEVELS).verify()


def obs(oid: str, patient: str, category: str = "laboratory", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": [{"coding": [{"system": CAT, "code": category}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        "subject": {"reference": f"Patient/{patient}"},
        **extra,
    }


def patient(pid: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": f"Fam{pid}"}]}


PRACTITIONER = {"resourceType": "Practitioner", "id": "pr1", "name": [{"family": "Doc"}]}


def entry(resource: Any, mode: str | None = "match") -> dict[str, Any]:
    out: dict[str, Any] = {"resource": resource}
    if isinstance(resource, dict) and "resourceType" in resource and "id" in resource:
        out["fullUrl"] = f"{BASES[0]}/{resource['resourceType']}/{resource['id']}"
    if mode is not None:
        out["search"] = {"mode": mode}
    return out


def searchset(*entries: dict[str, Any], total: int | None = None, next_link: bool = False):
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "entry": list(entries)}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = [{"relation": "self", "url": f"{BASES[0]}/Observation"}]
    if next_link:
        bundle["link"].append({"relation": "next", "url": f"{BASES[0]}/cursor"})
    return bundle


def ids(bundle: dict[str, Any]) -> list[str]:
    return [
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if "resource" in e
    ]


# --------------------------------------------------------------------------- searchsets


def test_searchset_drops_other_patients_matches() -> None:
    doc = searchset(entry(obs("o1", "A")), entry(obs("o2", "B")), entry(obs("o3", "A")))
    assert verify_document(doc, conf(), BASES) is True
    assert ids(doc) == ["Observation/o1", "Observation/o3"]
    assert "Patient/B" not in repr(doc)


def test_searchset_with_nothing_to_drop_is_unchanged() -> None:
    doc = searchset(entry(obs("o1", "A")), total=1)
    before = copy.deepcopy(doc)
    assert verify_document(doc, conf(), BASES) is False
    assert doc == before


def test_absolute_known_base_reference_counts_but_foreign_host_does_not() -> None:
    mine = obs("o1", "A")
    mine["subject"] = {"reference": f"{BASES[1]}/Patient/A"}
    foreign = obs("o2", "A")
    foreign["subject"] = {"reference": "https://evil.example/fhir/Patient/A"}
    doc = searchset(entry(mine), entry(foreign))
    verify_document(doc, conf(), BASES)
    assert ids(doc) == ["Observation/o1"]


def test_included_patient_b_is_dropped_and_patient_a_kept() -> None:
    doc = searchset(
        entry(obs("o1", "A", performer=[{"reference": "Patient/B"}])),
        entry(patient("A"), "include"),
        entry(patient("B"), "include"),
    )
    verify_document(doc, conf(), BASES)
    assert ids(doc) == ["Observation/o1", "Patient/A"]


def test_included_practitioner_kept_when_granted() -> None:
    doc = searchset(entry(obs("o1", "A")), entry(PRACTITIONER, "include"))
    verify_document(doc, conf(), BASES)
    assert ids(doc) == ["Observation/o1", "Practitioner/pr1"]


def test_included_practitioner_dropped_when_only_observation_granted() -> None:
    doc = searchset(entry(obs("o1", "A")), entry(copy.deepcopy(PRACTITIONER), "include"))
    verify_document(doc, conf("patient/Observation.rs"), BASES)
    assert ids(doc) == ["Observation/o1"]


def test_revinclude_of_other_types_checked_like_matches() -> None:
    provenance_b = {
        "resourceType": "Provenance",
        "id": "pv1",
        "target": [{"reference": "Observation/o9"}],
        "patient": {"reference": "Patient/B"},
    }
    doc = searchset(entry(patient("A")), entry(provenance_b, "include"))
    verify_document(doc, conf(), BASES)
    assert ids(doc) == ["Patient/A"]


def test_contained_patients_removed_for_confined_caller() -> None:
    o = obs("o1", "A")
    o["contained"] = [
        {"resourceType": "Patient", "id": "p1", "name": [{"family": "Other"}]},
        {"resourceType": "Medication", "id": "m1"},
        {"resourceType": "Observation", "id": "c2", "subject": {"reference": "Patient/B"}},
    ]
    doc = searchset(entry(o))
    assert verify_document(doc, conf(), BASES) is True
    assert doc["entry"][0]["resource"]["contained"] == [{"resourceType": "Medication", "id": "m1"}]


def test_contained_patients_kept_for_unconfined_caller() -> None:
    o = obs("o1", "A")
    o["contained"] = [{"resourceType": "Patient", "id": "p1"}]
    doc = searchset(entry(o))
    assert verify_document(doc, unconf(), BASES) is False
    assert doc["entry"][0]["resource"]["contained"] == [{"resourceType": "Patient", "id": "p1"}]


def test_unconfined_caller_sees_every_patient_but_only_granted_types() -> None:
    doc = searchset(entry(obs("o1", "A")), entry(obs("o2", "B")), entry(patient("B"), "include"))
    verify_document(doc, unconf("user/Observation.rs"), BASES)
    assert ids(doc) == ["Observation/o1", "Observation/o2"]


def test_resource_without_provable_patient_link_is_hidden_when_confined() -> None:
    for subject in ({"reference": "#p1"}, {"identifier": {"value": "mrn"}}, {"display": "A"}):
        o = obs("o1", "A")
        o["subject"] = subject
        doc = searchset(entry(o))
        verify_document(doc, conf(), BASES)
        assert "entry" not in doc, subject


# --------------------------------------------------------------------------- total (decision 5)


def test_total_removed_when_entries_dropped_and_next_link_exists() -> None:
    doc = searchset(entry(obs("o1", "A")), entry(obs("o2", "B")), total=57, next_link=True)
    verify_document(doc, conf(), BASES)
    assert "total" not in doc


def test_total_set_to_visible_matches_on_single_page() -> None:
    doc = searchset(
        entry(obs("o1", "A")),
        entry(obs("o2", "B")),
        entry(obs("o3", "A")),
        entry(patient("A"), "include"),
        total=3,
    )
    verify_document(doc, conf(), BASES)
    assert doc["total"] == 2  # includes are not counted


def test_total_kept_when_nothing_dropped() -> None:
    doc = searchset(entry(obs("o1", "A")), total=40, next_link=True)
    verify_document(doc, conf(), BASES)
    assert doc["total"] == 40


def test_suppress_total_without_drops() -> None:
    doc = searchset(entry(obs("o1", "A")), total=40, next_link=True)
    assert verify_document(doc, conf(), BASES, suppress_total=True) is True
    assert "total" not in doc
    single = searchset(entry(obs("o1", "A")), total=40)
    verify_document(single, conf(), BASES, suppress_total=True)
    assert single["total"] == 1


def test_count_only_answer_under_suppress_total() -> None:
    doc = {"resourceType": "Bundle", "type": "searchset", "total": 12}
    verify_document(doc, conf(), BASES, suppress_total=True)
    assert doc["total"] == 0


def test_all_entries_dropped_leaves_no_entry_and_no_marker() -> None:
    doc = searchset(entry(obs("o2", "B")), total=1)
    verify_document(doc, conf(), BASES)
    assert "entry" not in doc
    assert doc["total"] == 0
    # decision 6: no OperationOutcome or tag tells the caller that something was withheld
    assert set(doc) == {"resourceType", "type", "total", "link"}


# --------------------------------------------------------------------------- history


def history(*versions: dict[str, Any], total: int | None = None) -> dict[str, Any]:
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [
            {"resource": v, "request": {"method": "PUT", "url": f"Observation/{v['id']}"}}
            for v in versions
        ],
    }
    if total is not None:
        bundle["total"] = total
    return bundle


def test_history_version_repointed_to_b_dropped() -> None:
    v1 = obs("o1", "A", meta={"versionId": "1"})
    v2 = obs("o1", "B", meta={"versionId": "2"})
    v3 = obs("o1", "A", meta={"versionId": "3"})
    doc = history(v3, v2, v1)
    assert verify_document(doc, conf(), BASES) is True
    assert [e["resource"]["meta"]["versionId"] for e in doc["entry"]] == ["3", "1"]


def test_history_total_never_counts_withheld_versions() -> None:
    """BUG (decision 5): ``filter_bundle`` fixes ``total`` for searchsets only, so a history
    Bundle keeps the upstream's count of versions the caller may not see (here: that
    Observation o1 once belonged to another patient)."""
    doc = history(
        obs("o1", "A", meta={"versionId": "3"}),
        obs("o1", "B", meta={"versionId": "2"}),
        obs("o1", "A", meta={"versionId": "1"}),
        total=3,
    )
    verify_document(doc, conf(), BASES)
    assert doc.get("total", 2) == 2


# --------------------------------------------------------------------------- batch-response


def test_batch_response_entry_replaced_by_404_in_position() -> None:
    doc = {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [
            {"resource": obs("o1", "A"), "response": {"status": "200 OK"}},
            {"resource": obs("o2", "B"), "response": {"status": "200 OK"}},
            {"response": {"status": "201 Created", "location": "Observation/o3/_history/1"}},
            {"resource": patient("B"), "response": {"status": "200 OK"}},
        ],
    }
    assert verify_document(doc, conf(), BASES) is True
    assert len(doc["entry"]) == 4
    assert doc["entry"][0]["resource"]["id"] == "o1"
    assert doc["entry"][1] == {"response": {"status": "404 Not Found"}}
    assert doc["entry"][2]["response"]["status"] == "201 Created"
    assert doc["entry"][3] == {"response": {"status": "404 Not Found"}}


def test_search_inside_batch_response_is_filtered_too() -> None:
    inner = searchset(entry(obs("o1", "A")), entry(obs("o2", "B")), total=2)
    doc = {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [{"resource": inner, "response": {"status": "200 OK"}}],
    }
    verify_document(doc, conf(), BASES)
    assert ids(doc["entry"][0]["resource"]) == ["Observation/o1"]
    assert doc["entry"][0]["resource"]["total"] == 1


# --------------------------------------------------------------------------- single resources


def test_single_read_of_b_observation_is_not_found() -> None:
    with pytest.raises(NotFound):
        verify_document(obs("o2", "B"), conf(), BASES)


def test_single_read_of_patient_b_is_not_found() -> None:
    with pytest.raises(NotFound):
        verify_document(patient("B"), conf(), BASES)


def test_single_read_of_a_observation_passes_unchanged() -> None:
    doc = obs("o1", "A")
    assert verify_document(doc, conf(), BASES) is False


def test_single_read_of_ungranted_type_is_not_found() -> None:
    with pytest.raises(NotFound):
        verify_document(copy.deepcopy(PRACTITIONER), conf("patient/Observation.rs"), BASES)


def test_operation_outcome_passes() -> None:
    oo = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "x"}]}
    assert verify_document(oo, conf("patient/Observation.rs"), BASES) is False


def test_single_read_stripping_contained_patient_reports_change() -> None:
    doc = obs("o1", "A", contained=[{"resourceType": "Patient", "id": "p"}])
    assert verify_document(doc, conf(), BASES) is True
    assert "contained" not in doc


# --------------------------------------------------------------------------- granular scopes


def test_granular_scope_lab_visible_vitals_not() -> None:
    verify = conf(LAB_SCOPE)
    doc = searchset(entry(obs("lab", "A")), entry(obs("vs", "A", category="vital-signs")), total=2)
    verify_document(doc, verify, BASES)
    assert ids(doc) == ["Observation/lab"]
    assert doc["total"] == 1
    with pytest.raises(NotFound):
        verify_document(obs("vs", "A", category="vital-signs"), verify, BASES)
    verify_document(obs("lab", "A"), verify, BASES)


def test_granular_scope_lab_of_patient_b_still_hidden() -> None:
    with pytest.raises(NotFound):
        verify_document(obs("lab", "B"), conf(LAB_SCOPE), BASES)


def test_granular_scope_with_wrong_system_hidden() -> None:
    o = obs("o1", "A")
    o["category"] = [{"coding": [{"system": "http://other", "code": "laboratory"}]}]
    with pytest.raises(NotFound):
        verify_document(o, conf(LAB_SCOPE), BASES)


def test_granular_user_scope_for_unconfined_caller() -> None:
    verify = unconf(f"user/Observation.rs?category={CAT}|laboratory")
    doc = searchset(entry(obs("lab", "B")), entry(obs("vs", "B", category="vital-signs")))
    verify_document(doc, verify, BASES)
    assert ids(doc) == ["Observation/lab"]


# --------------------------------------------------------------------------- stored Bundles


def test_stored_document_bundle_entries_filtered() -> None:
    doc = {
        "resourceType": "Bundle",
        "id": "doc1",
        "type": "document",
        "entry": [
            {"fullUrl": "urn:uuid:1", "resource": obs("o1", "A")},
            {"fullUrl": "urn:uuid:2", "resource": obs("o2", "B")},
            {"fullUrl": "urn:uuid:3", "resource": patient("B")},
        ],
    }
    assert verify_document(doc, conf(), BASES) is True
    assert ids(doc) == ["Observation/o1"]


def test_stored_bundle_needs_a_bundle_scope() -> None:
    doc = {"resourceType": "Bundle", "id": "c1", "type": "collection", "entry": []}
    with pytest.raises(NotFound):
        verify_document(doc, conf("patient/Observation.rs"), BASES)


def test_stored_collection_with_only_withheld_entries() -> None:
    doc = {
        "resourceType": "Bundle",
        "id": "c1",
        "type": "collection",
        "entry": [{"resource": obs("o2", "B")}],
    }
    searchset_doc = searchset(entry(doc))
    verify_document(searchset_doc, conf(), BASES)
    assert searchset_doc["entry"][0]["resource"] == {
        "resourceType": "Bundle",
        "id": "c1",
        "type": "collection",
    }


# --------------------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    "bad",
    [
        "not-a-dict",
        42,
        None,
        ["Observation"],
    ],
)
def test_non_dict_entries_dropped(bad: Any) -> None:
    doc = searchset(entry(obs("o1", "A")), total=2)
    doc["entry"].append(bad)
    verify_document(doc, conf(), BASES)
    assert doc["entry"] == [entry(obs("o1", "A"))]
    assert doc["total"] == 1


@pytest.mark.parametrize(
    "resource",
    [
        "Observation/o2",
        None,
        42,
        [obs("o2", "B")],
        {"id": "x"},
        {"resourceType": "Nonexistent", "id": "x", "subject": {"reference": "Patient/A"}},
        {"resourceType": 7, "id": "x"},
        {"resourceType": "observation", "id": "x", "subject": {"reference": "Patient/A"}},
    ],
    ids=["string", "null", "int", "list", "no-type", "unknown-type", "int-type", "lowercase"],
)
def test_malformed_resources_dropped(resource: Any) -> None:
    doc = searchset(entry(obs("o1", "A")), {"resource": resource, "search": {"mode": "match"}})
    verify_document(doc, unconf("user/*.rs"), BASES)
    assert ids(doc) == ["Observation/o1"]
    doc2 = searchset({"resource": resource})
    verify_document(doc2, conf(), BASES)
    assert "entry" not in doc2


@pytest.mark.parametrize("entries", [{"resource": {}}, "x", 5, True])
def test_entry_not_a_list_raises_value_error(entries: Any) -> None:
    doc = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
    with pytest.raises(ValueError, match="not a list"):
        verify_document(doc, conf(), BASES)


def test_entry_null_is_an_empty_bundle() -> None:
    doc = {"resourceType": "Bundle", "type": "searchset", "entry": None, "total": 0}
    assert verify_document(doc, conf(), BASES) is False


def test_resource_check_counts_removed_entries() -> None:
    check = ResourceCheck(conf(), BASES)
    doc = searchset(entry(obs("o1", "A")), entry(obs("o2", "B")), entry(patient("B"), "include"))
    check.filter_bundle(doc)
    assert check.removed == 2
    assert check.changed


def test_resource_check_in_compartment() -> None:
    check = ResourceCheck(conf(), BASES)
    assert check.in_compartment(obs("o1", "A"))
    assert not check.in_compartment(obs("o2", "B"))
    assert check.in_compartment(copy.deepcopy(PRACTITIONER))  # outside the compartment
    assert not check.in_compartment({"resourceType": "Nope"})
    assert ResourceCheck(unconf(), BASES).in_compartment(obs("o2", "B"))


def test_resource_check_visible_rejects_non_resources() -> None:
    check = ResourceCheck(conf(), BASES)
    for value in (None, "x", 1, [], {}, {"resourceType": None}):
        assert check.visible(value) is False


def test_observation_in_two_compartments_visible_to_both() -> None:
    """Any compartment parameter is enough (decision 10): performer A makes it A's too."""
    o = obs("o1", "B", performer=[{"reference": "Patient/A"}])
    verify_document(copy.deepcopy(o), conf(patient="A"), BASES)
    verify_document(copy.deepcopy(o), conf(patient="B"), BASES)
    with pytest.raises(NotFound):
        verify_document(copy.deepcopy(o), conf(patient="C"), BASES)


# --------------------------------------------------------------------------- the narrowing proof

NARROW = ("patient", "Patient/A")
PROVEN = f"{BASES[0]}/Observation?patient=Patient%2FA&_count=2"
IGNORED = f"{BASES[0]}/Observation?_count=2&_offset=0"  # the upstream dropped the narrowing


def narrowed(patient: str = "A") -> Verify:
    return replace(conf(patient=patient), narrowing=NARROW)


def with_self(doc: dict[str, Any], url: str) -> dict[str, Any]:
    doc["link"] = [{"relation": "self", "url": url}, *doc["link"][1:]]
    return doc


@pytest.mark.parametrize(
    ("doc", "self_url", "kwargs"),
    [
        pytest.param(searchset(total=57), IGNORED, {}, id="count-zero-total"),
        pytest.param(searchset(entry(obs("o2", "B")), total=9), IGNORED, {}, id="only-b"),
        pytest.param(
            searchset(entry(obs("o1", "A")), entry(obs("o2", "B")), total=9, next_link=True),
            IGNORED,
            {},
            id="mixed-page-with-cursor",
        ),
        pytest.param(searchset(entry(obs("o1", "A")), total=1), IGNORED, {}, id="only-a"),
        pytest.param(searchset(total=5), IGNORED, {"suppress_total": True}, id="suppressed"),
    ],
)
def test_unproven_narrowing_withholds_the_whole_answer(
    doc: dict[str, Any], self_url: str, kwargs: dict[str, Any]
) -> None:
    """Whatever the upstream matched (A's, B's, a count, a next page): one fixed answer."""
    reasons: list[str] = []
    assert verify_document(with_self(doc, self_url), narrowed(), BASES, reasons=reasons, **kwargs)
    assert doc == unproven_searchset()
    assert reasons == [UNPROVEN_REASON]


def test_unproven_narrowing_answers_identical_whatever_b_holds() -> None:
    answers = []
    for total in (0, 1, 250):
        doc = with_self(searchset(*[entry(obs(f"o{i}", "B")) for i in range(total)]), IGNORED)
        doc["total"] = total
        verify_document(doc, narrowed(), BASES)
        answers.append(doc)
    assert answers[0] == answers[1] == answers[2]


def test_proven_narrowing_is_filtered_as_before() -> None:
    doc = with_self(searchset(entry(obs("o1", "A")), total=40, next_link=True), PROVEN)
    reasons: list[str] = []
    assert verify_document(doc, narrowed(), BASES, reasons=reasons) is False
    assert doc["total"] == 40 and ids(doc) == ["Observation/o1"]
    assert reasons == []
    count_only = with_self(searchset(total=37), PROVEN)
    verify_document(count_only, narrowed(), BASES)
    assert count_only["total"] == 37  # _count=0 on a proven narrowing: A's own count


def test_echoed_but_reported_ignored_is_unproven() -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "warning", "code": "not-supported", "diagnostics": "'patient'?"}],
    }
    doc = with_self(searchset(entry(outcome, "outcome"), total=3), PROVEN)
    verify_document(doc, narrowed(), BASES)
    assert doc == unproven_searchset()


def test_narrowing_proof_applies_to_the_answer_envelope_only() -> None:
    """A Bundle inside the answer (a stored searchset) is filtered, not proven; an answer
    that is no searchset (an OperationOutcome, a single resource) needs no proof."""
    stored = searchset(entry(obs("o1", "A")), entry(obs("o2", "B")))
    stored["id"] = "stored"
    doc = with_self(searchset(entry(stored), total=1), PROVEN)
    verify_document(doc, replace(conf("patient/*.rs"), narrowing=NARROW), BASES)
    assert ids(doc["entry"][0]["resource"]) == ["Observation/o1"]
    outcome = {"resourceType": "OperationOutcome", "issue": []}
    assert verify_document(outcome, narrowed(), BASES) is False
    verify_document(obs("o1", "A"), narrowed(), BASES)


def test_batch_entry_search_is_proven_by_its_own_check() -> None:
    """batch.py judges each entry's searchset with a fresh ResourceCheck: the same rule."""
    inner = with_self(searchset(total=12), IGNORED)
    check = ResourceCheck(narrowed(), BASES)
    check.filter_bundle(inner)
    assert check.unproven and inner == unproven_searchset()


def test_unconfined_or_unnarrowed_needs_no_proof() -> None:
    doc = with_self(searchset(entry(obs("o2", "B")), total=1), IGNORED)
    verify_document(doc, replace(unconf(), narrowing=NARROW), BASES)
    assert ids(doc) == ["Observation/o2"]
    doc = with_self(searchset(entry(obs("o1", "A")), total=1), IGNORED)
    verify_document(doc, conf(), BASES)
    assert ids(doc) == ["Observation/o1"] and doc["total"] == 1


@pytest.mark.parametrize(
    ("resource", "visible"),
    [
        ({"resourceType": "Device", "id": "d1", "patient": {"reference": "Patient/B"}}, False),
        ({"resourceType": "Device", "id": "d2", "patient": {"reference": "Patient/A"}}, True),
        ({"resourceType": "Device", "id": "d3"}, True),
        (
            {
                "resourceType": "Linkage",
                "id": "l1",
                "item": [
                    {"type": "source", "resource": {"reference": "Patient/A"}},
                    {"type": "alternate", "resource": {"reference": "Patient/B"}},
                ],
            },
            False,
        ),
        ({"resourceType": "Practitioner", "id": "p1", "name": [{"family": "X"}]}, True),
    ],
    ids=["device-of-b", "device-of-a", "device-of-nobody", "linkage-a-and-b", "practitioner"],
)
def test_types_outside_the_compartment_naming_another_patient_are_hidden(
    resource: dict[str, Any], visible: bool
) -> None:
    if visible:
        assert verify_document(resource, conf(), BASES) is False
    else:
        with pytest.raises(NotFound):
            verify_document(resource, conf(), BASES)
