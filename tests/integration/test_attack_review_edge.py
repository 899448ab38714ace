"""Attack review: edge cases not covered elsewhere (tokens, bodies, headers, cursors).

Every test asserts the SAFE behaviour. Tests whose docstring starts with ``Found in review:``
failed when the review (session 2) wrote them: each pins the fix of a real gap.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from yarl import URL

from tests.conftest import GatewayFactory
from tests.support.fake_upstream import FakeUpstream, Recorded
from tests.support.gateway import PUBLIC_BASE, RunningGateway
from tests.support.issuer import TestIssuer, sign

FHIR = "application/fhir+json"


def b64u(data: bytes | str | dict[str, Any]) -> str:
    if isinstance(data, dict):
        data = json.dumps(data)
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def netloc(fake: FakeUpstream) -> str:
    return urlsplit(fake.base_url).netloc


def confined(issuer: TestIssuer, patient: str = "pat-1", scope: str = "patient/*.cruds") -> str:
    return issuer.mint(scope=scope, patient=patient)


def signed_raw(issuer: TestIssuer, payload_text: str, **header: Any) -> str:
    """A compact JWS over a verbatim payload text, correctly signed by the issuer."""
    key = issuer.current_key
    head = {"alg": "RS256", "typ": "at+jwt", "kid": key.kid, **header}
    return sign(head, payload_text, key.private)


async def status_of(
    gw: RunningGateway, method: str, path: str, headers: dict[str, str], **kw: Any
) -> tuple[int, bytes, Any]:
    async with gw.session.request(
        method, URL(gw.base + path, encoded=True), headers=headers, allow_redirects=False, **kw
    ) as resp:
        return resp.status, await resp.read(), resp.headers


# ============================================================== tokens (over HTTP)


async def test_jws_json_serialization_is_refused(
    gateway: RunningGateway, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    """A JWS in (base64url-wrapped) JSON serialization with two signatures, one forged and one
    valid, must not be accepted: only compact serialization exists for access tokens."""
    good = issuer.mint()
    head, payload, sig = good.split(".")
    general = {
        "payload": payload,
        "signatures": [
            {"protected": b64u({"alg": "none"}), "signature": ""},
            {"protected": head, "signature": sig},
        ],
    }
    for token in (
        b64u(general),
        b64u({"payload": payload, "protected": head, "signature": sig}),
        f"{head}.{payload}.{sig}.{sig}",
    ):
        status, _, hdrs = await status_of(gateway, "GET", "/Patient/pat-1", bearer(token))
        assert status == 401, token
        assert 'error="invalid_token"' in hdrs["WWW-Authenticate"]
    assert fake_upstream.requests == []


async def test_nested_jwt_is_refused(
    gateway: RunningGateway, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    """``cty: JWT`` with a signed inner JWT as payload: the outer payload is not a claims
    object, so no claims may be read from the inner token."""
    inner = issuer.mint()
    outer = signed_raw(issuer, inner, cty="JWT")
    status, _, _ = await status_of(gateway, "GET", "/Patient/pat-1", bearer(outer))
    assert status == 401
    assert fake_upstream.requests == []


async def test_duplicate_patient_claim_is_judged_on_one_value_only(
    gateway: RunningGateway, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    """``{"patient":"pat-1","patient":"pat-2"}``: RFC 7519 §4 allows the lexically last
    member to win. Whatever the gateway decides, it must not grant BOTH patients."""
    claims = issuer.claims(scope="patient/*.rs", patient="PLACEHOLDER")
    text = json.dumps(claims).replace(
        '"patient": "PLACEHOLDER"', '"patient": "pat-1", "patient": "pat-2"'
    )
    token = signed_raw(issuer, text)
    ok = []
    for pid in ("pat-1", "pat-2"):
        fake_upstream.reply_json({"resourceType": "Patient", "id": pid})
        status, _, _ = await status_of(gateway, "GET", f"/Patient/{pid}", bearer(token))
        ok.append(status == 200)
    assert sum(ok) <= 1


async def test_duplicate_alg_header_cannot_select_none(
    gateway: RunningGateway, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    """A header ``{"alg":"RS256", ..., "alg":"none"}`` with an empty signature."""
    kid = issuer.current_key.kid
    header = f'{{"alg":"RS256","typ":"at+jwt","kid":"{kid}","alg":"none"}}'
    token = f"{b64u(header)}.{b64u(issuer.claims())}."
    status, _, _ = await status_of(gateway, "GET", "/Patient/pat-1", bearer(token))
    assert status == 401
    assert fake_upstream.requests == []


async def test_token_for_a_patient_cannot_read_via_fhiruser_of_another_server(
    gateway: RunningGateway, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    """A patient-user token (fhirUser Patient on ANOTHER server, no patient claim) is confined:
    it never reads another patient of this server."""
    token = issuer.mint(
        scope="patient/*.rs", patient=None, fhirUser="https://other.example/fhir/Patient/pat-9"
    )
    status, _, _ = await status_of(gateway, "GET", "/Patient/pat-2", bearer(token))
    assert status in (401, 403, 404)
    assert all(r.path != "/fhir/Patient/pat-2" for r in fake_upstream.requests)


# ============================================================== request bodies


DUP_SUBJECT = (
    b'{"resourceType":"Observation","status":"final","code":{"text":"x"},'
    b'"subject":{"reference":"Patient/pat-2"},"subject":{"reference":"Patient/pat-1"}}'
)


async def test_duplicate_json_keys_in_create_body_never_reach_the_upstream(
    gateway: RunningGateway, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    """Found in review: a confined caller (patient pat-1) POSTs an Observation whose body holds
    ``subject`` twice: first ``Patient/pat-2``, then ``Patient/pat-1``. The gateway judges the
    last value (msgspec: last wins) and forwards the ORIGINAL bytes, so an upstream whose JSON
    parser keeps the first member (or merges) stores the Observation in pat-2's record: a
    write into another patient's compartment. Safe: refuse duplicate members (400) or send
    upstream exactly the document that was judged."""
    headers = {**bearer(confined(issuer)), "Content-Type": FHIR}
    status, body, _ = await status_of(gateway, "POST", "/Observation", headers, data=DUP_SUBJECT)
    assert all(b"pat-2" not in r.body for r in fake_upstream.requests), (status, body)


async def test_duplicate_json_keys_in_json_patch_never_reach_the_upstream(
    gateway: RunningGateway, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    """Found in review: JSON Patch op with ``value`` twice (pat-2 then pat-1): the gateway
    applies the last one to the stored version and judges it; what the upstream gets must not
    carry pat-2."""
    stored = {
        "resourceType": "Observation",
        "id": "o1",
        "meta": {"versionId": "3"},
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "Patient/pat-1"},
    }

    async def answer(_: web.Request, rec: Recorded) -> web.StreamResponse:
        if rec.method == "GET":
            return web.json_response(stored, content_type=FHIR, headers={"ETag": 'W/"3"'})
        return web.json_response(stored, content_type=FHIR)

    fake_upstream.reply(answer)
    patch = (
        b'[{"op":"replace","path":"/subject/reference",'
        b'"value":"Patient/pat-2","value":"Patient/pat-1"}]'
    )
    headers = {**bearer(confined(issuer)), "Content-Type": "application/json-patch+json"}
    status, body, _ = await status_of(gateway, "PATCH", "/Observation/o1", headers, data=patch)
    writes = [r for r in fake_upstream.requests if r.method != "GET"]
    assert all(b"pat-2" not in r.body for r in writes), (status, body, writes)


# ============================================================== upstream response headers


async def test_location_with_userinfo_on_the_upstream_host_is_not_leaked(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    """Found in review: ``Location: http://svc@<upstream-host>/internal/...``: the header rewriter
    compares ``urlsplit(...).netloc`` (which includes the userinfo) with the upstream netloc,
    so the upstream host passes to the client unchanged. Safe: compare the hostname/port."""
    origin = fake_upstream.base_url.removesuffix("/fhir")
    leaky = origin.replace("http://", "http://svc@") + "/internal/Patient/new-1"
    fake_upstream.reply_json(
        {"resourceType": "Patient", "id": "new-1"}, status=201, headers={"Location": leaky}
    )
    status, _, hdrs = await status_of(
        gateway,
        "POST",
        "/Patient",
        {**auth, "Content-Type": FHIR},
        json={"resourceType": "Patient"},
    )
    assert status == 201
    assert all(netloc(fake_upstream) not in v for v in hdrs.values()), dict(hdrs)


async def test_warning_header_does_not_name_the_upstream(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    """Found in review: ``Warning`` is on the response allow-list and not rewritten; its warn-agent
    field is, by RFC 7234 §5.5, the host[:port] of the server that added it, i.e. the
    upstream's internal name. Safe: drop ``Warning`` (deprecated by RFC 9111) or scrub it."""
    fake_upstream.reply_json(
        {"resourceType": "Patient", "id": "p1"},
        headers={"Warning": f'199 {netloc(fake_upstream)} "served from replica db-2"'},
    )
    status, _, hdrs = await status_of(gateway, "GET", "/Patient/p1", auth)
    assert status == 200
    assert all(netloc(fake_upstream) not in v for v in hdrs.values()), dict(hdrs)


