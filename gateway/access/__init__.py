"""Access decisions on FHIR data that do not need I/O.

- :mod:`gateway.access.compartment` — Patient-compartment membership of resources (decisions
  10 and 11): which patients a resource belongs to, foreign and unverifiable patient references
  for write checks, and stripping contained resources that could disclose another patient.
- :mod:`gateway.access.granular` — local verification of SMART v2 granular scopes
  (``patient/Observation.rs?category=system|code``) against returned resources, failing closed
  on anything it cannot evaluate.
"""
