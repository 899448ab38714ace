"""Which searches carry PHI, and how a search travels upstream (``phi.post_search``).

Mode ``phi`` (default): a search goes upstream as POST ``_search`` with a form body when any of
its parameters is PHI-bearing: by default the per-type table derived from the FHIR search
parameter definitions (``scripts/generate_fhir_tables.py``: demographics, identifiers,
contact details, references to patients, every Patient-compartment parameter, Patient's
``_id``), plus the free-text parameters (``_filter``, ``_content``, ``_text``: any value may
be a name), plus any parameter using the ``:identifier`` modifier, plus a chain or ``_has``
whose base parameter is PHI-bearing. ``all`` converts every search; ``off`` never converts.

``phi.parameters`` replaces the derived table with one list of names for every type;
``phi.extra_parameters`` adds names to whichever list is in force.
"""

from __future__ import annotations

from enum import StrEnum

from gateway.config import PhiConfig
from gateway.errors import Forbidden
from gateway.fhir.params import split_name
from gateway.fhir.tables import PHI_PARAMS
from gateway.fhir.target import Param

_ANY_TYPE = frozenset().union(*PHI_PARAMS.values())
#: parameters whose value is free text or an expression over any element: PHI whatever the type
FREE_TEXT = frozenset({"_filter", "_content", "_text"})


class Transport(StrEnum):
    GET = "GET"  # parameters in the query string
    POST = "POST"  # POST .../_search with a form body, no query string


class PhiRules:
    def __init__(self, cfg: PhiConfig, upstream_post_search: bool) -> None:
        self.mode = cfg.post_search
        self._global = frozenset(cfg.parameters) if cfg.parameters is not None else None
        self._extra = frozenset(cfg.extra_parameters)
        self._upstream_post = upstream_post_search
        self._get_fallback = cfg.allow_get_fallback

    def names_for(self, rtype: str | None) -> frozenset[str]:
        if self._global is not None:
            base = self._global
        elif rtype is None:
            base = _ANY_TYPE  # system search: PHI for any type is PHI here
        else:
            base = PHI_PARAMS.get(rtype, frozenset())
        return base | self._extra

    def carries_phi(self, rtype: str | None, params: tuple[Param, ...]) -> bool:
        names = self.names_for(rtype)
        for raw, _ in params:
            name, modifier, chain = split_name(raw)
            if name in names or name in FREE_TEXT or modifier == "identifier":
                return True
            if name == "_has" or chain:
                # reverse/forward chains: judged by every name they touch
                parts = {p for p in raw.replace(":", ".").split(".") if p}
                if parts & (names | _ANY_TYPE):
                    return True
        return False

    def transport(
        self, rtype: str | None, params: tuple[Param, ...], *, client_post: bool = False
    ) -> Transport:
        """How a search with these parameters must travel upstream (or a refusal)."""
        phi = self.mode != "off" and self.carries_phi(rtype, params)
        want_post = client_post or self.mode == "all" or phi
        if not want_post:
            return Transport.GET
        if self._upstream_post:
            return Transport.POST
        if phi and not self._get_fallback:
            raise Forbidden(
                "This search carries PHI and the upstream server cannot receive it without "
                "putting it in a URL (POST _search is not available).",
                reason="phi.no-post-search",
            )
        return Transport.GET  # no POST upstream: non-PHI (or the operator's explicit fallback)