async def test_other_upstream_headers_do_not_reach_the_client(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    """``Link`` naming the upstream, ``WWW-Authenticate``, ``Refresh``, ``Content-Security-
    Policy``, ``X-Frame-Options`` overrides, ``Alt-Svc``, ``Report-To``: none passes."""
    up = fake_upstream.base_url
    fake_upstream.reply_json(
        {"resourceType": "Patient", "id": "p1"},
        headers={
            "Link": f'<{up}/Patient/p1>; rel="canonical"',
            "WWW-Authenticate": 'Basic realm="upstream-admin"',
            "Refresh": f"0; url={up}/admin",
            "Report-To": f'{{"url":"{up}/r"}}',
            "X-Upstream-Node": netloc(fake_upstream),
            "Cache-Control": "public, max-age=9999",
        },
    )
    status, _, hdrs = await status_of(gateway, "GET", "/Patient/p1", auth)
    assert status == 200
    for name in ("Link", "WWW-Authenticate", "Refresh", "Report-To", "X-Upstream-Node"):
        assert name not in hdrs, name
    assert hdrs["Cache-Control"] == "no-store"
    assert all(netloc(fake_upstream) not in v for v in hdrs.values())


async def test_upstream_401_with_challenge_is_not_relayed_as_the_clients_challenge(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    """An upstream 401 (gateway's own upstream credentials wrong) must not carry the
    upstream's Basic challenge to the client."""
    fake_upstream.reply_json(
        {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "login"}]},
        status=401,
        headers={"WWW-Authenticate": 'Basic realm="upstream"'},
    )
    _, _, hdrs = await status_of(gateway, "GET", "/Patient/p1", auth)
    assert "Basic" not in hdrs.get("WWW-Authenticate", "")


