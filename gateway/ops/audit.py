"""The audit trail: exactly one record per FHIR request, and the sinks that keep them.

The record (:class:`AuditRecord`) is built by the edge middleware in its ``finally``,
once the response is decided, from the request's :class:`~gateway.context.Exchange`. It is the
one place that names patients and resources: logs and metrics never do.

Sinks:

- :class:`JsonLinesSink` — one JSON object per line, to a file or stdout (the default),
  written synchronously (a short line, like a log line).
- :class:`FhirAuditSink` — FHIR R4 ``AuditEvent`` resources in the shape of the IHE Basic
  Audit Log Patterns (type ``rest``, subtype the FHIR interaction, agents for the user and the
  client app, entities for the patient(s), the data and the request id), POSTed as ``batch``
  or ``transaction`` Bundles by a background task from a bounded queue — never on the request
  path. A failed batch is retried with exponential backoff (``max_attempts``); what cannot be
  delivered is **spilled** as AuditEvent JSON lines to ``spill_file`` and counted: when the
  queue is full, when retries are exhausted, when the server refuses an entry, and at shutdown
  for whatever could not be delivered within ``drain_timeout_s``. A record is never dropped
  silently; the only loss is a failing spill file, which is logged at ERROR with request ids.
  Delivery is at-least-once: a batch whose answer was lost is sent again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import ssl
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import aiohttp
import msgspec

from gateway.access.compartment import compartment_patients, patient_ref_id
from gateway.access.verify import Members, known_members
from gateway.config import AuditConfig, AuditFhirSink, UpstreamAuth
from gateway.context import Exchange
from gateway.ops.logging import log
from gateway.ops.metrics import Metrics

logger = logging.getLogger("gateway.audit")

OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
BALP_ENTITY_TYPE = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
_SEARCHES = frozenset({"search-type", "search-system", "search-compartment", "page"})
_ACTIONS = {
    "create": "C",
    "read": "R",
    "vread": "R",
    "update": "U",
    "patch": "U",
    "delete": "D",
    "history-instance": "R",
    "history-type": "R",
    "history-system": "R",
    "capabilities": "R",
    "smart-discovery": "R",
}
_PATIENT_PARAMS = frozenset({"patient", "subject", "_id"})


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """Who saw what, when, under which rule. Never the token: its SHA-256 fingerprint."""

    time: str
    request_id: str
    client_id: str | None
    subject: str | None
    fhir_user: str | None
    issuer: str | None
    token_fingerprint: str | None
    context_patient: str | None
    source_address: str
    method: str
    interaction: str | None
    resource_type: str | None
    route: str
    entities: tuple[str, ...]
    patients: tuple[str, ...]
    status: int
    reason: str | None
    policies: dict[str, dict[str, int]] = field(default_factory=dict)
    break_glass: bool = False
    break_glass_policies: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        # a shallow copy (asdict deep-copies every value: measurable on the hot path)
        out = {name: getattr(self, name) for name in _RECORD_FIELDS}
        out["policies"] = {k: dict(v) for k, v in self.policies.items()}
        out["entities"] = list(self.entities)
        out["patients"] = list(self.patients)
        out["break_glass_policies"] = list(self.break_glass_policies)
        return out


_RECORD_FIELDS = tuple(f.name for f in fields(AuditRecord))


_second: list[Any] = [-1, ""]  # the last whole second and its formatted prefix


def _now() -> str:
    t = time.time()
    whole = int(t)
    if whole != _second[0]:
        _second[:] = [whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))]
    return f"{_second[1]}.{int((t - whole) * 1000):03d}Z"


# --------------------------------------------------------------------------- recording


def note_request(ex: Exchange, req: Any) -> None:
    """What the client asked for (a ``FhirRequest``): interaction, type, named resources."""
    ex.interaction = str(req.interaction)
    ex.resource_type = req.compartment_type or req.resource_type
    if ex.resource_type == "*":
        ex.resource_type = req.resource_type
    if req.resource_type and req.id:
        ex.entities[f"{req.resource_type}/{req.id}"] = None
        if req.resource_type == "Patient":
            ex.patients.add(req.id)
    if ex.interaction in _SEARCHES:  # the patients a search names (even a refused one)
        for name, value in req.params:
            base = name.partition(":")[0].partition(".")[0]
            if base not in _PATIENT_PARAMS or (base == "_id" and req.resource_type != "Patient"):
                continue
            for item in value.split(","):
                pid = item if base == "_id" else patient_ref_id(item)
                if pid is None and base == "patient" and "/" not in item:
                    pid = item
                if pid:
                    ex.patients.add(pid)


def note_document(
    ex: Exchange, doc: dict[str, Any], bases: tuple[str, ...] = (), memo: Members | None = None
) -> None:
    """The resources an answer carries after verification (what the client actually got);
    ``memo``: compartment members verification already computed."""
    if doc.get("resourceType") == "Bundle" and doc.get("type") in (
        "searchset",
        "history",
        "batch-response",
        "transaction-response",
    ):
        for entry in doc.get("entry") or ():
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(resource, dict):
                _note_resource(ex, resource, bases, memo)
    else:
        _note_resource(ex, doc, bases, memo)


def _note_resource(
    ex: Exchange, resource: dict[str, Any], bases: tuple[str, ...], memo: Members | None
) -> None:
    rtype, rid = resource.get("resourceType"), resource.get("id")
    if not isinstance(rtype, str) or rtype == "OperationOutcome":
        return
    if isinstance(rid, str):
        ex.entities[f"{rtype}/{rid}"] = None
    known, members = known_members(memo, resource)
    if known:
        ex.patients.update(members or ())
        return
    # malformed data: the ids already noted are what can be said
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        ex.patients.update(compartment_patients(resource, bases) or ())


def build_record(
    ex: Exchange, *, method: str, status: int, source_address: str, started: str | None = None
) -> AuditRecord:
    p = ex.principal
    tally = ex.policies
    policies: dict[str, dict[str, int]] = {}
    glass: tuple[str, ...] = ()
    if tally is not None:
        for pid in sorted(set(tally.withheld) | set(tally.redacted)):
            policies[pid] = {"withheld": tally.withheld[pid], "redacted": tally.redacted[pid]}
        glass = tuple(sorted(tally.break_glass))
    return AuditRecord(
        time=started or _now(),
        request_id=ex.request_id,
        client_id=getattr(p, "client_id", None),
        subject=getattr(p, "subject", None),
        fhir_user=getattr(p, "fhir_user", None),
        issuer=getattr(p, "issuer", None),
        token_fingerprint=getattr(p, "fingerprint", None),
        context_patient=getattr(p, "patient", None),
        source_address=source_address,
        method=method,
        interaction=ex.interaction,
        resource_type=ex.resource_type,
        route=ex.route,
        entities=tuple(ex.entities),
        patients=tuple(sorted(ex.patients)),
        status=status,
        reason=ex.reason,
        policies=policies,
        break_glass=bool(glass),
        break_glass_policies=glass,
    )


# --------------------------------------------------------------------------- AuditEvent


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def _outcome(status: int) -> str:
    if status < 400:
        return "0"  # success
    return "4" if status < 500 else "8"  # minor failure / serious failure


def audit_event(record: AuditRecord, source_id: str) -> dict[str, Any]:
    """An R4 AuditEvent for one record (IHE BALP RESTful-activity shape)."""
    interaction = record.interaction or "unknown"
    action = "E" if interaction in _SEARCHES else _ACTIONS.get(interaction, "E")
    user: dict[str, Any] = {
        "type": {
            "coding": [
                _coding(
                    "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                    "IRCP",
                    "information recipient",
                )
            ]
        },
        "requestor": True,
        "network": {"address": record.source_address, "type": "2"},
    }
    if record.fhir_user:
        user["who"] = {"reference": record.fhir_user}
    elif record.subject:
        user["who"] = {"identifier": {"system": record.issuer, "value": record.subject}}
    else:
        user["who"] = {"display": "anonymous"}
    agents = [user]
    if record.client_id:
        agents.append(
            {
                "type": {
                    "coding": [
                        _coding(
                            "http://dicom.nema.org/resources/ontology/DCM", "110150", "Application"
                        )
                    ]
                },
                "who": {"identifier": {"system": record.issuer, "value": record.client_id}},
                "requestor": False,
            }
        )
    entities: list[dict[str, Any]] = [
        {
            "what": {"identifier": {"value": record.request_id}},
            "type": _coding(BALP_ENTITY_TYPE, "XrequestId"),
        }
    ]
    for pid in record.patients:
        entities.append(
            {
                "what": {"reference": f"Patient/{pid}"},
                "type": _coding(
                    "http://terminology.hl7.org/CodeSystem/audit-entity-type", "1", "Person"
                ),
                "role": _coding(OBJECT_ROLE, "1", "Patient"),
            }
        )
    for ref in record.entities:
        if ref.startswith("Patient/") and ref[8:] in record.patients:
            continue
        entities.append(
            {
                "what": {"reference": ref},
                "type": _coding(
                    "http://terminology.hl7.org/CodeSystem/audit-entity-type", "2", "System Object"
                ),
                "role": _coding(OBJECT_ROLE, "4", "Domain Resource"),
            }
        )
    for pid, counts in record.policies.items():
        entities.append(
            {
                "what": {"identifier": {"value": pid}},
                "type": _coding(BALP_ENTITY_TYPE, "PolicyId"),
                "detail": [
                    {"type": name, "valueString": str(n)} for name, n in counts.items() if n
                ],
            }
        )
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": _coding(
            "http://terminology.hl7.org/CodeSystem/audit-event-type", "rest", "Restful Operation"
        ),
        "subtype": [_coding("http://hl7.org/fhir/restful-interaction", interaction)],
        "action": action,
        "recorded": record.time,
        "outcome": _outcome(record.status),
        "outcomeDesc": f"{record.status} {record.reason or 'ok'}",
        "agent": agents,
        "source": {
            "observer": {"display": source_id},
            "type": [
                _coding(
                    "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "4",
                    "Application Server",
                )
            ],
        },
        "entity": entities,
    }
    if record.break_glass:
        event["purposeOfEvent"] = [
            {
                "coding": [
                    _coding(
                        "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                        "BTG",
                        "break the glass",
                    )
                ],
                "text": "break-the-glass: " + ", ".join(record.break_glass_policies),
            }
        ]
    return event


# --------------------------------------------------------------------------- sinks


_line_encoder = msgspec.json.Encoder()


class JsonLinesSink:
    """One JSON line per record, to ``path`` (appended) or stdout.

    A file gets each line with one unbuffered ``write`` (no text layer, no separate flush):
    a record is with the kernel before the request's answer is sent.
    """

    name = "jsonl"

    def __init__(self, path: Path | None, metrics: Metrics | None = None) -> None:
        self._path = path
        self._metrics = metrics
        self._out: TextIO | None = None
        self._file: BinaryIO | None = None

    async def start(self) -> None:
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self._path.open("ab", buffering=0)  # kept open
        else:
            self._out = sys.stdout

    def emit(self, record: AuditRecord) -> None:
        line = _line_encoder.encode(record.to_json()) + b"\n"
        try:
            if self._file is not None:
                view = memoryview(line)
                while view:  # a raw file may take less than asked (only when nearly full)
                    written = self._file.write(view)
                    if not written:
                        raise OSError("audit file accepts no more bytes")
                    view = view[written:]
            else:
                out = self._out or sys.stdout
                out.write(line.decode("utf-8"))
                out.flush()
        except (OSError, ValueError) as exc:
            log(
                logger,
                logging.ERROR,
                "audit.write-failed",
                sink=self.name,
                request_id=record.request_id,
                error=type(exc).__name__,
            )
            self._count("failed")
            return
        self._count("written")

    def _count(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.child(self._metrics.audit_records, self.name, result).inc()

    async def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None
        self._out = None


class _Permanent(Exception):
    """The sink refused the batch (a 4xx other than 408/429): retrying will not help."""


def _auth_headers(auth: UpstreamAuth | None) -> dict[str, str]:
    if auth is None:
        return {}
    if auth.header is not None:
        return {auth.header.name: auth.header.value}
    if auth.basic is not None:
        pair = f"{auth.basic.username}:{auth.basic.password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
    return {}


class FhirAuditSink:
    """AuditEvents in Bundles, from a bounded queue, with retry, backoff and a spill file."""

    name = "fhir"

    def __init__(self, cfg: AuditFhirSink, source_id: str, metrics: Metrics | None = None) -> None:
        self._cfg = cfg
        self._source_id = source_id
        self._metrics = metrics
        self._queue: asyncio.Queue[AuditRecord] = asyncio.Queue(maxsize=cfg.queue_size)
        self._batch: list[AuditRecord] = []  # taken from the queue, not yet delivered/spilled
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._closed = False
        self.delivered = 0
        self.spilled = 0
        if metrics is not None:
            metrics.audit_queue_depth.set_function(self._queue.qsize)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    async def start(self) -> None:
        ctx: ssl.SSLContext | bool = True
        if self._cfg.ca_file is not None:
            ctx = ssl.create_default_context(cafile=str(self._cfg.ca_file))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=4, ssl=ctx),
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=self._cfg.timeout_s),
            headers={
                "Content-Type": "application/fhir+json",
                "Accept": "application/fhir+json",
                **_auth_headers(self._cfg.auth),
            },
        )
        self._task = asyncio.create_task(self._run(), name="audit-fhir-sink")

    def emit(self, record: AuditRecord) -> None:
        """Queue a record (never blocks); spill it when the queue is full or the sink closed."""
        if self._closed:
            self._spill([record], "closed")
            return
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self._spill([record], "queue-full")

    async def close(self) -> None:
        """Drain within ``drain_timeout_s`` (one attempt per batch), then spill the rest."""
        self._closed = True
        self._closing.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), self._cfg.drain_timeout_s)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        leftover = list(self._batch)
        self._batch.clear()
        while not self._queue.empty():
            leftover.append(self._queue.get_nowait())
        if leftover:
            self._spill(leftover, "shutdown")
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while not (self._closing.is_set() and self._queue.empty()):
            if not self._batch and not await self._fill():
                continue
            await self._deliver_with_retry()

    async def _fill(self) -> bool:
        """Take up to ``batch_size`` records: wait for the first, then ``flush_interval_s``."""
        getter = asyncio.ensure_future(self._queue.get())
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({getter, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            if not getter.done():
                getter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await getter
        if not getter.done() or getter.cancelled():
            return False
        self._batch.append(getter.result())
        deadline = time.monotonic() + self._cfg.flush_interval_s
        while len(self._batch) < self._cfg.batch_size:
            if not self._queue.empty():
                self._batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closing.is_set():
                break
            try:
                async with asyncio.timeout(remaining):
                    self._batch.append(await self._queue.get())
            except TimeoutError:
                break
        return True

    async def _deliver_with_retry(self) -> None:
        batch = self._batch
        delay = self._cfg.initial_backoff_s
        for attempt in range(1, self._cfg.max_attempts + 1):
            try:
                refused = await self._post(batch)
            except _Permanent:
                self._count_failure(len(batch), "refused")
                self._spill(batch, "refused")
                batch.clear()
                return
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                self._count_failure(len(batch), type(exc).__name__)
                if attempt == self._cfg.max_attempts or self._closing.is_set():
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._closing.wait()
                delay = min(delay * 2, self._cfg.max_backoff_s)
                continue
            delivered = len(batch) - len(refused)
            self.delivered += delivered
            if self._metrics is not None and delivered:
                self._metrics.audit_records.labels(self.name, "delivered").inc(delivered)
            if refused:
                self._spill(refused, "entry-refused")
            batch.clear()
            return
        self._spill(batch, "unavailable")
        batch.clear()

    async def _post(self, batch: Sequence[AuditRecord]) -> list[AuditRecord]:
        """POST one Bundle. Returns the records whose entries the server refused (batch)."""
        assert self._session is not None
        bundle = {
            "resourceType": "Bundle",
            "type": self._cfg.bundle_type,
            "entry": [
                {
                    "resource": audit_event(r, self._source_id),
                    "request": {"method": "POST", "url": "AuditEvent"},
                }
                for r in batch
            ],
        }
        async with self._session.post(
            self._cfg.url, data=json.dumps(bundle).encode(), allow_redirects=False
        ) as resp:
            body = await resp.read()
            if resp.status in (408, 429) or resp.status >= 500 or 300 <= resp.status < 400:
                raise aiohttp.ClientResponseError(
                    resp.request_info, (), status=resp.status, message="audit sink unavailable"
                )
            if resp.status >= 400:
                raise _Permanent(resp.status)
        if self._cfg.bundle_type != "batch":
            return []
        try:
            entries = json.loads(body).get("entry") or []
        except (ValueError, AttributeError):
            return []  # 2xx without a readable answer: accepted
        refused = []
        for record, entry in zip(batch, entries, strict=False):
            status = str(((entry or {}).get("response") or {}).get("status", "200"))
            if not status.startswith("2"):
                refused.append(record)
        return refused

    def _count_failure(self, n: int, error: str) -> None:
        log(
            logger, logging.WARNING, "audit.delivery-failed", sink=self.name, records=n, error=error
        )
        if self._metrics is not None:
            self._metrics.audit_delivery_failures.inc()

    def _spill(self, records: Iterable[AuditRecord], why: str) -> None:
        records = list(records)
        try:
            self._cfg.spill_file.parent.mkdir(parents=True, exist_ok=True)
            with self._cfg.spill_file.open("a", encoding="utf-8") as out:
                for r in records:
                    out.write(
                        json.dumps(audit_event(r, self._source_id), separators=(",", ":")) + "\n"
                    )
        except OSError as exc:
            log(
                logger,
                logging.ERROR,
                "audit.lost",
                sink=self.name,
                records=len(records),
                why=why,
                error=type(exc).__name__,
                request_ids=[r.request_id for r in records],
            )
            return
        self.spilled += len(records)
        if self._metrics is not None:
            self._metrics.audit_records.labels(self.name, "spilled").inc(len(records))
        log(logger, logging.WARNING, "audit.spilled", sink=self.name, records=len(records), why=why)


class AuditTrail:
    """The configured sinks; ``emit`` hands one record to each."""

    def __init__(self, sinks: Sequence[JsonLinesSink | FhirAuditSink]) -> None:
        self.sinks = list(sinks)

    @classmethod
    def from_config(cls, cfg: AuditConfig, metrics: Metrics | None = None) -> AuditTrail:
        if not cfg.enabled:
            return cls([])
        sinks: list[JsonLinesSink | FhirAuditSink] = [JsonLinesSink(cfg.file, metrics)]
        if cfg.fhir is not None:
            sinks.append(FhirAuditSink(cfg.fhir, cfg.source_id, metrics))
        return cls(sinks)

    async def start(self) -> None:
        for sink in self.sinks:
            await sink.start()

    def emit(self, record: AuditRecord) -> None:
        for sink in self.sinks:
            sink.emit(record)

    async def close(self) -> None:
        for sink in self.sinks:
            await sink.close()
