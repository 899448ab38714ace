"""RFC 6750 bearer-token transport: reading the ``Authorization`` header and building challenges.

Only the ``Authorization`` request header field (RFC 6750 §2.1) is accepted. The form-encoded
body parameter (§2.2) and the URI query parameter (§2.3) are never accepted: the handler strips
them and tells us through ``token_elsewhere`` that one was present.

Error responses follow RFC 6750 §3 and §3.1:

* no credentials for our scheme → 401 with ``WWW-Authenticate: Bearer realm="..."`` and *no*
  error code (§3.1: "the resource server SHOULD NOT include an error code");
* a token in more than one place → 400 ``invalid_request`` (§2 "MUST NOT use more than one
  method to transmit the token");
* a token that is malformed, expired, revoked or otherwise invalid → 401 ``invalid_token``.

Every message is a fixed text: never the token, never a claim value.
"""

from __future__ import annotations

import re

from gateway.errors import InvalidRequest, Unauthorized

#: Longest ``Authorization`` value we look at. Real access tokens are well under 4 KiB.
MAX_AUTHORIZATION_LENGTH = 8192

# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# auth-scheme = token (RFC 7235 §2.1); the scheme is compared case-insensitively.
_SCHEME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_QUOTED_UNSAFE = re.compile(r'[\\"]')
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Fixed error_description texts (RFC 6750 §3: human-readable ASCII, no %x22 or %x5C).
DESCRIPTION_MALFORMED = "The bearer token is malformed."
DESCRIPTION_INVALID = "The access token is invalid."
DESCRIPTION_EXPIRED = "The access token expired."
DESCRIPTION_INACTIVE = "The access token is not active."
DESCRIPTION_TWO_PLACES = "The access token was sent in more than one place."


class TokenRejected(Exception):
    """Internal: the token was presented but is not acceptable (becomes 401 ``invalid_token``).

    ``reason`` is a stable reason code (``token.invalid``, ``token.expired``,
    ``token.revoked``), ``description`` one of the fixed texts above, and ``detail`` a fixed
    code naming the failed check (``aud``, ``signature``, ``claim:patient`` ...) for debug
    logs only — never sent to the client. None of them ever contains token content.
    """

    def __init__(
        self,
        reason: str = "token.invalid",
        description: str = DESCRIPTION_INVALID,
        *,
        detail: str = "invalid",
    ) -> None:
        self.reason = reason
        self.description = description
        self.detail = detail
        super().__init__(reason)


def _quote(value: str) -> str:
    """Render ``value`` as an RFC 7230 §3.2.6 quoted-string (control characters removed)."""
    value = _CONTROL.sub("", value)
    return '"' + _QUOTED_UNSAFE.sub(lambda m: "\\" + m.group(0), value) + '"'


def challenge(realm: str, error: str | None = None, description: str | None = None) -> str:
    """Build a ``WWW-Authenticate`` value for the Bearer scheme (RFC 6750 §3)."""
    parts = [f"realm={_quote(realm)}"]
    if error is not None:
        parts.append(f"error={_quote(error)}")
        if description is not None:
            parts.append(f"error_description={_quote(description)}")
    return "Bearer " + ", ".join(parts)


def missing_token(realm: str) -> Unauthorized:
    """401 for a request without bearer credentials: no error code (RFC 6750 §3.1)."""
    return Unauthorized(
        "Authentication is required.",
        headers={"WWW-Authenticate": challenge(realm)},
        reason="token.missing",
    )


def invalid_token(
    realm: str, reason: str = "token.invalid", description: str = DESCRIPTION_INVALID
) -> Unauthorized:
    """401 ``invalid_token`` (RFC 6750 §3.1) with a fixed ``error_description``."""
    return Unauthorized(
        description,
        headers={"WWW-Authenticate": challenge(realm, "invalid_token", description)},
        reason=reason,
    )


def invalid_request(realm: str) -> InvalidRequest:
    """400 ``invalid_request``: the token was sent by more than one method (RFC 6750 §2)."""
    return InvalidRequest(
        DESCRIPTION_TWO_PLACES,
        headers={"WWW-Authenticate": challenge(realm, "invalid_request", DESCRIPTION_TWO_PLACES)},
        reason="token.invalid-request",
    )


def extract_bearer(authorization: str | None, *, token_elsewhere: bool, realm: str) -> str:
    """Return the bearer token of an ``Authorization`` value, or raise the RFC 6750 error.

    ``credentials = "Bearer" 1*SP b64token`` (RFC 6750 §2.1); the scheme name is
    case-insensitive (RFC 7235 §2.1). Raises :class:`~gateway.errors.Unauthorized` or
    :class:`~gateway.errors.InvalidRequest`.
    """
    if authorization is None:
        # An access_token in the query or body alone is never accepted: same 401 as none.
        raise missing_token(realm)
    if token_elsewhere:
        raise invalid_request(realm)
    if len(authorization) > MAX_AUTHORIZATION_LENGTH:
        raise invalid_token(realm, "token.invalid", DESCRIPTION_MALFORMED)
    value = authorization.strip(" \t")
    scheme, sep, rest = value.partition(" ")
    if scheme.lower() != "bearer":
        if value and _SCHEME.fullmatch(scheme) is None:
            raise invalid_token(realm, "token.invalid", DESCRIPTION_MALFORMED)
        # Another scheme (Basic, DPoP, ...): no bearer credentials were presented.
        raise missing_token(realm)
    token = rest.lstrip(" ")
    if not sep or _B64TOKEN.fullmatch(token) is None:
        raise invalid_token(realm, "token.invalid", DESCRIPTION_MALFORMED)
    return token
