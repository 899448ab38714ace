"""A fast static FHIR responder for benchmarks: the same ~2 KB Patient for every GET.

Run: python bench/static_upstream.py PORT. Not a FHIR server; it exists so the gateway, not the
upstream, is the bottleneck of a benchmark.
"""

from __future__ import annotations

import json
import sys

from aiohttp import web

PATIENT = {
    "resourceType": "Patient",
    "id": "bench-1",
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
    "extension": [{"url": "http://example.org/weight", "valueDecimal": 72.50}],
}
BODY = json.dumps(PATIENT).encode()


async def answer(_: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="application/fhir+json")


def main() -> None:
    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
