"""The gateway's exception tree.

Every error the gateway produces itself is one of these classes. Each class knows the HTTP
status it maps to, the FHIR OperationOutcome ``issue.code`` (http://hl7.org/fhir/issue-type)
and any headers the response must carry; ``render_error`` in ``gateway.app`` (the edge
middleware) renders them all the same way, so no handler builds an error response by hand.

``diagnostics`` is shown to the client and written to logs: it must be a fixed, PHI-free text
(never a query value, body fragment, token, resource id of a patient or upstream hostname).

    GatewayError                       500 exception   (base; also: unexpected failure)
    ├── BadRequest                     400 invalid
    │   ├── InvalidTarget              400 invalid     request target/path refused
    │   ├── InvalidHeader              400 invalid     spoofing/override/duplicate header
    │   ├── InvalidRequest             400 invalid     RFC 6750 invalid_request
    │   └── UnknownResourceType        400 not-supported
    ├── Unauthorized                   401 login       RFC 6750 challenge (issue 3)
    ├── Forbidden                      403 forbidden   (insufficient_scope: issue 4)
    ├── NotFound                       404 not-found   also "you may not see it" (no oracle)
    ├── MethodNotAllowed               405 not-supported
    ├── NotAcceptable                  406 not-supported  XML or another non-JSON format asked for
    ├── PayloadTooLarge                413 too-costly
    ├── UnsupportedMediaType           415 not-supported
    ├── HeadersTooLarge                431 too-costly
    ├── TooManyRequests                429 throttled
    ├── UpstreamError                  502 transient   upstream unreachable, reset, bad answer
    ├── ServiceUnavailable             503 transient   starting, draining, dependency down
    └── UpstreamTimeout                504 timeout
"""

from __future__ import annotations

from collections.abc import Mapping


class GatewayError(Exception):
    """Base class: an error that becomes an OperationOutcome response."""

    status: int = 500
    code: str = "exception"
    default_diagnostics: str = "The gateway could not process the request."
    #: stable, machine-readable reason for logs, metrics and audit
    reason: str = "internal"

    def __init__(
        self,
        diagnostics: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        reason: str | None = None,
    ) -> None:
        self.diagnostics = diagnostics or self.default_diagnostics
        self.headers: dict[str, str] = dict(headers or {})
        if reason is not None:
            self.reason = reason
        super().__init__(self.diagnostics)


class BadRequest(GatewayError):
    status = 400
    code = "invalid"
    default_diagnostics = "The request is malformed."
    reason = "request.invalid"


class InvalidTarget(BadRequest):
    default_diagnostics = "The request target is not a valid FHIR URL."
    reason = "request.target"


class InvalidHeader(BadRequest):
    default_diagnostics = "The request carries a header the gateway does not accept."
    reason = "request.header"


class InvalidRequest(BadRequest):
    """RFC 6750 ``invalid_request``: e.g. a bearer token presented in more than one place."""

    default_diagnostics = "The request is not a valid bearer-token request."
    reason = "token.invalid-request"


class UnknownResourceType(BadRequest):
    code = "not-supported"
    default_diagnostics = "Unknown FHIR resource type."
    reason = "request.unknown-type"


class Unauthorized(GatewayError):
    status = 401
    code = "login"
    default_diagnostics = "Authentication is required."
    reason = "token.missing"


class Forbidden(GatewayError):
    status = 403
    code = "forbidden"
    default_diagnostics = "The request is not allowed."
    reason = "forbidden"


class NotFound(GatewayError):
    status = 404
    code = "not-found"
    default_diagnostics = "The requested resource was not found."
    reason = "not-found"


class MethodNotAllowed(GatewayError):
    status = 405
    code = "not-supported"
    default_diagnostics = "The HTTP method is not supported here."
    reason = "request.method"


class NotAcceptable(GatewayError):
    status = 406
    code = "not-supported"
    default_diagnostics = "Only JSON representations (application/fhir+json) are supported."
    reason = "request.format"


class PayloadTooLarge(GatewayError):
    status = 413
    code = "too-costly"
    default_diagnostics = "The request body is too large."
    reason = "request.too-large"


class UnsupportedMediaType(GatewayError):
    status = 415
    code = "not-supported"
    default_diagnostics = "The request body's media type is not supported."
    reason = "request.media-type"


class HeadersTooLarge(GatewayError):
    status = 431
    code = "too-costly"
    default_diagnostics = "The request headers are too large."
    reason = "request.headers-too-large"


class TooManyRequests(GatewayError):
    status = 429
    code = "throttled"
    default_diagnostics = "Too many requests."
    reason = "limit.rate"


class UpstreamError(GatewayError):
    status = 502
    code = "transient"
    default_diagnostics = "The upstream FHIR server did not give a usable answer."
    reason = "upstream.error"


class ServiceUnavailable(GatewayError):
    status = 503
    code = "transient"
    default_diagnostics = "The service is temporarily unavailable."
    reason = "unavailable"


class UpstreamTimeout(GatewayError):
    status = 504
    code = "timeout"
    default_diagnostics = "The upstream FHIR server did not answer in time."
    reason = "upstream.timeout"


class ConfigError(Exception):
    """Configuration is invalid. ``problems`` lists every problem, each naming its key path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))
