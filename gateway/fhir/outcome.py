"""OperationOutcome bodies for errors the gateway produces itself, and the media type of the
FHIR JSON the gateway builds.

FHIR R4 http.html ("Content Types and encodings"): responses "SHALL explicitly set the
character encoding to UTF-8 using the charset parameter of the MIME-type in the Content-Type
header". Every FHIR JSON body the gateway encodes itself (errors, the rebuilt
CapabilityStatement, re-encoded bundles) is UTF-8 (``gateway.fhir.json.encode``), so it goes
out as :data:`FHIR_JSON_UTF8` (aiohttp: ``content_type=FHIR_JSON, charset=CHARSET``). Upstream
bytes passed on untouched keep the upstream's own Content-Type.
"""

from __future__ import annotations

from gateway.fhir import json

__all__ = ["CHARSET", "FHIR_JSON", "FHIR_JSON_UTF8", "operation_outcome"]

#: the media type alone (Accept headers, comparisons, aiohttp's ``content_type=``)
FHIR_JSON = "application/fhir+json"
#: the charset of every body the gateway encodes itself
CHARSET = "utf-8"
#: the full Content-Type of FHIR JSON the gateway builds itself
FHIR_JSON_UTF8 = f"{FHIR_JSON}; charset={CHARSET}"


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> bytes:
    """A minimal R4 OperationOutcome (http://hl7.org/fhir/R4/operationoutcome.html)."""
    return json.encode(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
        }
    )