async def test_upstream_html_body_is_not_relayed(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    """An HTML error page (stack trace, host names) on a 4xx or 200 is never relayed."""

    async def answer(_: web.Request, __: Recorded) -> web.StreamResponse:
        return web.Response(
            status=400,
            text=f"<html><script>alert(1)</script>{netloc(fake_upstream)}</html>",
            content_type="text/html",
        )

    fake_upstream.reply(answer)
    for path in ("/Patient/p1", "/Observation?code=x"):
        status, body, hdrs = await status_of(gateway, "GET", path, auth)
        assert status == 502
        assert b"<script>" not in body and netloc(fake_upstream).encode() not in body
        assert hdrs["Content-Type"].startswith(FHIR)


async def test_bare_upstream_host_in_an_error_body_is_not_leaked(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    """Found in review: an upstream OperationOutcome whose diagnostics name the upstream host
    without a scheme (``HAPI-1234: failed to connect to 127.0.0.1:PORT``, a common shape of upstream
    error text) is relayed verbatim: the rewriter only matches ``http(s)://host``."""
    fake_upstream.reply_json(
        {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "error",
                    "code": "processing",
                    "diagnostics": f"Could not reach index at {netloc(fake_upstream)}/idx",
                }
            ],
        },
        status=400,
    )
    status, body, _ = await status_of(gateway, "GET", "/Observation?code=x", auth)
    assert netloc(fake_upstream).encode() not in body, (status, body)


