"""OperationOutcome bodies for errors the gateway produces itself."""

from __future__ import annotations

from gateway.fhir import json

FHIR_JSON = "application/fhir+json"


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> bytes:
    """A minimal R4 OperationOutcome (http://hl7.org/fhir/R4/operationoutcome.html)."""
    return json.encode(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
        }
    )
