"""Proof that the upstream applied the gateway's narrowing constraint.

A confined search is narrowed with one typed constraint (``patient=Patient/{id}``, the type's
compartment parameter, ``_id={id}`` for Patient; see ``authorize._narrowing``). A server that
does not support that parameter for the type may silently ignore it and search every patient:
dropping the other patients' entries from the page is then not enough, since ``total``
(``_count=0``), page sizes and paging links still describe everybody's records.

FHIR R4 (search, "self link") says the server SHALL return the parameters it actually used in
the searchset's ``self`` link. So the answer to a narrowed search is trusted only when:

1. it carries a ``self`` link whose query holds the narrowing parameter (its own name, or the
   name with ``:Patient``) with one value naming exactly the patient in context
   (``Patient/{id}``, a bare ``{id}``, or an absolute ``.../Patient/{id}``); and
2. no OperationOutcome it carries names that parameter (an "unknown parameter ... ignored"
   warning, by ``expression``/``location`` or quoted in ``diagnostics``).

Otherwise the whole answer is replaced by :func:`unproven_searchset`: no entry, no ``total``,
no link (so no cursor), one fixed outcome; the same bytes whatever the upstream holds. Pure
functions, tested with tables.

Later pages need no proof of their own (:func:`proven_by_first_page`): a cursor exists only
for an answer that proved its narrowing (an unproven one has no links), and the page links of
servers that keep the search on their side (HAPI's ``[base]?_getpages=...``) carry no search
parameters in their ``self`` link at all.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from gateway.access.decision import Decision
from gateway.fhir.target import Param

__all__ = [
    "UNPROVEN_DIAGNOSTICS",
    "UNPROVEN_REASON",
    "narrowing_applied",
    "proven_by_first_page",
    "unproven_searchset",
]

#: the audit / metrics reason when a narrowed search's answer had to be withheld
UNPROVEN_REASON = "search.narrowing-unproven"
#: fixed and PHI-free: names neither the type's records nor the patient
UNPROVEN_DIAGNOSTICS = (
    "The upstream server did not confine this search to the patient in context; "
    "its results are withheld."
)


def narrowing_applied(bundle: dict[str, Any], narrowing: Param, patient: str) -> bool:
    """Whether this searchset proves that ``narrowing`` was applied (see the module doc)."""
    name, _ = narrowing
    return _self_link_has(bundle, name, patient) and not _outcome_names(bundle, name)


def proven_by_first_page(decision: Decision) -> Decision:
    """The decision for a page reached through a cursor: the narrowing needs no new proof."""
    verify = decision.verify
    if verify is None or verify.narrowing is None:
        return decision
    return replace(decision, verify=replace(verify, narrowing=None))


def unproven_searchset() -> dict[str, Any]:
    """The answer that replaces an unproven one: an empty searchset with a fixed outcome."""
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {
                "resource": {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {
                            "severity": "warning",
                            "code": "not-supported",
                            "diagnostics": UNPROVEN_DIAGNOSTICS,
                        }
                    ],
                },
                "search": {"mode": "outcome"},
            }
        ],
    }


def _self_link_has(bundle: dict[str, Any], name: str, patient: str) -> bool:
    links = bundle.get("link")
    if not isinstance(links, list):
        return False
    for link in links:
        if not isinstance(link, dict) or link.get("relation") != "self":
            continue
        url = link.get("url")
        if not isinstance(url, str):
            continue
        try:
            query = urlsplit(url).query
        except ValueError:
            continue
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key in (name, f"{name}:Patient") and _names_patient(value, name, patient):
                return True
    return False


def _names_patient(value: str, name: str, patient: str) -> bool:
    """The value names exactly this patient (one value: a comma list would be an OR)."""
    if "," in value:
        return False
    if name == "_id":
        return value == patient
    parts = value.rstrip("/").split("/")
    if len(parts) == 1:
        return parts[0] == patient
    return parts[-2:] == ["Patient", patient]


def _outcome_names(bundle: dict[str, Any], name: str) -> bool:
    """An OperationOutcome in the searchset (``search.mode`` outcome, or any entry) names the
    parameter: servers report ignored parameters this way."""
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return False
    quoted = tuple(f"{q}{name}{q}" for q in ("'", '"', "`"))
    for entry in entries:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or resource.get("resourceType") != "OperationOutcome":
            continue
        issues = resource.get("issue")
        for issue in issues if isinstance(issues, list) else ():
            if not isinstance(issue, dict):
                continue
            where = [*_strings(issue.get("expression")), *_strings(issue.get("location"))]
            if any(w == name or w.endswith(f".{name}") for w in where):
                return True
            diagnostics = issue.get("diagnostics")
            if isinstance(diagnostics, str) and any(q in diagnostics for q in quoted):
                return True
    return False


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