async def test_userinfo_upstream_url_in_a_body_is_not_leaked(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    """Found in review: ``http://svc@<upstream-host>/...`` in a resource body: neither the byte pass
    nor the JSON walk matches a URL with userinfo, so the upstream host reaches the client."""
    origin = fake_upstream.base_url.removesuffix("/fhir")
    fake_upstream.reply_json(
        {
            "resourceType": "Patient",
            "id": "p1",
            "photo": [{"url": origin.replace("http://", "http://svc@") + "/blob/p1.png"}],
        }
    )
    status, body, _ = await status_of(gateway, "GET", "/Patient/p1", auth)
    assert status == 200
    assert netloc(fake_upstream).encode() not in body, body


# ============================================================== request headers upstream


async def test_prefer_handling_and_respond_async_do_not_escape_the_gateway(
    gateway: RunningGateway, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    """``Prefer: respond-async`` would make the upstream answer 202 with a polling URL outside
    the gateway's checks; for a confined search the result must still be verified or refused."""

    async def answer(_: web.Request, __: Recorded) -> web.StreamResponse:
        return web.Response(
            status=202, headers={"Content-Location": f"{fake_upstream.base_url}/$status/job-1"}
        )

    fake_upstream.reply(answer)
    headers = {**bearer(confined(issuer)), "Prefer": "respond-async"}
    status, body, hdrs = await status_of(gateway, "GET", "/Observation?code=x", headers)
    assert netloc(fake_upstream) not in json.dumps(dict(hdrs))
    # A 202 would hand the client an unverified async job: never relayed.
    assert status != 202, body


async def test_x_forwarded_prefix_and_port_are_not_forwarded(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    spoof = {
        "X-Forwarded-Prefix": "/evil",
        "X-Forwarded-Port": "6666",
        "X-Forwarded-Server": "evil.example",
        "X-Original-URL": "/fhir/Patient/other",
        "X-Rewrite-URL": "/fhir/Patient/other",
        "X-Real-IP": "6.6.6.6",
        "True-Client-IP": "6.6.6.6",
        "Client-IP": "6.6.6.6",
    }
    status, _, _ = await status_of(gateway, "GET", "/Patient/p1", {**auth, **spoof})
    assert status == 200
    [rec] = fake_upstream.requests
    for name in spoof:
        assert name not in rec.headers, name


# ============================================================== cursors


async def _first_page(
    gw: RunningGateway, fake: FakeUpstream, headers: dict[str, str], query: str
) -> dict[str, str]:
    async def answer(_: web.Request, rec: Recorded) -> web.StreamResponse:
        # like a real server: the self link shows the parameters used (the gateway's narrowing)
        used = rec.body.decode() if rec.method == "POST" else rec.raw_target.partition("?")[2]
        doc = {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": [
                {"relation": "self", "url": f"{fake.base_url}/{query.split('?')[0]}?{used}"},
                {"relation": "next", "url": f"{fake.base_url}/{query}&_offset=10"},
            ],
            "entry": [],
        }
        return web.json_response(doc, content_type=FHIR)

    fake.reply(answer)
    status, body, _ = await status_of(gw, "GET", "/" + query, headers)
    assert status == 200, body
    fake.requests.clear()
    return {link["relation"]: link["url"] for link in json.loads(body)["link"]}


def _cursor(url: str) -> str:
    assert url.startswith(PUBLIC_BASE + "?_cursor=")
    return url.split("?_cursor=", 1)[1]


async def test_cursor_of_a_clinician_is_not_followed_by_the_same_user_in_patient_context(
    gateway: RunningGateway, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    """Cursor minted for user-level access (no patient); the same user+client later holding a
    patient-context token must not reuse it (it would skip its compartment narrowing)."""
    clinician = bearer(issuer.mint(scope="user/*.rs patient/*.rs", patient=None))
    links = await _first_page(gateway, fake_upstream, clinician, "Observation?code=x")
    patient_ctx = bearer(issuer.mint(scope="patient/*.rs", patient="pat-1"))
    status, _, _ = await status_of(
        gateway, "GET", f"?_cursor={_cursor(links['next'])}", patient_ctx
    )
    assert status == 404
    assert fake_upstream.requests == []


async def test_cursor_on_a_resource_path_or_in_a_post_body_is_not_a_page(
    gateway: RunningGateway, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    """``Observation?_cursor=...``, ``POST _search`` with ``_cursor=`` in the form body and
    ``POST [base]?_cursor=``: none of them follows the cursor's (upstream) page link."""
    token = bearer(issuer.mint(scope="patient/*.rs", patient="pat-1"))
    links = await _first_page(gateway, fake_upstream, token, "Observation?code=x")
    cur = _cursor(links["next"])
    await status_of(gateway, "GET", f"/Observation?_cursor={cur}", token)
    await status_of(
        gateway,
        "POST",
        "/Observation/_search",
        {**token, "Content-Type": "application/x-www-form-urlencoded"},
        data=f"_cursor={cur}",
    )
    await status_of(gateway, "POST", f"?_cursor={cur}", {**token, "Content-Type": FHIR}, data=b"{}")
    for r in fake_upstream.requests:
        assert "_offset=10" not in r.raw_target and b"_offset=10" not in r.body, r


async def test_cursor_with_other_methods_is_refused(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    links = await _first_page(gateway, fake_upstream, auth, "Observation?code=x")
    cur = _cursor(links["next"])
    for method in ("DELETE", "PUT", "PATCH"):
        status, _, _ = await status_of(gateway, method, f"?_cursor={cur}", auth)
        assert status in (400, 405), method
    assert fake_upstream.requests == []


async def test_cursor_with_a_flipped_bit_anywhere_is_refused(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    """Flip one bit in every byte position of the sealed blob (AES-GCM must catch all)."""
    links = await _first_page(gateway, fake_upstream, auth, "Observation?code=x")
    blob = bytearray(base64.urlsafe_b64decode(_cursor(links["next"]) + "=="))
    for i in range(0, len(blob), max(1, len(blob) // 24)):
        mutated = bytearray(blob)
        mutated[i] ^= 0x01
        tok = base64.urlsafe_b64encode(bytes(mutated)).rstrip(b"=").decode()
        status, _, _ = await status_of(gateway, "GET", f"?_cursor={tok}", auth)
        assert status in (400, 404), i
    assert fake_upstream.requests == []


async def test_cursor_from_another_gateway_key_is_refused(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    gw_a = await gateway_factory()
    gw_b = await gateway_factory()
    links = await _first_page(gw_a, fake_upstream, auth, "Observation?code=x")
    status, _, _ = await status_of(gw_b, "GET", f"?_cursor={_cursor(links['next'])}", auth)
    assert status == 400
    assert fake_upstream.requests == []


# ============================================================== more body differentials


async def test_non_utf8_charset_is_not_forwarded_with_a_judged_body(
    gateway: RunningGateway, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    """Found in review: the gateway decodes every JSON body as UTF-8 but forwards the client's
    Content-Type verbatim, charset included. With ``charset=utf-7`` the bytes
    ``+ACI-`` are a plain string to the gateway and a ``"`` to an upstream that honours the
    charset, so a body judged as subject pat-1 can smuggle members the gateway never saw.
    Safe: refuse a charset other than UTF-8 (RFC 8259 §8.1) or send
    ``charset=utf-8`` upstream."""
    injected = '"}],"subject":{"reference":"Patient/pat-2"},"extension":[{"url":"'
    utf7 = {'"': "+ACI-", "}": "+AH0-", "]": "+AF0-", "{": "+AHs-", "[": "+AFs-"}
    smuggled = "".join(utf7.get(c, c) for c in injected).encode()
    body = (
        b'{"resourceType":"Observation","status":"final","code":{"text":"x"},'
        b'"subject":{"reference":"Patient/pat-1"},"note":[{"text":"' + smuggled + b'"}]}'
    )
    assert json.loads(body)["subject"] == {"reference": "Patient/pat-1"}  # what is judged
    assert json.loads(body.decode("utf-7"))["subject"] == {"reference": "Patient/pat-2"}
    headers = {**bearer(confined(issuer)), "Content-Type": "application/fhir+json; charset=utf-7"}
    status, _, _ = await status_of(gateway, "POST", "/Observation", headers, data=body)
    for r in fake_upstream.requests:
        ctype = r.headers.get("Content-Type", "")
        charset = ctype.lower().partition("charset=")[2].strip() or "utf-8"
        seen = json.loads(r.body.decode(charset))  # as an upstream honouring the header reads it
        assert seen.get("subject") == {"reference": "Patient/pat-1"}, (status, ctype, seen)


async def test_create_referencing_a_patient_on_another_server_is_refused(
    gateway: RunningGateway, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    """``subject: https://evil.example/fhir/Patient/pat-1`` is not the patient in context."""
    doc = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "https://evil.example/fhir/Patient/pat-1"},
    }
    headers = {**bearer(confined(issuer)), "Content-Type": FHIR}
    status, _, _ = await status_of(gateway, "POST", "/Observation", headers, json=doc)
    assert status == 403
    assert fake_upstream.requests == []


async def test_duplicate_json_keys_in_a_transaction_entry_never_reach_the_upstream(
    gateway: RunningGateway, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    """A transaction whose one create entry holds ``subject`` twice (pat-2, then pat-1)."""
    entry = DUP_SUBJECT.decode()
    body = (
        '{"resourceType":"Bundle","type":"transaction","entry":[{"resource":'
        + entry
        + ',"request":{"method":"POST","url":"Observation"}}]}'
    ).encode()
    headers = {**bearer(confined(issuer)), "Content-Type": FHIR}
    status, resp, _ = await status_of(gateway, "POST", "", headers, data=body)
    assert all(b"pat-2" not in r.body for r in fake_upstream.requests), (status, resp)
