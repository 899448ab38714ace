"""Attack review: robustness against pathological inputs (nesting, numbers, sizes, shapes).

Every test asserts the SAFE behaviour: a client's bad input is a 4xx OperationOutcome, an
upstream's bad answer a 502/503/504 OperationOutcome; never a 500 (``reason="internal"``),
never a hang. Tests whose docstring starts with ``Found in review:`` failed when the review
wrote them: each pins the fix of a real gap.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from tests.conftest import GatewayFactory
from tests.support.fake_upstream import FakeUpstream, Recorded
from tests.support.gateway import RunningGateway

FHIR = "application/fhir+json"
TIMEOUT = aiohttp.ClientTimeout(total=10)


def nested(depth: int) -> str:
    """A Patient whose ``extension`` nests ``depth`` arrays deep (valid JSON)."""
    return '{"resourceType": "Patient", "id": "p1", "extension": ' + "[" * depth + "]" * depth + "}"


async def call(
    gw: RunningGateway, method: str, path: str, headers: dict[str, str], **kw: Any
) -> tuple[int, bytes, Any]:
    async with gw.session.request(
        method,
        URL(gw.base + path, encoded=True),
        headers=headers,
        allow_redirects=False,
        timeout=TIMEOUT,
        **kw,
    ) as resp:
        return resp.status, await resp.read(), resp.headers


def assert_outcome(status: int, body: bytes, allowed: set[int]) -> None:
    assert status in allowed, (status, body[:300])
    doc = json.loads(body)
    assert doc["resourceType"] == "OperationOutcome"
    assert "Traceback" not in body.decode()


def no_internal(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if "unhandled-exception" in r.getMessage()]
    assert not bad, [r.getMessage() for r in bad]


def answer_bytes(body: bytes, ctype: str = FHIR, status: int = 200, **headers: str):
    async def answer(_: web.Request, __: Recorded) -> web.StreamResponse:
        return web.Response(status=status, body=body, headers={"Content-Type": ctype, **headers})

    return answer


CLIENT_4XX = {400, 413, 414, 422, 431}
UPSTREAM_5XX = {502, 503, 504}


# ============================================================== deep nesting


@pytest.mark.parametrize("depth", [2_000, 10_000])
async def test_deeply_nested_create_body_is_a_client_error(
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    auth: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    depth: int,
) -> None:
    """Found in review: a create body nesting 2,000+ arrays makes msgspec raise
    ``RecursionError`` in ``gateway/fhir/json.decode`` (only ``DecodeError`` /
    ``UnicodeDecodeError`` are caught), called from ``ingress.read_body``; the edge
    middleware renders it as a 500 with ``reason="internal"``. Expected: 400."""
    caplog.set_level(logging.INFO)
    headers = {**auth, "Content-Type": FHIR}
    status, body, _ = await call(gateway, "POST", "/Patient", headers, data=nested(depth))
    assert_outcome(status, body, CLIENT_4XX)
    no_internal(caplog)
    assert fake_upstream.requests == []


async def test_deeply_nested_batch_body_is_a_client_error(
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    auth: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found in review: the same ``RecursionError`` -> 500 for a batch Bundle whose one
    entry's resource nests 5,000 arrays deep (POST to the base)."""
    caplog.set_level(logging.INFO)
    entry = '{"request": {"method": "POST", "url": "Patient"}, "resource": ' + nested(5_000) + "}"
    bundle = '{"resourceType": "Bundle", "type": "batch", "entry": [' + entry + "]}"
    headers = {**auth, "Content-Type": FHIR}
    status, body, _ = await call(gateway, "POST", "", headers, data=bundle)
    assert_outcome(status, body, CLIENT_4XX)
    no_internal(caplog)
    assert fake_upstream.requests == []


