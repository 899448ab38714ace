"""Where audit records go: the configured sinks behind :class:`AuditTrail`.

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
from pathlib import Path
from typing import BinaryIO, TextIO

import aiohttp
import msgspec

from gateway.config import AuditConfig, AuditFhirSink, UpstreamAuth
from gateway.ops.audit import AuditRecord
from gateway.ops.audit_event import audit_event
from gateway.ops.logging import log
from gateway.ops.metrics import Metrics

logger = logging.getLogger("gateway.audit")


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
