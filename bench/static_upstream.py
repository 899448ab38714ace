"""A fast static FHIR responder for benchmarks: the gateway, not the upstream, is the bottleneck.

Run: python bench/static_upstream.py PORT [asyncio|aiohttp]. Not a FHIR server: it answers from
bodies built once at start-up, either from a bare asyncio protocol (``asyncio``, the default: on
uvloop, tens of thousands of requests/s, faster than nginx can proxy) or from a minimal
``aiohttp.web`` application (``aiohttp``: a few thousand requests/s, still several times what
any proxy in front of it can forward, so the proxy stays the bottleneck):

- ``GET .../Patient/{id}``: a ~2 KB Patient (``bench-1``)
- ``GET|POST .../Observation[/_search]``: a searchset Bundle of laboratory Observations for
  ``Patient/bench-1``: 50 entries (~60 KB), or 1,000 entries (~1 MB) when the query or form
  carries ``_count=1000``; two of the 50 are ``preliminary`` (the shipped unreleased-labs policy
  withholds them from patient-facing callers)
- ``GET .../Binary/{id}``: 50 MB of ``application/octet-stream``
- ``GET .../metadata``: a small CapabilityStatement

The bodies are also importable (``bench.static_upstream.observation_bundle``) for the codec check.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, ClassVar

PATIENT_ID = "bench-1"
BINARY_BYTES = 50 * 1024 * 1024

PATIENT = {
    "resourceType": "Patient",
    "id": PATIENT_ID,
    "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00Z"},
    "text": {
        "status": "generated",
        "div": '<div xmlns="http://www.w3.org/1999/xhtml">' + "x" * 900 + "</div>",
    },
    "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}],
    "active": True,
    "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"]}],
    "telecom": [{"system": "phone", "value": "(03) 5555 6473", "use": "work"}],
    "gender": "male",
    "birthDate": "1974-12-25",
    "address": [
        {
            "use": "home",
            "line": ["534 Erewhon St"],
            "city": "PleasantVille",
            "postalCode": "3999",
            "country": "AU",
        }
    ],
    "extension": [{"url": "http://example.org/weight", "valueDecimal": 72.5}],
}
# the decimal keeps its precision on the wire (72.50), as a FHIR server would send it
PATIENT_BODY = json.dumps(PATIENT).replace("72.5}", "72.50}").encode()

_OBS = (
    '{{"fullUrl":"{base}/Observation/obs-{i}","resource":{{"resourceType":"Observation",'
    '"id":"obs-{i}","meta":{{"versionId":"1","lastUpdated":"2026-01-0{d}T08:00:00Z"}},'
    '"text":{{"status":"generated","div":"<div xmlns=\\"http://www.w3.org/1999/xhtml\\">'
    "Hemoglobin [Mass/volume] in Blood: {v} g/dL (reference 13.0-17.0), sample {i}, drawn at "
    'the outpatient laboratory, verified by the laboratory information system.</div>"}},'
    '"status":"{status}","category":[{{"coding":[{{"system":'
    '"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory",'
    '"display":"Laboratory"}}]}}],"code":{{"coding":[{{"system":"http://loinc.org",'
    '"code":"718-7","display":"Hemoglobin [Mass/volume] in Blood"}}],"text":"Hemoglobin"}},'
    '"subject":{{"reference":"Patient/{pid}"}},"effectiveDateTime":"2026-01-0{d}T08:00:00Z",'
    '"issued":"2026-01-0{d}T09:30:00.000Z","performer":[{{"reference":"Organization/lab-1",'
    '"display":"Acme Laboratory"}}],"valueQuantity":{{"value":{v},"unit":"g/dL",'
    '"system":"http://unitsofmeasure.org","code":"g/dL"}},"interpretation":[{{"coding":[{{'
    '"system":"http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",'
    '"code":"N","display":"Normal"}}]}}],"referenceRange":[{{"low":{{"value":13.0,'
    '"unit":"g/dL","system":"http://unitsofmeasure.org","code":"g/dL"}},"high":{{"value":17.0,'
    '"unit":"g/dL","system":"http://unitsofmeasure.org","code":"g/dL"}}}}]}},'
    '"search":{{"mode":"match"}}}}'
)


def observation_bundle(n: int, base: str = "http://upstream.invalid/fhir") -> bytes:
    """A searchset of ``n`` laboratory Observations for Patient/bench-1, decimals as sent."""
    entries = [
        _OBS.format(
            base=base,
            i=i,
            d=1 + i % 9,
            v=f"{13 + (i % 40) / 10:.2f}",  # 13.00 .. 16.90: trailing zeros matter
            pid=PATIENT_ID,
            status="preliminary" if i % 25 == 7 else "final",
        )
        for i in range(n)
    ]
    head = (
        f'{{"resourceType":"Bundle","id":"search-{n}","type":"searchset","total":{n},'
        f'"link":[{{"relation":"self","url":"{base}/Observation?patient={PATIENT_ID}&_count={n}"}}],'
    )
    return (head + '"entry":[' + ",".join(entries) + "]}").encode()


METADATA = json.dumps(
    {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-01-01",
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{"mode": "server", "resource": [{"type": "Patient"}, {"type": "Observation"}]}],
    }
).encode()

FHIR = b"application/fhir+json; charset=utf-8"


def _head(status: bytes, ctype: bytes, length: int) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
        b"" + str(length).encode() + b"\r\nConnection: keep-alive\r\n\r\n"
    )


class Responder(asyncio.Protocol):
    """HTTP/1.1 keep-alive, Content-Length bodies only: enough for wrk, nginx and the gateway."""

    answers: ClassVar[dict[str, bytes]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            self.answer(head.split(" ", 2)[1], body)

    def answer(self, target: str, body: bytes) -> None:
        path, _, query = target.partition("?")
        a = self.answers
        if "/Observation" in path:
            big = "_count=1000" in query or b"_count=1000" in body
            self.transport.write(a["obs1000" if big else "obs50"])  # type: ignore[attr-defined]
        elif "/Binary/" in path:
            self.transport.write(a["binary_head"])  # type: ignore[attr-defined]
            self.transport.write(a["binary"])  # type: ignore[attr-defined]
        elif "/Patient/" in path:
            self.transport.write(a["patient"])  # type: ignore[attr-defined]
        elif path.endswith("/metadata"):
            self.transport.write(a["metadata"])  # type: ignore[attr-defined]
        else:
            msg = b'{"resourceType":"OperationOutcome","issue":[]}'
            self.transport.write(_head(b"404 Not Found", FHIR, len(msg)) + msg)  # type: ignore[attr-defined]


def build_answers(port: int) -> dict[str, bytes]:
    base = f"http://127.0.0.1:{port}/fhir"
    o50, o1000 = observation_bundle(50, base), observation_bundle(1000, base)
    return {
        "patient": _head(b"200 OK", FHIR, len(PATIENT_BODY)) + PATIENT_BODY,
        "obs50": _head(b"200 OK", FHIR, len(o50)) + o50,
        "obs1000": _head(b"200 OK", FHIR, len(o1000)) + o1000,
        "metadata": _head(b"200 OK", FHIR, len(METADATA)) + METADATA,
        "binary_head": _head(b"200 OK", b"application/octet-stream", BINARY_BYTES),
        "binary": bytes(BINARY_BYTES),
    }


def aiohttp_app(port: int) -> Any:
    """The same answers from a minimal aiohttp.web application."""
    from aiohttp import web

    base = f"http://127.0.0.1:{port}/fhir"
    o50, o1000 = observation_bundle(50, base), observation_bundle(1000, base)
    fhir = FHIR.decode()
    binary = bytes(BINARY_BYTES)

    async def answer(request: web.Request) -> web.Response:
        path = request.path
        if "/Observation" in path:
            form = await request.read()
            big = "_count=1000" in request.query_string or b"_count=1000" in form
            body = o1000 if big else o50
            return web.Response(body=body, headers={"Content-Type": fhir})
        if "/Binary/" in path:
            return web.Response(body=binary, headers={"Content-Type": "application/octet-stream"})
        if "/Patient/" in path:
            return web.Response(body=PATIENT_BODY, headers={"Content-Type": fhir})
        if path.endswith("/metadata"):
            return web.Response(body=METADATA, headers={"Content-Type": fhir})
        msg = b'{"resourceType":"OperationOutcome","issue":[]}'
        return web.Response(status=404, body=msg, headers={"Content-Type": fhir})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def main() -> None:
    port = int(sys.argv[1])
    kind = sys.argv[2] if len(sys.argv) > 2 else "asyncio"
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if kind == "aiohttp":
        from aiohttp import web

        web.run_app(aiohttp_app(port), host="127.0.0.1", port=port, access_log=None, print=None)
        return
    Responder.answers = build_answers(port)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Responder, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(run())


if __name__ == "__main__":
    main()