async def test_moderately_nested_create_body_does_not_crash(
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    auth: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Depth 900 is within the decoder's limit: policy evaluation, reference scanning and
    re-encoding must still not recurse into a 500 (they are iterative or fine at 900)."""
    caplog.set_level(logging.INFO)
    headers = {**auth, "Content-Type": FHIR}
    status, body, _ = await call(gateway, "POST", "/Patient", headers, data=nested(900))
    assert status != 500, body[:300]
    no_internal(caplog)


@pytest.mark.parametrize("depth", [2_000, 10_000])
async def test_deeply_nested_upstream_read_is_502(
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    auth: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    depth: int,
) -> None:
    """Found in review: an upstream read answer nesting 2,000+ arrays raises
    ``RecursionError`` in ``gateway/fhir/json.decode`` (via ``respond.decode_resource`` /
    ``json_response``); the client gets a 500 ``reason="internal"`` instead of a 502."""
    caplog.set_level(logging.INFO)
    fake_upstream.reply(answer_bytes(nested(depth).encode()))
    status, body, _ = await call(gateway, "GET", "/Patient/p1", auth)
    assert_outcome(status, body, UPSTREAM_5XX)
    no_internal(caplog)


async def test_deeply_nested_upstream_searchset_is_502(
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    auth: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found in review: a searchset whose one resource nests 5,000 arrays deep: same
    ``RecursionError`` -> 500 on the search path."""
    caplog.set_level(logging.INFO)
    doc = (
        '{"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": '
        + nested(5_000)
        + "}]}"
    )
    fake_upstream.reply(answer_bytes(doc.encode()))
    status, body, _ = await call(gateway, "GET", "/Patient?name=x", auth)
    assert_outcome(status, body, UPSTREAM_5XX)
    no_internal(caplog)


async def test_deeply_nested_stored_resource_for_patch_is_502(
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    auth: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found in review: the upstream answers a (clinician) PATCH with a resource nesting
    5,000 arrays: ``RecursionError`` in ``fhir/json.decode`` via ``respond.decode_resource``
    -> 500 ``reason="internal"`` instead of 502."""
    caplog.set_level(logging.INFO)
    fake_upstream.reply(answer_bytes(nested(5_000).encode()))
    patch = [{"op": "replace", "path": "/id", "value": "p1"}]
    headers = {**auth, "Content-Type": "application/json-patch+json"}
    status, body, _ = await call(gateway, "PATCH", "/Patient/p1", headers, data=json.dumps(patch))
    assert status != 500, body[:300]
    assert_outcome(status, body, UPSTREAM_5XX | CLIENT_4XX)
    no_internal(caplog)


# ============================================================== huge numbers


@pytest.mark.parametrize("number", ["1e999999", "-1e-999999", "9" * 10_000, "0." + "1" * 10_000])
async def test_huge_numbers_in_a_create_body_are_never_500(
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    auth: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    number: str,
) -> None:
    """Extreme decimals / 10,000-digit integers: either forwarded exactly or refused 400.
    (The upstream echoes the bytes it got, so the answer carries the same number back.)"""
    caplog.set_level(logging.INFO)

    async def echo(_: web.Request, rec: Recorded) -> web.StreamResponse:
        return web.Response(status=201, body=rec.body, headers={"Content-Type": FHIR})

    fake_upstream.reply(echo)
    text = '{"resourceType": "Observation", "status": "final", "code": {"text": "x"}, '
    text += '"valueQuantity": {"value": ' + number + "}}"
    headers = {**auth, "Content-Type": FHIR}
    status, body, _ = await call(gateway, "POST", "/Observation", headers, data=text)
    assert status in {201, 400, 403, 422}, (status, body[:300])
    no_internal(caplog)
    if status == 201:
        assert number in fake_upstream.requests[-1].body.decode()


@pytest.mark.parametrize("number", ["1e999999", "9" * 10_000, "-0.0000e-99999"])
async def test_huge_numbers_in_an_upstream_searchset_are_never_500(
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    auth: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    number: str,
) -> None:
    caplog.set_level(logging.INFO)
    res = '{"resourceType": "Observation", "id": "o1", "valueQuantity": {"value": ' + number
    doc = '{"resourceType": "Bundle", "type": "searchset", "total": ' + number
    doc += ', "entry": [{"resource": ' + res + "}}}]}"
    fake_upstream.reply(answer_bytes(doc.encode()))
    status, body, _ = await call(gateway, "GET", "/Observation?code=x", auth)
    assert status in {200} | UPSTREAM_5XX, (status, body[:300])
    no_internal(caplog)


# ============================================================== query strings


@pytest.mark.parametrize(
    "query",
    [
        "&".join(f"_id=p{i}" for i in range(10_000)),
        "name=" + "a" * 100_000,
        "&".join(f"_include=Patient:organization{i}" for i in range(1_000)),
        "&".join("_count=5" for _ in range(500)),
        "&".join(f"{'A' * 8}{i:08d}=x" for i in range(5_000)),
        "name=%FF%FE%00",
        "name=" + "%" * 50,
    ],
    ids=["10k-ids", "100kb-value", "1k-include", "500-count", "5k-names", "bad-utf8", "bad-pct"],
)
async def test_pathological_query_strings_are_a_definite_answer(
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    auth: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    query: str,
) -> None:
    caplog.set_level(logging.INFO)
    status, body, _ = await call(gateway, "GET", "/Patient?" + query, auth)
    assert status in {200} | CLIENT_4XX, (status, body[:300])
    if status != 200:
        assert_outcome(status, body, CLIENT_4XX)
    no_internal(caplog)


async def test_huge_form_search_body_is_a_definite_answer(
    gateway: RunningGateway, auth: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    form = "&".join(f"_id=p{i}" for i in range(20_000))
    headers = {**auth, "Content-Type": "application/x-www-form-urlencoded"}
    status, body, _ = await call(gateway, "POST", "/Patient/_search", headers, data=form)
    assert status in {200} | CLIENT_4XX, (status, body[:300])
    no_internal(caplog)


# ============================================================== large batches and patches


async def test_batch_with_10000_entries_is_a_definite_answer(
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    auth: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    entries = [{"request": {"method": "GET", "url": f"Patient/p{i}"}} for i in range(10_000)]
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": entries}
    headers = {**auth, "Content-Type": FHIR}
    status, body, _ = await call(gateway, "POST", "", headers, data=json.dumps(bundle))
    assert status in {200} | CLIENT_4XX | UPSTREAM_5XX, (status, body[:300])
    no_internal(caplog)


async def test_transaction_over_the_body_cap_is_413(
    gateway_factory: GatewayFactory,
    fake_upstream: FakeUpstream,
    auth: dict[str, str],
) -> None:
    gw = await gateway_factory(server={"max_request_body_bytes": 4096})
    entries = [
        {"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient"}}
        for _ in range(200)
    ]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    headers = {**auth, "Content-Type": FHIR}
    status, body, _ = await call(gw, "POST", "", headers, data=json.dumps(bundle))
    assert_outcome(status, body, {413})
    assert fake_upstream.requests == []


async def test_json_patch_with_10000_ops_is_a_definite_answer(
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    auth: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    ops = [{"op": "add", "path": "/extension/-", "value": {"url": "u"}} for _ in range(10_000)]
    ops.insert(0, {"op": "add", "path": "/extension", "value": []})
    headers = {**auth, "Content-Type": "application/json-patch+json"}
    status, body, _ = await call(gateway, "PATCH", "/Patient/p1", headers, data=json.dumps(ops))
    assert status in {200, 201} | CLIENT_4XX | UPSTREAM_5XX, (status, body[:300])
    no_internal(caplog)


async def test_json_patch_building_deep_nesting_is_a_definite_answer(
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    issuer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found in review: two ops, each within the decoder's depth limit, build a 1,800-deep
    structure while a patient-context PATCH is applied locally: ``RecursionError`` in
    ``copy.deepcopy`` inside ``jsonpatch.apply_patch`` (``access/writes.apply_patch``, from
    ``prechecks.precheck``), not among the caught exceptions -> 500 ``reason="internal"``."""
    caplog.set_level(logging.INFO)
    deep: Any = []
    for _ in range(900):
        deep = [deep]
    ops: list[dict[str, Any]] = [
        {"op": "add", "path": "/extension", "value": deep},
        {"op": "add", "path": "/extension" + "/0" * 899 + "/0", "value": deep},
    ]
    token = issuer.mint(scope="patient/*.cruds", patient="p1")  # patched locally, then judged
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json-patch+json"}
    status, body, _ = await call(gateway, "PATCH", "/Patient/p1", headers, data=json.dumps(ops))
    assert status in {200, 201} | CLIENT_4XX | UPSTREAM_5XX, (status, body[:300])
    no_internal(caplog)


# ============================================================== upstream searchset shapes

BAD_SEARCHSETS = [
    ("entry-dict", {"resourceType": "Bundle", "type": "searchset", "entry": {"resource": {}}}),
    ("entry-string", {"resourceType": "Bundle", "type": "searchset", "entry": "x"}),
    (
        "entry-items-not-objects",
        {"resourceType": "Bundle", "type": "searchset", "entry": [1, "a", None]},
    ),
    (
        "resource-not-object",
        {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": []}]},
    ),
    (
        "resource-type-int",
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": {"resourceType": 5, "id": "x"}}],
        },
    ),
    ("link-string", {"resourceType": "Bundle", "type": "searchset", "link": "next", "entry": []}),
    (
        "link-items-bad",
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": [1, {"relation": 5, "url": []}],
            "entry": [],
        },
    ),
    ("total-string", {"resourceType": "Bundle", "type": "searchset", "total": "many", "entry": []}),
    ("type-int", {"resourceType": "Bundle", "type": 7, "entry": []}),
    (
        "nested-bundle-bad",
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": {"resourceType": "Bundle", "entry": {"x": 1}}}],
        },
    ),
    (
        "search-mode-int",
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"search": {"mode": 3}, "resource": {"resourceType": "Patient", "id": "p"}}],
        },
    ),
    (
        "fullurl-int",
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"fullUrl": 5, "resource": {"resourceType": "Patient", "id": "p"}}],
        },
    ),
    (
        "id-object",
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": {"resourceType": "Patient", "id": {"a": 1}}}],
        },
    ),
    (
        "meta-security-string",
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [
                {"resource": {"resourceType": "Patient", "id": "p", "meta": {"security": "R"}}}
            ],
        },
    ),
    (
        "subject-ref-int",
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [
                {
                    "resource": {
                        "resourceType": "Observation",
                        "id": "o",
                        "subject": {"reference": 5},
                    }
                }
            ],
        },
    ),
]


