"""(method, path) -> exactly one FHIR interaction, or a refusal."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import InvalidTarget, MethodNotAllowed, UnknownResourceType
from gateway.fhir.request import FhirRequest, Interaction, classify
from gateway.fhir.target import parse_target

I = Interaction  # noqa: E741


def _classify(method: str, path: str) -> FhirRequest:
    target = parse_target("/r4" + path, "/r4")
    assert target is not None
    return classify(method, target)


CASES: list[tuple[str, str, Interaction, str, dict[str, Any]]] = [
    ("GET", "/Patient/123", I.READ, "Patient/{id}", {"resource_type": "Patient", "id": "123"}),
    ("HEAD", "/Patient/123", I.READ, "Patient/{id}", {"id": "123"}),
    ("GET", "/Observation/a-b.c", I.READ, "Observation/{id}", {"id": "a-b.c"}),
    (
        "GET",
        "/Patient/123/_history/2",
        I.VREAD,
        "Patient/{id}/_history/{vid}",
        {"resource_type": "Patient", "id": "123", "version_id": "2"},
    ),
    ("PUT", "/Patient/123", I.UPDATE, "Patient/{id}", {"id": "123"}),
    ("PATCH", "/Patient/123", I.PATCH, "Patient/{id}", {"id": "123"}),
    ("DELETE", "/Patient/123", I.DELETE, "Patient/{id}", {"id": "123"}),
    ("POST", "/Patient", I.CREATE, "Patient", {"resource_type": "Patient", "id": None}),
    ("GET", "/Observation", I.SEARCH_TYPE, "Observation?search", {"resource_type": "Observation"}),
    ("GET", "/Observation?code=x", I.SEARCH_TYPE, "Observation?search", {}),
    ("HEAD", "/Observation", I.SEARCH_TYPE, "Observation?search", {}),
    ("POST", "/Observation/_search", I.SEARCH_TYPE, "Observation/_search", {}),
    ("GET", "?_type=Patient", I.SEARCH_SYSTEM, "?search", {"resource_type": None}),
    ("POST", "/_search", I.SEARCH_SYSTEM, "_search", {}),
    (
        "GET",
        "/Patient/x/Observation",
        I.SEARCH_COMPARTMENT,
        "Patient/{id}/Observation",
        {"resource_type": "Patient", "id": "x", "compartment_type": "Observation"},
    ),
    (
        "GET",
        "/Patient/x/*",
        I.SEARCH_COMPARTMENT,
        "Patient/{id}/*",
        {"id": "x", "compartment_type": "*"},
    ),
    (
        "POST",
        "/Patient/x/Observation/_search",
        I.SEARCH_COMPARTMENT,
        "Patient/{id}/Observation/_search",
        {"compartment_type": "Observation"},
    ),
    ("GET", "/Encounter/e/Observation", I.SEARCH_COMPARTMENT, "Encounter/{id}/Observation", {}),
    ("GET", "/Patient/1/_history", I.HISTORY_INSTANCE, "Patient/{id}/_history", {"id": "1"}),
    ("GET", "/Patient/_history", I.HISTORY_TYPE, "Patient/_history", {"id": None}),
    ("GET", "/_history", I.HISTORY_SYSTEM, "_history", {"resource_type": None}),
    ("GET", "/metadata", I.CAPABILITIES, "metadata", {}),
    ("HEAD", "/metadata", I.CAPABILITIES, "metadata", {}),
    (
        "GET",
        "/.well-known/smart-configuration",
        I.DISCOVERY,
        ".well-known/smart-configuration",
        {},
    ),
    ("POST", "", I.BATCH, "{base}", {}),
    ("POST", "/", I.BATCH, "{base}", {}),
    ("POST", "/$export", I.OPERATION_SYSTEM, "$export", {"operation": "$export"}),
    ("GET", "/$meta", I.OPERATION_SYSTEM, "$meta", {"operation": "$meta"}),
    (
        "GET",
        "/Patient/$match",
        I.OPERATION_TYPE,
        "Patient/$match",
        {"resource_type": "Patient", "operation": "$match"},
    ),
    (
        "GET",
        "/Patient/1/$everything",
        I.OPERATION_INSTANCE,
        "Patient/{id}/$everything",
        {"id": "1", "operation": "$everything"},
    ),
    (
        "POST",
        "/Patient/1/$everything",
        I.OPERATION_INSTANCE,
        "Patient/{id}/$everything",
        {"operation": "$everything"},
    ),
    ("PUT", "/Patient?identifier=s|1", I.UPDATE, "Patient?conditional", {"id": None}),
    ("DELETE", "/Patient?identifier=s|1", I.DELETE, "Patient?conditional", {"id": None}),
    ("PATCH", "/Patient?identifier=s|1", I.PATCH, "Patient?conditional", {"id": None}),
    ("GET", "/Patient/" + "a" * 64, I.READ, "Patient/{id}", {"id": "a" * 64}),
]


@pytest.mark.parametrize(
    ("method", "path", "interaction", "route", "fields"),
    CASES,
    ids=[f"{c[0]} {c[1] or '(base)'}" for c in CASES],
)
def test_classify(
    method: str, path: str, interaction: Interaction, route: str, fields: dict[str, Any]
) -> None:
    req = _classify(method, path)
    assert req.interaction is interaction
    assert req.route == route
    assert req.method == method
    for name, value in fields.items():
        assert getattr(req, name) == value, name


def test_route_never_contains_the_id() -> None:
    req = _classify("GET", "/Patient/secret-id-42/_history/7")
    assert "secret-id-42" not in req.route and "7" not in req.route


def test_is_search_and_params() -> None:
    req = _classify("GET", "/Observation?code=a&code=b")
    assert req.is_search
    assert req.params == (("code", "a"), ("code", "b"))
    assert not _classify("GET", "/Observation/1").is_search
    assert _classify("GET", "/Patient/x/*").is_search


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/patient/1"),
        ("GET", "/PATIENT"),
        ("GET", "/Foo/1"),
        ("POST", "/Nope"),
        ("GET", "/Patient/x/observation"),
        ("GET", "/Patient/x/Bogus"),
        ("GET", "/metadata/x"),
    ],
    ids=[
        "lowercase-type",
        "uppercase-type",
        "unknown",
        "create-unknown",
        "compartment-lower",
        "compartment-unknown",
        "metadata-extra",
    ],
)
def test_unknown_resource_type(method: str, path: str) -> None:
    with pytest.raises(UnknownResourceType) as info:
        _classify(method, path)
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/Patient/a*b"),
        ("GET", "/Patient/" + "a" * 65),
        ("GET", "/Patient/a_b"),
        ("GET", "/Patient/1/_history/a*b"),
        ("GET", "/Patient/a*b/_history"),
        ("GET", "/Patient/a$b/Observation"),
        ("GET", "/Observation/1/Patient"),
        ("GET", "/Observation/1/*"),
        ("GET", "/Patient/1/Observation/2"),
        ("GET", "/Patient/1/_history/2/x"),
        ("GET", "/Patient/1/$everything/x"),
        ("GET", "/$"),
        ("GET", "/Patient/$"),
        ("GET", "/Patient/1/$1x"),
        ("GET", "/Patient/$" + "a" * 65),
    ],
    ids=[
        "star-in-id",
        "id-65",
        "underscore-id",
        "bad-vid",
        "bad-id-history",
        "bad-id-compartment",
        "non-compartment-owner",
        "non-compartment-star",
        "too-deep",
        "history-too-deep",
        "operation-too-deep",
        "empty-op-system",
        "empty-op-type",
        "op-digit",
        "op-too-long",
    ],
)
def test_invalid_paths_are_400(method: str, path: str) -> None:
    with pytest.raises(InvalidTarget) as info:
        _classify(method, path)
    assert info.value.status == 400


WRONG_METHODS = [
    ("DELETE", "", {"GET", "HEAD", "POST"}),
    ("PUT", "/Patient", {"GET", "HEAD", "POST"}),
    ("DELETE", "/Patient", {"GET", "HEAD", "POST"}),
    ("POST", "/Patient/1", {"GET", "HEAD", "PUT", "PATCH", "DELETE"}),
    ("POST", "/metadata", {"GET", "HEAD"}),
    ("PUT", "/.well-known/smart-configuration", {"GET", "HEAD"}),
    ("GET", "/_search", {"POST"}),
    ("GET", "/Patient/_search", {"POST"}),
    ("POST", "/_history", {"GET", "HEAD"}),
    ("POST", "/Patient/_history", {"GET", "HEAD"}),
    ("DELETE", "/Patient/1/_history", {"GET", "HEAD"}),
    ("PUT", "/Patient/1/_history/2", {"GET", "HEAD"}),
    ("DELETE", "/Patient/1/_history/2", {"GET", "HEAD"}),
    ("POST", "/Patient/x/Observation", {"GET", "HEAD"}),
    ("GET", "/Patient/x/Observation/_search", {"POST"}),
    ("PUT", "/$export", {"GET", "HEAD", "POST"}),
    ("DELETE", "/Patient/$match", {"GET", "HEAD", "POST"}),
    ("PATCH", "/Patient/1/$everything", {"GET", "HEAD", "POST"}),
    ("OPTIONS", "/Patient/1", {"GET", "HEAD", "PUT", "PATCH", "DELETE"}),
    ("TRACE", "/metadata", {"GET", "HEAD"}),
]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    WRONG_METHODS,
    ids=[f"{m} {p or '(base)'}" for m, p, _ in WRONG_METHODS],
)
def test_wrong_method_is_405_with_allow(method: str, path: str, allowed: set[str]) -> None:
    with pytest.raises(MethodNotAllowed) as info:
        _classify(method, path)
    assert info.value.status == 405
    allow = info.value.headers["Allow"]
    assert {m.strip() for m in allow.split(",")} == allowed
    assert method not in {m.strip() for m in allow.split(",")}
