"""The FHIR request path, top to bottom, in one function.

    ingress -> authenticate -> authorize -> rewrite -> forward -> filter -> respond

Each stage is a call into its own module; this file only orders them. Anything that goes wrong
raises a ``GatewayError`` subclass, which the error middleware renders as an OperationOutcome:
no stage ever lets an unchecked answer through.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict

from gateway import ingress, respond
from gateway.auth import Authenticator
from gateway.auth.bearer import invalid_request
from gateway.config import Config
from gateway.context import exchange
from gateway.errors import UpstreamError
from gateway.fhir.request import FhirRequest, Interaction, classify
from gateway.fhir.target import Target, encode_path, encode_query
from gateway.upstream.client import UpstreamCall, UpstreamClient
from gateway.upstream.headers import ProxyView, TrustedProxies, upstream_request_headers
from gateway.upstream.links import UrlRewriter

#: interactions anyone may call without a token (RFC 6750 does not apply to discovery)
PUBLIC = frozenset({Interaction.CAPABILITIES, Interaction.DISCOVERY})


@dataclass(slots=True)
class Gateway:
    """Everything the request path needs, built once at start-up."""

    config: Config
    upstream: UpstreamClient
    rewriter: UrlRewriter
    authenticator: Authenticator
    trusted_proxies: TrustedProxies


async def handle_fhir(request: web.Request, gw: Gateway, target: Target) -> web.StreamResponse:
    # ingress: classify, negotiate (access_token in the URL is removed, never accepted)
    ex = exchange(request)
    params, token_in_query = ingress.split_access_token(target.params)
    req = classify(request.method, ingress.with_params(target, params))
    ex.route = req.route
    ingress.check_accept(req, request.headers.get("Accept"))

    # authenticate (before any body is read: anonymous callers cost nothing)
    if req.interaction not in PUBLIC:
        ex.principal = await gw.authenticator.authenticate(
            request.headers.get("Authorization"), token_elsewhere=token_in_query
        )
    body = await ingress.read_body(request, req, gw.config.server.max_request_body_bytes)
    if body is not None and body.form is not None:
        form, token_in_form = ingress.split_access_token(body.form)
        if token_in_form:  # a header token was accepted above: a second one is ambiguous
            raise invalid_request(gw.config.server.public_base_url)
        body = ingress.Body(content_type=body.content_type, form=form)

    # authorize: SMART scopes and the patient compartment (issue 4)

    # rewrite + forward
    call = await _forward(request, gw, req, body)
    try:
        # filter + respond
        respond.check_status(call)
        if request.method == "HEAD" or call.response.status in respond.NO_BODY_STATUS:
            return await respond.empty_response(call, gw.rewriter)
        if respond.is_json_response(call):
            return await respond.json_response(
                call, gw.upstream, gw.rewriter, gw.config.server.max_response_body_bytes
            )
        if ingress.is_binary_content(req):
            return await respond.stream_response(request, call, gw.rewriter)
        raise UpstreamError(reason="upstream.not-fhir")
    finally:
        ex.upstream_ms = call.latency_ms
        call.response.release()


async def _forward(
    request: web.Request, gw: Gateway, req: FhirRequest, body: ingress.Body | None
) -> UpstreamCall:
    """Build the upstream request from the validated components only, and send it once."""
    url = gw.upstream.url(encode_path(req.target.segments), encode_query(req.params))
    view = ProxyView(
        peer=request.remote or "",
        scheme="https" if gw.config.server.tls else "http",
        host=request.host,
    )
    headers: CIMultiDict[str] = upstream_request_headers(
        request.headers,
        view,
        gw.trusted_proxies,
        exchange(request).request_id,
        gw.upstream.static_headers,
    )
    if gw.config.upstream.forward_authorization and "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    data: bytes | None = None
    if body is not None:
        if body.form is not None:
            data = encode_query(body.form).encode("ascii")
        elif body.stream is not None:
            data = None
        else:
            data = body.data
        if body.content_type:
            headers["Content-Type"] = request.headers["Content-Type"]
    else:
        headers.pop("Content-Type", None)
    method = "GET" if request.method == "HEAD" else request.method
    payload = body.stream if body is not None and body.stream is not None else data
    return await gw.upstream.send(method, url, headers, payload)
