"""The FHIR request path, top to bottom, in one function.

    ingress -> authenticate -> authorize -> rewrite -> forward -> filter -> respond

Each stage is a call into its own module; this file only orders them. Anything that goes wrong
raises a ``GatewayError`` subclass, which the error middleware renders as an OperationOutcome:
no stage ever lets an unchecked answer through.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from aiohttp import web
from multidict import CIMultiDict

from gateway import ingress, respond
from gateway.access.authorize import authorize_any
from gateway.access.context import AccessResolver
from gateway.access.decision import Decision
from gateway.access.verify import verify_document
from gateway.auth import Authenticator
from gateway.auth.bearer import invalid_request
from gateway.batch import handle_bundle, require_bundle_body
from gateway.config import Config
from gateway.context import exchange
from gateway.errors import NotFound, UpstreamError
from gateway.fhir.request import FhirRequest, Interaction, classify
from gateway.fhir.target import Param, Target, encode_path, encode_query
from gateway.prechecks import precheck, raise_denial
from gateway.upstream.client import Body as Payload
from gateway.upstream.client import UpstreamCall, UpstreamClient
from gateway.upstream.fetch import Fetcher
from gateway.upstream.headers import ProxyView, TrustedProxies, upstream_request_headers
from gateway.upstream.links import UrlRewriter

#: interactions anyone may call without a token (RFC 6750 does not apply to discovery)
PUBLIC = frozenset({Interaction.CAPABILITIES, Interaction.DISCOVERY})
#: single-resource answers: an upstream 404 becomes the gateway's own 404 (decision 3)
SINGLE = frozenset({Interaction.READ, Interaction.VREAD})


@dataclass(slots=True)
class Gateway:
    """Everything the request path needs, built once at start-up."""

    config: Config
    upstream: UpstreamClient
    rewriter: UrlRewriter
    authenticator: Authenticator
    trusted_proxies: TrustedProxies
    fetcher: Fetcher
    access: AccessResolver

    @property
    def realm(self) -> str:
        return self.config.server.public_base_url


async def handle_fhir(request: web.Request, gw: Gateway, target: Target) -> web.StreamResponse:
    # ingress: classify, negotiate (access_token in the URL is removed, never accepted)
    ex = exchange(request)
    params, token_in_query = ingress.split_access_token(target.params)
    req = classify(request.method, ingress.with_params(target, params))
    ex.route = req.route
    ingress.check_accept(req, request.headers.get("Accept"))
    if req.interaction in PUBLIC:
        return await _forward_and_respond(request, gw, req, req.params, None, None)

    # authenticate (before any body is read: anonymous callers cost nothing)
    ex.principal = await gw.authenticator.authenticate(
        request.headers.get("Authorization"), token_elsewhere=token_in_query
    )
    body = await ingress.read_body(request, req, gw.config.server.max_request_body_bytes)
    req = _with_form(req, body, gw.realm)
    accesses = await gw.access.accesses_for(ex.principal)

    # authorize (+ the checks that need the upstream: stored versions, Binary contexts)
    if req.interaction is Interaction.BATCH:
        require_bundle_body(body)
        return await handle_bundle(
            gw.upstream,
            gw.rewriter,
            _upstream_headers(request, gw),
            accesses,
            body,
            bases=gw.fetcher.bases,
            realm=gw.realm,
            limit=gw.config.server.max_response_body_bytes,
        )
    decision, access = authorize_any(accesses, req)
    ex.reason = decision.reason
    if not decision.allowed:
        raise_denial(decision, gw.realm)
    extra = await precheck(
        gw.fetcher, access, req, decision, body, "If-None-Exist" in request.headers
    )

    # rewrite + forward + filter + respond
    return await _forward_and_respond(request, gw, req, decision.params, body, decision, extra)


async def _forward_and_respond(
    request: web.Request,
    gw: Gateway,
    req: FhirRequest,
    params: tuple[Param, ...],
    body: ingress.Body | None,
    decision: Decision | None,
    extra: dict[str, str] | None = None,
) -> web.StreamResponse:
    call = await _forward(request, gw, req, params, body, extra or {})
    try:
        respond.check_status(call)
        status = call.response.status
        if req.interaction in SINGLE and status in (404, 410):
            raise NotFound()  # the gateway's own 404: the same as "you may not see it"
        if status in respond.NO_BODY_STATUS:
            return await respond.empty_response(call, gw.rewriter)
        if respond.is_json_response(call):
            verify = decision.verify if decision is not None else None
            suppress = decision.suppress_total if decision is not None else False
            bases = gw.fetcher.bases
            response = await respond.json_response(
                call,
                gw.upstream,
                gw.rewriter,
                gw.config.server.max_response_body_bytes,
                None
                if verify is None
                else lambda doc: verify_document(doc, verify, bases, suppress_total=suppress),
            )
            unchanged = (
                respond.not_modified(request, response) if req.interaction in SINGLE else None
            )
            return response if unchanged is None else unchanged
        if ingress.is_binary_content(req):
            return await respond.stream_response(request, call, gw.rewriter)
        raise UpstreamError(reason="upstream.not-fhir")
    finally:
        exchange(request).upstream_ms = call.latency_ms
        call.response.release()


def _with_form(req: FhirRequest, body: ingress.Body | None, realm: str) -> FhirRequest:
    """POST ``_search``: the union of query and form parameters is what is judged and sent."""
    if body is None or body.form is None:
        return req
    form, token_in_form = ingress.split_access_token(body.form)
    if token_in_form:  # a header token was accepted: a second one is ambiguous (RFC 6750)
        raise invalid_request(realm)
    return replace(req, target=ingress.with_params(req.target, req.params + form))


def _upstream_headers(request: web.Request, gw: Gateway) -> CIMultiDict[str]:
    view = ProxyView(
        peer=request.remote or "",
        scheme="https" if gw.config.server.tls else "http",
        host=request.host,
    )
    headers = upstream_request_headers(
        request.headers,
        view,
        gw.trusted_proxies,
        exchange(request).request_id,
        gw.upstream.static_headers,
    )
    if gw.config.upstream.forward_authorization and "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    return headers


async def _forward(
    request: web.Request,
    gw: Gateway,
    req: FhirRequest,
    params: tuple[Param, ...],
    body: ingress.Body | None,
    extra: dict[str, str],
) -> UpstreamCall:
    """Build the upstream request from the validated components only, and send it once."""
    headers = _upstream_headers(request, gw)
    if req.interaction not in PUBLIC and request.method in ("GET", "HEAD"):
        # a 304 would skip verification (and confirm what exists): always get the body
        for name in ("If-None-Match", "If-Modified-Since"):
            headers.popall(name, None)
    headers.update(extra)
    path = encode_path(req.target.segments)
    query = encode_query(params)
    payload: Payload = None
    if body is not None and body.form is not None:
        payload, query = query.encode("ascii"), ""  # POST _search: everything in the body
        headers["Content-Type"] = ingress.FORM
    elif body is not None:
        payload = body.stream if body.stream is not None else body.data
        if body.content_type:
            headers["Content-Type"] = request.headers["Content-Type"]
    else:
        headers.pop("Content-Type", None)
    method = "GET" if request.method == "HEAD" else request.method
    return await gw.upstream.send(method, gw.upstream.url(path, query), headers, payload)
