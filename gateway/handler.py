"""The FHIR request path, top to bottom, in one function.

    ingress -> authenticate -> authorize -> rewrite -> forward -> filter -> respond

Each stage is a call into its own module; this file only orders them. Anything that goes wrong
raises a ``GatewayError`` subclass, which the edge middleware renders as an OperationOutcome:
no stage ever lets an unchecked answer through.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from gateway import ingress, respond
from gateway.access import policy_gate
from gateway.access.authorize import Access, authorize_any
from gateway.access.context import AccessResolver, bind_policies
from gateway.access.decision import Decision
from gateway.access.narrowing import proven_by_first_page
from gateway.access.verify import Members, PolicyTally, verify_document
from gateway.auth import Authenticator, Principal
from gateway.auth.bearer import invalid_request
from gateway.batch import handle_bundle, require_bundle_body
from gateway.config import Config
from gateway.context import Exchange, exchange
from gateway.errors import GatewayError, NotFound, UpstreamError
from gateway.fhir.request import FhirRequest, Interaction, classify
from gateway.fhir.target import Target, encode_path, encode_query, parse_target
from gateway.ops.audit import note_document, note_request
from gateway.ops.limits import Limits
from gateway.phi.cursors import CursorCodec, caller_binding
from gateway.phi.paging import Origin, replace_links
from gateway.phi.rules import PhiRules
from gateway.policy import PolicySet, PolicyStore
from gateway.prechecks import precheck, raise_denial
from gateway.rewrite import SEARCHES, UpstreamRequest, plan
from gateway.smart.discovery import Discovery
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
    policies: PolicyStore
    phi: PhiRules
    cursors: CursorCodec
    discovery: Discovery
    limits: Limits = field(default_factory=Limits.off)

    @property
    def realm(self) -> str:
        return self.config.server.public_base_url


async def handle_fhir(request: web.Request, gw: Gateway, target: Target) -> web.StreamResponse:
    # ingress: classify, negotiate (access_token in the URL is removed, never accepted)
    ex = exchange(request)
    params, token_in_query = ingress.split_access_token(target.params)
    req = classify(request.method, ingress.with_params(target, params))
    ex.route = req.route
    note_request(ex, req)
    if req.interaction is Interaction.DISCOVERY:  # application/json whatever the Accept header
        return await gw.discovery.smart_configuration_response()
    ingress.check_accept(req, request.headers.get("Accept"))
    if req.interaction in PUBLIC:  # the upstream's statement, rewritten and cached
        return await gw.discovery.capability_statement_response()

    # authenticate (before any body is read: anonymous callers cost nothing)
    principal = ex.principal = await gw.authenticator.authenticate(
        request.headers.get("Authorization"), token_elsewhere=token_in_query
    )
    gw.limits.check_client(principal)  # per client id, by scope level: 429 + Retry-After
    body = await ingress.read_body(request, req, gw.config.server.max_request_body_bytes)
    req = _with_form(req, body, gw.realm)
    accesses = await gw.access.accesses_for(principal)
    binding = caller_binding(
        principal.issuer, principal.subject, principal.client_id, principal.patient
    )

    # authorize (+ the checks that need the upstream: stored versions, Binary contexts)
    policy_set = gw.policies.current  # one set for the whole request, even across a reload
    if req.interaction is Interaction.BATCH:  # every entry judged like its own request
        return await _bundle(request, gw, principal, accesses, body, policy_set)
    origin = Origin(req.method, req.target.segments, req.params)
    link: FhirRequest | None = None
    if req.interaction is Interaction.PAGE:  # a cursor: re-authorize the original request
        req, origin, link = _follow_cursor(gw, ex, req, binding)
    decision, access = authorize_any(accesses, req)
    if link is not None:  # a later page: its first page proved the narrowing (no proof, no cursor)
        decision = proven_by_first_page(decision)
    bound = bind_policies(policy_set, principal, access) if decision.allowed else None
    if bound is not None:  # privacy policies: bound to this caller, then probes refused
        decision = policy_gate.apply_policies(req, decision, bound)
    ex.reason = decision.reason
    if not decision.allowed:
        raise_denial(decision, gw.realm)
    extra = await precheck(
        gw.fetcher,
        access,
        req,
        decision,
        body,
        "If-None-Exist" in request.headers,
        policy_set,
        bound,
    )

    # rewrite (GET search -> POST _search when PHI travels) + forward + filter + respond
    if link is not None:
        upstream = plan(link, link.params, gw.phi)
    else:
        upstream = plan(req, decision.params, gw.phi)
    if req.interaction in SEARCHES or link is not None:
        body = None  # search parameters travel in `upstream`, never as the client's bytes
    paging = Paging(origin, binding)
    return await _forward_and_respond(request, gw, req, upstream, body, decision, paging, extra)


async def _bundle(
    request: web.Request,
    gw: Gateway,
    principal: Principal,
    accesses: tuple[Access, ...],
    body: ingress.Body | None,
    policy_set: PolicySet,
) -> web.Response:
    tally = exchange(request).policies = PolicyTally()  # batch decisions are audited too
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
        bind=lambda access: bind_policies(policy_set, principal, access),
        guarded=lambda rtype: bool(policy_set.for_type(rtype)),
        tally=tally,
        note=lambda reply: note_document(exchange(request), reply, gw.fetcher.bases),
    )


def _follow_cursor(
    gw: Gateway, ex: Exchange, req: FhirRequest, binding: str
) -> tuple[FhirRequest, Origin, FhirRequest]:
    """Open a paging cursor (400/404 if it is not this caller's): the original request to
    authorize again, its origin for the next cursors, and the upstream page link."""
    page = gw.cursors.open(req.params[0][1], binding)
    original = classify(page.method, Target(page.path, page.params))
    note_request(ex, original)
    return original, Origin(page.method, page.path, page.params), _link_request(page.link)


def _link_request(link: str) -> FhirRequest:
    """The upstream page link a cursor carries, re-validated like any request target."""
    try:
        target = parse_target("/" + link, "")
        if target is None:
            raise ValueError(link)
        return classify("GET", target)
    except (GatewayError, ValueError):
        raise UpstreamError(reason="upstream.paging-link") from None


@dataclass(frozen=True, slots=True)
class Paging:
    origin: Origin
    binding: str


async def _forward_and_respond(
    request: web.Request,
    gw: Gateway,
    req: FhirRequest,
    upstream: UpstreamRequest,
    body: ingress.Body | None,
    decision: Decision | None,
    paging: Paging | None,
    extra: dict[str, str] | None = None,
) -> web.StreamResponse:
    call = await _forward(request, gw, req, upstream, body, extra or {})
    try:
        respond.check_status(call)
        status = call.response.status
        if req.interaction in SINGLE and status in (404, 410):
            raise NotFound()  # the gateway's own 404: the same as "you may not see it"
        # a read or search answers with a resource: "nothing" is no answer to pass on
        content_due = req.method == "GET" or req.interaction in SEARCHES
        if status in respond.NO_BODY_STATUS:
            if content_due:
                raise UpstreamError(reason="upstream.empty")
            return await respond.empty_response(call, gw.rewriter)
        if respond.is_json_response(call):
            response = await respond.json_response(
                call,
                gw.upstream,
                gw.rewriter,
                gw.config.server.max_response_body_bytes,
                None if decision is None else _doc_filter(gw, decision, paging, request),
                content_due=content_due,
            )
            unchanged = (
                respond.not_modified(request, response) if req.interaction in SINGLE else None
            )
            return response if unchanged is None else unchanged
        if ingress.is_binary_content(req) and _may_stream(decision):
            return await respond.stream_response(request, call, gw.rewriter)
        raise UpstreamError(reason="upstream.not-fhir")
    finally:
        exchange(request).upstream_ms = call.latency_ms
        call.response.release()


def _may_stream(decision: Decision | None) -> bool:
    """Raw Binary content cannot be verified: it streams only when nothing would need to judge
    it (the type granted plainly, no policy that may restrict Binary for this caller); a
    confined caller's Binary was already judged through its securityContext (prechecks)."""
    v = decision.verify if decision is not None else None
    if v is None:
        return decision is None
    plain = any(v.scopes.plain(level, "Binary", "r") for level in v.levels)
    return plain and (v.policies is None or not v.policies.may_restrict("Binary"))


def _doc_filter(
    gw: Gateway, decision: Decision, paging: Paging | None, request: web.Request
) -> respond.DocFilter:
    """Verify every resource, then turn paging links into caller-bound cursors."""
    verify, bases = decision.verify, gw.fetcher.bases
    tally = exchange(request).policies = PolicyTally()  # for the audit record

    def apply(doc: dict[str, Any]) -> bool:
        members: Members = {}
        reasons: list[str] = []
        changed = verify is not None and verify_document(
            doc,
            verify,
            bases,
            suppress_total=decision.suppress_total,
            whole=decision.whole,
            tally=tally,
            members=members,
            reasons=reasons,
        )
        if reasons:  # a narrowed search the upstream did not narrow: withheld
            exchange(request).reason = reasons[0]
        note_document(exchange(request), doc, bases, members)  # what the caller gets: audit
        if paging is not None and replace_links(
            doc,
            public_base=gw.realm,
            codec=gw.cursors,
            origin=paging.origin,
            binding=paging.binding,
        ):
            changed = True
        return changed

    return apply


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
    upstream: UpstreamRequest,
    body: ingress.Body | None,
    extra: dict[str, str],
) -> UpstreamCall:
    """Build the upstream request from validated components only, and send it once."""
    headers = _upstream_headers(request, gw)
    if req.interaction not in PUBLIC and upstream.method == "GET":
        # a 304 would skip verification (and confirm what exists): always get the body
        for name in ("If-None-Match", "If-Modified-Since"):
            headers.popall(name, None)
    headers.update(extra)
    headers.popall("Content-Type", None)
    payload: Payload = None
    if upstream.form is not None:
        payload = encode_query(upstream.form).encode("ascii")
        headers["Content-Type"] = ingress.FORM
    elif body is not None:
        payload = body.stream if body.stream is not None else body.data
        if body.content_type:
            headers["Content-Type"] = request.headers["Content-Type"]
    url = gw.upstream.url(encode_path(upstream.path), encode_query(upstream.query))
    return await gw.upstream.send(upstream.method, url, headers, payload)
