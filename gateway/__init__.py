"""fhir-gateway: a security gateway for FHIR R4 servers (SMART on FHIR)."""

__version__ = "0.1.0"
