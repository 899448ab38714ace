"""Per-request facts that the stages record and the access log (later: metrics, audit) reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(slots=True)
class Exchange:
    request_id: str
    route: str = "-"
    reason: str | None = None
    upstream_ms: float | None = None
    principal: Any = None  # gateway.auth.Principal once authenticated
    policies: Any = None  # gateway.access.verify.PolicyTally: what privacy policies did
    # for the audit record (gateway.ops.audit.note_request / note_document)
    interaction: str | None = None
    resource_type: str | None = None
    entities: dict[str, None] = field(default_factory=dict)  # "Type/id", in order, no repeats
    patients: set[str] = field(default_factory=set)


EXCHANGE = web.RequestKey("exchange", Exchange)


def exchange(request: web.Request) -> Exchange:
    return request[EXCHANGE]