@pytest.mark.parametrize("doc", [d for _, d in BAD_SEARCHSETS], ids=[n for n, _ in BAD_SEARCHSETS])
@pytest.mark.parametrize("confined_", [False, True], ids=["user", "patient"])
async def test_malformed_upstream_searchset_is_never_500(
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    issuer,
    caplog: pytest.LogCaptureFixture,
    doc: dict[str, Any],
    confined_: bool,
) -> None:
    caplog.set_level(logging.INFO)
    if confined_:
        token = issuer.mint(scope="patient/*.rs", patient="p")
    else:
        token = issuer.mint(
            scope="openid fhirUser user/*.cruds", patient=None, fhirUser="Practitioner/d"
        )
    fake_upstream.reply_json(doc)
    status, body, _ = await call(
        gateway, "GET", "/Observation?code=x", {"Authorization": f"Bearer {token}"}
    )
    assert status in {200, 403} | UPSTREAM_5XX, (status, body[:300])
    no_internal(caplog)


UPSTREAM_BYTES = [
    ("bom", b'\xef\xbb\xbf{"resourceType": "Patient", "id": "p1"}', FHIR, 200, {}),
    (
        "bad-utf8-in-string",
        b'{"resourceType": "Patient", "id": "p1", "name": [{"text": "\xff\xfe"}]}',
        FHIR,
        200,
        {},
    ),
    (
        "lone-surrogate",
        b'{"resourceType": "Patient", "id": "p1", "name": [{"text": "\\ud800"}]}',
        FHIR,
        200,
        {},
    ),
    ("nul-escape", b'{"resourceType": "Patient", "id": "p1\\u0000"}', FHIR, 200, {}),
    (
        "gzip-undeclared",
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xab\xae\x05\x00C\xbf\xa6\xa3\x02\x00\x00\x00",
        FHIR,
        200,
        {},
    ),
    ("gzip-declared-garbage", b"not gzip at all", FHIR, 200, {"Content-Encoding": "gzip"}),
    ("nan", b'{"resourceType": "Patient", "id": "p1", "x": NaN}', FHIR, 200, {}),
    ("trailing-garbage", b'{"resourceType": "Patient", "id": "p1"} {"a": 1}', FHIR, 200, {}),
    ("dup-keys", b'{"resourceType": "Patient", "id": "p1", "id": "p2"}', FHIR, 200, {}),
]


