"""Audit record details: AuditEvent shape, what a request names, spilling, config, tracing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.access.verify import PolicyTally
from gateway.config import AuditFhirSink, Config, parse_config
from gateway.context import Exchange
from gateway.errors import ConfigError
from gateway.fhir.request import classify
from gateway.fhir.target import parse_target
from gateway.ops import tracing
from gateway.ops.audit import build_record, note_request
from gateway.ops.audit_event import audit_event
from gateway.ops.audit_sinks import FhirAuditSink
from gateway.ops.metrics import Metrics


def minimal(**extra: object) -> dict[str, object]:
    return {
        "server": {"public_base_url": "https://fhir.example.org/r4"},
        "upstream": {"url": "https://legacy.example/fhir"},
        **extra,
    }


def exchange_for(method: str, target: str) -> Exchange:
    ex = Exchange("rid-1")
    parsed = parse_target(target, "")
    assert parsed is not None
    note_request(ex, classify(method, parsed))
    return ex


def test_request_names_resource_and_patients() -> None:
    ex = exchange_for("GET", "/Patient/p1/Observation")
    assert ex.interaction == "search-compartment" and ex.resource_type == "Observation"
    assert list(ex.entities) == ["Patient/p1"] and ex.patients == {"p1"}
    ex = exchange_for("GET", "/Observation?subject=Patient/p2&patient=p3,Patient/p4")
    assert ex.patients == {"p2", "p3", "p4"} and not ex.entities


def test_audit_event_shape() -> None:
    ex = exchange_for("GET", "/Condition/c1")
    ex.patients.add("p1")
    tally = ex.policies = PolicyTally()
    tally.break_glass.add("btg-policy")
    tally.withheld["sensitive"] += 2
    record = build_record(ex, method="GET", status=200, source_address="192.0.2.7")
    assert record.break_glass and record.policies == {"sensitive": {"withheld": 2, "redacted": 0}}
    event = audit_event(record, "gw-1")
    assert event["type"]["code"] == "rest" and event["subtype"][0]["code"] == "read"
    assert event["action"] == "R" and event["outcome"] == "0"
    assert event["source"]["observer"] == {"display": "gw-1"}
    whats = [e["what"] for e in event["entity"]]
    assert {"reference": "Patient/p1"} in whats and {"reference": "Condition/c1"} in whats
    assert event["purposeOfEvent"][0]["coding"][0]["code"] == "BTG"
    assert event["agent"][0]["who"] == {"display": "anonymous"}


async def test_queue_full_spills_and_counts(tmp_path: Path) -> None:
    spill = tmp_path / "spill.jsonl"
    cfg = AuditFhirSink(url="http://127.0.0.1:9/fhir", spill_file=spill, queue_size=2)
    metrics = Metrics()
    sink = FhirAuditSink(cfg, "gw", metrics)  # not started: the queue only fills
    for i in range(5):
        ex = Exchange(f"r{i}")
        sink.emit(build_record(ex, method="GET", status=200, source_address="-"))
    assert sink.depth == 2 and sink.spilled == 3
    assert len(spill.read_text().splitlines()) == 3
    assert metrics.audit_records.labels("fhir", "spilled")._value.get() == 3
    await sink.close()  # never started: the queued two are spilled at shutdown
    assert sink.spilled == 5 and len(spill.read_text().splitlines()) == 5


def test_redacted_config_hides_secrets() -> None:
    cfg: Config = parse_config(
        minimal(
            auth={
                "introspection": {
                    "endpoint": "https://as.example/i",
                    "client_id": "gw",
                    "client_secret": "s3cret",
                }
            },
            upstream={
                "url": "https://legacy.example/fhir",
                "auth": {"header": {"name": "X-Key", "value": "k3y"}},
            },
        ),
        base_dir=Path("/nonexistent"),
        env={},
    )
    text = json.dumps(cfg.redacted())
    assert "s3cret" not in text and "k3y" not in text and "X-Key" in text


def test_tracing_enabled_without_packages_fails_config_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tracing, "missing_packages", lambda: ["opentelemetry.sdk.trace"])
    with pytest.raises(ConfigError) as info:
        parse_config(minimal(tracing={"enabled": True}), base_dir=Path("/nonexistent"), env={})
    assert any("tracing.enabled" in p and "[tracing]" in p for p in info.value.problems)


def test_admin_port_must_differ() -> None:
    data = minimal()
    data["server"] = {"public_base_url": "https://fhir.example.org/r4", "admin_port": 8080}
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=Path("/nonexistent"), env={})
    assert any("admin_port" in p for p in info.value.problems)


class FakeSpan:
    def __init__(self) -> None:
        self.name = ""
        self.attributes: dict[str, object] = {}

    def update_name(self, name: str) -> None:
        self.name = name

    def set_attribute(self, key: str, value: object) -> None:
        self.attributes[key] = value


def test_span_named_by_route_template_without_query() -> None:
    span = FakeSpan()
    tracing.RequestSpan(span).finish(
        method="GET", route="Observation", status=200, interaction="search-type", reason="ok"
    )
    assert span.name == "GET Observation"
    assert not any("?" in str(v) or "patient" in str(v) for v in span.attributes.values())
