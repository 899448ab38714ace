"""PHI-free telemetry (issue 5, item 7) and PHI response headers (item 8).

A PHI-rich scenario (names, birth dates, identifiers, phone numbers, patient ids and the
tokens themselves as unique marker strings) runs through every kind of request and error:
searches, cursors, reads, POST ``_search``, creates and updates, invalid bodies, and
401/403/404/400/406/413/415/431/502/504. Every log record (all loggers, DEBUG) is rendered
every way a handler could render it, and no marker may appear. Once in process (``caplog``),
once through the real CLI (``python -m gateway serve``), reading its stderr.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import pytest
import yaml
from aiohttp import web
from yarl import URL

from gateway.ops.logging import JsonFormatter
from tests.conftest import GatewayFactory
from tests.support.fake_upstream import FakeUpstream, Recorded, default_answer
from tests.support.gateway import PUBLIC_BASE, RunningGateway
from tests.support.issuer import TestIssuer

NAME = "PHIMARK-Smith"
GIVEN = "PHIMARKGiven"
BIRTH = "1917-03-14"
PHONE = "PHIMARK-555-0100"
MRN = "PHIMARK-MRN-1"
EMAIL = "phimark.mail@example.test"
PID = "PHIMARK-pid-7"  # a patient's resource id
OTHER_PID = "PHIMARK-pid-8"
BAD_TOKEN = "PHIMARK-token-not-a-jwt"
FIXED_MARKERS = [NAME, GIVEN, BIRTH, PHONE, MRN, EMAIL, PID, OTHER_PID, BAD_TOKEN, "PHIMARK"]

FORM = "application/x-www-form-urlencoded"
FHIR_JSON = "application/fhir+json"
REPO = Path(__file__).resolve().parents[2]
LIMITS = {"server": {"max_request_body_bytes": 4096}, "upstream": {"timeout_s": 0.5}}


def q(pairs: list[tuple[str, str]]) -> str:
    return urlencode(pairs, quote_via=quote)


def patient_doc(pid: str = PID) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [{"system": "urn:mrn", "value": MRN}],
        "name": [{"family": NAME, "given": [GIVEN]}],
        "birthDate": BIRTH,
        "telecom": [{"system": "phone", "value": PHONE}, {"system": "email", "value": EMAIL}],
    }


@dataclass
class Script:
    """What the fake upstream answers next; every answer is stuffed with markers."""

    fake: FakeUpstream
    mode: str = "search"
    answers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fake.reply(self.answer)

    async def answer(self, request: web.Request, rec: Recorded) -> web.StreamResponse:
        base = self.fake.base_url
        self.answers.append(self.mode)
        leak = {"Set-Cookie": f"sid={NAME}; Path=/", "Cache-Control": "public, max-age=600"}
        if self.mode == "search":
            doc = {
                "resourceType": "Bundle",
                "type": "searchset",
                "total": 1,
                "link": [
                    {"relation": rel, "url": f"{base}/Patient?name={NAME}&birthdate={BIRTH}"}
                    for rel in ("self", "next")
                ],
                "entry": [{"fullUrl": f"{base}/Patient/{PID}", "resource": patient_doc()}],
            }
            return web.json_response(doc, content_type=FHIR_JSON, headers=leak)
        if self.mode == "read":
            return web.json_response(patient_doc(), content_type=FHIR_JSON, headers=leak)
        if self.mode == "write":
            return default_answer(base, rec)
        if self.mode == "404":
            outcome = {"resourceType": "OperationOutcome", "issue": [{"diagnostics": PID}]}
            return web.json_response(outcome, status=404, content_type=FHIR_JSON)
        if self.mode == "500":
            return web.Response(status=500, text=f"Traceback: {NAME} {PID} {MRN} {BIRTH}")
        if self.mode == "bad-json":
            return web.Response(body=f'{{"name": "{NAME}"'.encode(), content_type=FHIR_JSON)
        if self.mode == "not-fhir":
            return web.Response(text=f"<html>{NAME} {PHONE}</html>", content_type="text/html")
        if self.mode == "redirect":
            return web.Response(status=302, headers={"Location": f"/login?user={NAME}"})
        if self.mode == "slow":
            await asyncio.sleep(1.5)
            return web.json_response(patient_doc(), content_type=FHIR_JSON)
        raise AssertionError(self.mode)


@dataclass
class Outcome:
    label: str
    status: int
    headers: dict[str, str]
    body: bytes


async def scenario(
    session: aiohttp.ClientSession,
    base: str,
    script: Script,
    issuer: TestIssuer,
    raw_port: int,
) -> tuple[list[Outcome], list[str]]:
    """Run every kind of request and error; returns the answers and the token markers."""
    clinician = issuer.mint(scope="openid fhirUser user/*.cruds", patient=None)
    confined = issuer.mint(scope="patient/*.rs", patient=PID, sub=f"sub-{NAME}")
    stranger = issuer.mint(scope="user/*.cruds", patient=None, sub="someone-else")
    tokens = [clinician, confined, stranger]
    auth = {"Authorization": f"Bearer {clinician}"}
    out: list[Outcome] = []

    async def call(
        label: str,
        mode: str,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        data: Any = None,
        expect: int | None = None,
    ) -> Outcome:
        script.mode = mode
        url = URL(path if path.startswith("http") else f"{base}/{path}", encoded=True)
        async with session.request(method, url, headers=headers, data=data) as resp:
            raw = await resp.read()
            got = Outcome(label, resp.status, dict(resp.headers), raw)
        out.append(got)
        if expect is not None:
            assert got.status == expect, (label, got.status, raw[:300])
        return got

    phi_query = q([("name", NAME), ("birthdate", BIRTH), ("phone", PHONE), ("identifier", MRN)])
    first = await call("search", "search", "GET", f"Patient?{phi_query}", headers=auth, expect=200)
    doc = json.loads(first.body)
    next_url = next(link["url"] for link in doc["link"] if link["relation"] == "next")
    cursor_path = next_url[len(PUBLIC_BASE) :]
    await call("cursor", "search", "GET", f"{base}{cursor_path}", headers=auth, expect=200)
    await call(
        "cursor-foreign",
        "search",
        "GET",
        f"{base}{cursor_path}",
        headers={"Authorization": f"Bearer {stranger}"},
        expect=404,
    )
    forged = cursor_path[:20] + ("A" if cursor_path[20] != "A" else "B") + cursor_path[21:]
    await call("cursor-tampered", "search", "GET", f"{base}{forged}", headers=auth, expect=400)
    await call(
        "search-observation",
        "search",
        "GET",
        f"Observation?{q([('patient', f'Patient/{PID}'), ('code', NAME)])}",
        headers=auth,
        expect=200,
    )
    await call(
        "search-system", "search", "GET", f"?{q([('name', NAME)])}", headers=auth, expect=200
    )
    await call(
        "search-compartment",
        "search",
        "GET",
        f"Patient/{PID}/Observation?{q([('code', MRN)])}",
        headers=auth,
        expect=200,
    )
    await call(
        "post-search",
        "search",
        "POST",
        f"Patient/_search?{q([('family', NAME)])}",
        headers={**auth, "Content-Type": FORM},
        data=q([("birthdate", BIRTH), ("telecom", PHONE), ("identifier", MRN)]),
        expect=200,
    )
    await call("read", "read", "GET", f"Patient/{PID}", headers=auth, expect=200)
    await call(
        "read-if-none-match",
        "read",
        "GET",
        f"Patient/{PID}",
        headers={**auth, "If-None-Match": f'W/"{NAME}"'},
        expect=200,
    )
    await call(
        "confined-search",
        "search",
        "GET",
        f"Patient?{q([('name', NAME)])}",
        headers={"Authorization": f"Bearer {confined}"},
    )
    body = json.dumps(patient_doc()).encode()
    await call(
        "create",
        "write",
        "POST",
        "Patient",
        headers={**auth, "Content-Type": FHIR_JSON},
        data=body,
        expect=201,
    )
    await call(
        "create-conditional",
        "write",
        "POST",
        "Patient",
        headers={**auth, "Content-Type": FHIR_JSON, "If-None-Exist": f"identifier={MRN}"},
        data=body,
    )
    await call(
        "update",
        "write",
        "PUT",
        f"Patient/{PID}",
        headers={**auth, "Content-Type": FHIR_JSON},
        data=body,
    )
    # ---- errors
    await call(
        "invalid-json",
        "write",
        "POST",
        "Patient",
        headers={**auth, "Content-Type": FHIR_JSON},
        data=f'{{"resourceType": "Patient", "name": "{NAME}", "birthDate": "{BIRTH}"'.encode(),
        expect=400,
    )
    await call(
        "not-a-resource",
        "write",
        "POST",
        "Patient",
        headers={**auth, "Content-Type": FHIR_JSON},
        data=json.dumps([NAME, PHONE]).encode(),
        expect=400,
    )
    await call("bad-percent", "search", "GET", f"Patient?name=%ZZ{NAME}", headers=auth, expect=400)
    await call("bad-utf8", "search", "GET", f"Patient?name=%FF{NAME}", headers=auth, expect=400)
    await call("bad-id", "read", "GET", f"Patient/{NAME}_{MRN}!", headers=auth, expect=400)
    await call("unknown-type", "read", "GET", f"{NAME}/{PID}", headers=auth, expect=400)
    await call(
        "no-token", "search", "GET", f"Patient?{q([('name', NAME)])}", headers={}, expect=401
    )
    await call(
        "bad-token",
        "search",
        "GET",
        f"Patient?{q([('name', NAME)])}",
        headers={"Authorization": f"Bearer {BAD_TOKEN}"},
        expect=401,
    )
    await call(
        "token-in-query",
        "search",
        "GET",
        f"Patient?{q([('name', NAME), ('access_token', BAD_TOKEN)])}",
        headers={},
    )
    await call(
        "token-in-form",
        "search",
        "POST",
        "Patient/_search",
        headers={**auth, "Content-Type": FORM},
        data=q([("name", NAME), ("access_token", clinician)]),
        expect=400,
    )
    await call(
        "forbidden-other-patient",
        "search",
        "GET",
        f"Observation?{q([('patient', f'Patient/{OTHER_PID}')])}",
        headers={"Authorization": f"Bearer {confined}"},
        expect=403,
    )
    await call(
        "forbidden-read-other-patient",
        "read",
        "GET",
        f"Patient/{OTHER_PID}",
        headers={"Authorization": f"Bearer {confined}"},
        expect=404,
    )
    await call("upstream-404", "404", "GET", f"Patient/{PID}", headers=auth, expect=404)
    await call(
        "not-acceptable",
        "search",
        "GET",
        f"Patient?{q([('name', NAME)])}",
        headers={**auth, "Accept": "application/fhir+xml"},
        expect=406,
    )
    await call(
        "format-xml",
        "search",
        "GET",
        f"Patient?{q([('name', NAME), ('_format', f'xml-{NAME}')])}",
        headers=auth,
        expect=406,
    )
    big = json.dumps({"resourceType": "Patient", "name": [{"family": NAME * 400}]}).encode()
    await call(
        "too-large",
        "write",
        "POST",
        "Patient",
        headers={**auth, "Content-Type": FHIR_JSON},
        data=big,
        expect=413,
    )
    await call(
        "post-search-json",
        "search",
        "POST",
        "Patient/_search",
        headers={**auth, "Content-Type": FHIR_JSON},
        data=json.dumps({"name": NAME}).encode(),
        expect=415,
    )
    await call(
        "create-text",
        "write",
        "POST",
        "Patient",
        headers={**auth, "Content-Type": "text/plain"},
        data=f"{NAME} {BIRTH}".encode(),
        expect=415,
    )
    for mode in ("500", "bad-json", "not-fhir", "redirect"):
        await call(
            f"upstream-{mode}",
            mode,
            "GET",
            f"Patient?{q([('name', NAME)])}",
            headers=auth,
            expect=502,
        )
    await call(
        "upstream-timeout",
        "slow",
        "GET",
        f"Patient?{q([('name', NAME)])}",
        headers=auth,
        expect=504,
    )
    await call("method", "read", "PATCH", f"Patient?{q([('_format', 'json')])}", headers=auth)
    await call(
        "method-override",
        "read",
        "GET",
        f"Patient/{PID}",
        headers={**auth, "X-HTTP-Method-Override": "DELETE"},
        expect=400,
    )
    # ---- protocol errors below the application (the parser's own error path)
    for raw in (
        f"GET /r4/Patient?name={NAME} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        f"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        f"GET /r4/Patient?name={NAME} HTTP/1.1\r\nHost: x\r\nX-Big: {NAME * 1000}\r\n\r\n",
        f"GET /r4/Patient?name={NAME}\x00{PHONE} HTTP/1.1\r\nHost: x\r\n\r\n",
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", raw_port)
        writer.write(raw.encode("latin-1"))
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), 5)
        writer.close()
        out.append(Outcome("protocol", int(answer.split(b" ", 2)[1] or 0), {}, answer))
    return out, tokens


def renderings(record: logging.LogRecord) -> list[str]:
    """Every way a handler could render a record: message, args, fields, formatters."""
    texts = [str(record.msg), repr(record.args), repr(getattr(record, "fields", None))]
    try:
        texts.append(record.getMessage())
    except Exception:  # a broken format string is not our concern here
        texts.append("<unformattable>")
    texts.append(JsonFormatter().format(record))
    plain = logging.Formatter("%(levelname)s %(name)s %(message)s")
    texts.append(plain.format(record))  # includes the traceback, if any
    if record.exc_info:
        texts.append(plain.formatException(record.exc_info))
    texts.append(repr(record.__dict__))
    return texts


def upstream_side(record: logging.LogRecord) -> bool:
    """An access-log line of the in-process fake upstream or test issuer (the gateway's own
    runner has ``access_log=None``): their request lines start with their own paths."""
    text = record.getMessage()
    return any(
        f'"{m} /{p}' in text
        for m in ("GET", "POST", "PUT", "HEAD")
        for p in ("fhir", "jwks", ".well-known")
    )


def check_answers(outcomes: list[Outcome], markers: list[str]) -> None:
    for o in outcomes:
        if o.label in ("search", "cursor", "read", "read-if-none-match", "post-search"):
            # PHI responses: never cached, never sniffed, no upstream cookies
            assert o.headers.get("Cache-Control") == "no-store", o.label
            assert o.headers.get("Pragma") == "no-cache", o.label
            assert o.headers.get("X-Content-Type-Options") == "nosniff", o.label
            assert "Set-Cookie" not in o.headers, o.label
            for value in o.headers.values():
                assert NAME not in value, (o.label, value)
            continue
        if o.label.startswith(("search-", "confined", "create", "update", "protocol")):
            continue
        # every error body is a fixed, PHI-free OperationOutcome
        text = o.body.decode("utf-8", "replace")
        for marker in markers:
            assert marker not in text, (o.label, marker, text[:300])
        for name, value in o.headers.items():
            for marker in markers:
                assert marker not in value, (o.label, name)


def assert_no_marker(texts: list[str], markers: list[str], where: str) -> None:
    for text in texts:
        for marker in markers:
            assert marker not in text, f"{where}: marker {marker[:40]!r} in {text[:400]!r}"


# ---------------------------------------------------------------- in process


async def test_no_phi_in_any_log_record(
    gateway_factory: GatewayFactory,
    fake_upstream: FakeUpstream,
    issuer: TestIssuer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in (
        "gateway",
        "aiohttp",
        "aiohttp.access",
        "aiohttp.server",
        "aiohttp.client",
        "aiohttp.web",
        "aiohttp.internal",
        "asyncio",
    ):
        caplog.set_level(logging.DEBUG, logger=name)
    gw = await gateway_factory(**LIMITS)
    script = Script(fake_upstream)
    outcomes, tokens = await scenario(gw.session, gw.base, script, issuer, gw.port)
    markers = [*FIXED_MARKERS, *tokens]

    records = list(caplog.records)
    access = [r for r in records if r.name == "gateway.access"]
    assert len(access) >= len([o for o in outcomes if o.label != "protocol"]) - 1, (
        "the scenario must actually be logged"
    )
    for record in records:
        if record.name == "aiohttp.access" and upstream_side(record):
            continue  # the fake upstream's own access log (what the upstream sees, see below)
        assert_no_marker(renderings(record), markers, f"log record {record.name}")
    # the upstream's view: no PHI search parameter in any URL it received
    for rec in fake_upstream.requests:
        query = rec.query
        for marker in (NAME, BIRTH, PHONE, EMAIL, f"Patient%2F{PID}", BAD_TOKEN):
            assert marker not in query, (marker, rec.raw_target)
    check_answers(outcomes, markers)
    # the upstream answered with markers in every place: the checks above were not vacuous
    assert "search" in script.answers and "500" in script.answers and "slow" in script.answers


async def test_phi_search_never_in_the_access_log_route(
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    auth: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    Script(fake_upstream)
    target = URL(f"{gateway.base}/Patient?{q([('name', NAME)])}", encoded=True)
    async with gateway.session.get(target, headers=auth) as resp:
        assert resp.status == 200
    [record] = [r for r in caplog.records if r.name == "gateway.access"]
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["route"] == "Patient?search"
    assert fields["method"] == "GET"
    assert fields["status"] == 200


# ---------------------------------------------------------------- through the real CLI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_no_phi_on_the_cli_stderr(
    fake_upstream: FakeUpstream, issuer: TestIssuer, tmp_path: Path
) -> None:
    port = free_port()
    config = {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "public_base_url": PUBLIC_BASE,
            "admin_port": None,
            "max_request_body_bytes": 4096,
        },
        "upstream": {"url": fake_upstream.base_url, "timeout_s": 0.5},
        "auth": {"jwt": [{"issuer": issuer.url, "jwks_uri": issuer.jwks_uri}]},
        "logging": {"level": "DEBUG", "access_log": True},
        # audit records name patients by design: they go to their own file, not the log stream
        "audit": {"file": str(tmp_path / "audit.jsonl")},
    }
    cfg_file = tmp_path / "gateway.yaml"
    cfg_file.write_text(yaml.safe_dump(config))
    stderr_file = tmp_path / "stderr.log"
    repo = REPO
    with stderr_file.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(cfg_file),
            cwd=repo,
            stdout=err,
            stderr=err,
        )
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert proc.returncode is None, stderr_file.read_text()
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"gateway not ready: {stderr_file.read_text()}")
            outcomes, tokens = await scenario(
                session, f"http://127.0.0.1:{port}/r4", Script(fake_upstream), issuer, port
            )
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    text = stderr_file.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    assert sum(1 for e in events if e.get("event") == "access") >= 30, text[-2000:]
    assert any(e.get("event") == "stopped" for e in events), text[-2000:]
    assert_no_marker(lines, [*FIXED_MARKERS, *tokens], "gateway stderr")
    check_answers(outcomes, [*FIXED_MARKERS, *tokens])