@pytest.mark.parametrize(
    ("body", "ctype", "status", "extra"),
    [u[1:] for u in UPSTREAM_BYTES],
    ids=[u[0] for u in UPSTREAM_BYTES],
)
async def test_odd_upstream_read_bytes_are_never_500(
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    auth: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    body: bytes,
    ctype: str,
    status: int,
    extra: dict[str, str],
) -> None:
    caplog.set_level(logging.INFO)
    fake_upstream.reply(answer_bytes(body, ctype, status, **extra))
    got, raw, _ = await call(gateway, "GET", "/Patient/p1", auth)
    assert got in {200} | UPSTREAM_5XX, (got, raw[:300])
    if got == 200:
        doc = json.loads(raw)
        assert doc.get("resourceType") == "Patient"
    no_internal(caplog)


async def test_empty_200_on_a_read_is_not_an_empty_success(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    """Found in review: a read answered 200 (or 204) with an empty body is relayed to the
    client as an empty 200 / 204 (``respond.json_response``: ``if not body: return
    web.Response(status=status, ...)``). A read's success must carry the resource the gateway
    verified; an empty success is the upstream's fault and should be a 502."""
    for status in (200, 204):
        fake_upstream.reply(answer_bytes(b"", FHIR, status))
        got, raw, _ = await call(gateway, "GET", "/Patient/p1", auth)
        assert got in UPSTREAM_5XX, (status, got, raw[:300])


async def test_content_length_larger_than_body_is_502(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    async def answer(request: web.Request, _: Recorded) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": FHIR})
        resp.content_length = 500
        await resp.prepare(request)
        await resp.write(b'{"resourceType": "Patient", "id": "p1"}')
        request.transport.close()  # type: ignore[union-attr]
        return resp

    fake_upstream.reply(answer)
    got, raw, _ = await call(gateway, "GET", "/Patient/p1", auth)
    assert_outcome(got, raw, UPSTREAM_5XX)


async def test_slowly_dribbled_json_past_the_timeout_is_504_or_502(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    """Bytes keep arriving every 0.1 s for 4 s (``upstream.timeout_s`` = 1): the timeout is a
    documented read/idle timeout (docs/configuration.md), so the gateway waits and then gives
    a definite, verified answer; it must neither hang nor relay a partial document."""
    gw = await gateway_factory(upstream={"timeout_s": 1})

    async def answer(request: web.Request, _: Recorded) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": FHIR})
        await resp.prepare(request)
        await resp.write(b'{"resourceType": "Patient", "id": "p1", "x": "')
        for _ in range(40):
            await asyncio.sleep(0.1)
            await resp.write(b"a")
        await resp.write(b'"}')
        return resp

    fake_upstream.reply(answer)
    loop = asyncio.get_running_loop()
    started = loop.time()
    got, raw, _ = await call(gw, "GET", "/Patient/p1", auth)
    assert got in {200} | UPSTREAM_5XX, (got, raw[:300])
    assert json.loads(raw)["resourceType"] in ("Patient", "OperationOutcome")
    assert loop.time() - started < 9


async def test_upstream_closing_mid_json_on_a_search_is_502(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    async def answer(request: web.Request, _: Recorded) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": FHIR})
        await resp.prepare(request)  # chunked
        await resp.write(b'{"resourceType": "Bundle", "type": "searchset", "entry": [{"reso')
        request.transport.close()  # type: ignore[union-attr]
        return resp

    fake_upstream.reply(answer)
    got, raw, _ = await call(gateway, "GET", "/Patient?name=x", auth)
    assert_outcome(got, raw, UPSTREAM_5XX)


# ============================================================== cursors


@pytest.mark.parametrize(
    "cursor",
    [
        "A" * 200_000,
        "%00%01%02garbage%FF",
        "____----" * 50,
        "%E2%98%83%F0%9F%92%A9" * 20,
        "AQ" + "A" * 40,
        "=",
        "",
    ],
    ids=["200k", "binary", "b64-garbage", "unicode", "short-version", "padding", "empty"],
)
async def test_invalid_cursors_are_a_clean_4xx(
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    auth: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    cursor: str,
) -> None:
    caplog.set_level(logging.INFO)
    status, body, _ = await call(gateway, "GET", "?_cursor=" + cursor, auth)
    assert_outcome(status, body, CLIENT_4XX | {404})
    no_internal(caplog)
    assert fake_upstream.requests == []


# ============================================================== headers


async def test_two_hundred_headers_is_a_definite_answer(
    gateway: RunningGateway, auth: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    headers = {**auth, **{f"X-Junk-{i}": "v" for i in range(200)}}
    status, body, _ = await call(gateway, "GET", "/Patient/p1", headers)
    assert status in {200} | CLIENT_4XX, (status, body[:300])
    no_internal(caplog)


async def test_60kb_authorization_is_a_clean_4xx(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    headers = {"Authorization": "Bearer " + "a" * 60_000}
    status, body, _ = await call(gateway, "GET", "/Patient/p1", headers)
    assert status in {400, 401, 431}, (status, body[:300])
    assert b"aaaaaaaaaaaaaaaaaaaa" not in body
    assert fake_upstream.requests == []


async def raw_exchange(gw: RunningGateway, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), timeout=10)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "extra",
    [
        b"X-Evil: a\x00b\r\n",
        b"X-Evil: a\rb\r\n",
        b"Authorization: Bearer x\r\n",  # a second Authorization
        b"Host: evil.example\r\n",  # a second Host
    ],
    ids=["nul", "bare-cr", "dup-authorization", "dup-host"],
)
async def test_bad_or_duplicate_headers_on_the_wire_are_refused(
    gateway: RunningGateway, fake_upstream: FakeUpstream, token: str, extra: bytes
) -> None:
    req = (
        b"GET /r4/Patient/p1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Bearer {token}\r\n".encode()
        + extra
        + b"Connection: close\r\n\r\n"
    )
    raw = await raw_exchange(gateway, req)
    status = int(raw.split(b" ", 2)[1])
    assert status in {400, 401}, raw[:300]
    assert fake_upstream.requests == []
