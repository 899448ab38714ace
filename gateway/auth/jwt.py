"""Local verification of JWT access tokens (RFC 7515 JWS, RFC 7519 JWT, RFC 9068 profile).

The unverified ``iss`` only chooses which issuer's key set to use (RFC 8725 §3.8: the issuer is
then verified like every other claim). For the token to be accepted:

* the JWS must be in compact serialization with exactly three parts (RFC 7515 §7.1); JWE and
  unsecured JWTs are refused;
* ``alg`` must be in the issuer's allow-list (asymmetric only; ``none`` in any casing and HMAC
  are never accepted, RFC 8725 §3.1/§3.2) and must fit the key: ``kty`` RSA for ``RS*``/``PS*``,
  EC with the matching ``crv`` for ``ES*``, OKP Ed25519 for ``EdDSA``, and the JWK's own
  ``alg`` when it has one (RFC 7517 §4.4);
* the key comes from the issuer's JWK Set only; ``jku``, ``x5u``, ``jwk`` and ``x5c`` headers
  are ignored and never fetched (RFC 8725 §3.10); a ``crit`` header is refused (RFC 7515
  §4.1.11: we understand no extension);
* ``typ`` must be absent, ``at+jwt`` or ``JWT`` (case-insensitive, with or without the
  ``application/`` prefix; RFC 9068 §2.1, RFC 8725 §3.11);
* claims: ``iss`` exact; ``aud`` contains a configured audience (RFC 7519 §4.1.3); ``exp``
  required and in the future, ``nbf``/``iat`` not in the future, all with the leeway
  (§4.1.4–4.1.6); no ``nonce``/``at_hash`` and a scope claim present (an ID token is not an
  access token, RFC 9068 §5); no ``cnf`` (a sender-constrained token, RFC 7800 / RFC 9449,
  cannot be accepted as a plain bearer token).

pyjwt does the signature arithmetic, always with an explicit key object and an algorithms list
of exactly the one algorithm that fits that key. Time checks use the injected clock.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jwt as pyjwt
from jwt.api_jws import PyJWS

from gateway.auth.bearer import DESCRIPTION_EXPIRED, TokenRejected
from gateway.auth.jwks import MAX_KID_LENGTH, IssuerKeys, parse_json
from gateway.auth.principal import SCOPE_ARRAY_CLAIM, is_number

_ACCEPTED_TYP = frozenset({"at+jwt", "application/at+jwt", "jwt", "application/jwt"})
#: ID token markers (OpenID Connect Core 1.0 §2, §3.1.3.6).
_ID_TOKEN_CLAIMS = ("nonce", "at_hash", "c_hash")
_MAX_CANDIDATE_KEYS = 4


def _b64url_json(segment: str) -> Any:
    if not segment or "=" in segment:
        raise TokenRejected(detail="malformed-jws")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        return parse_json(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise TokenRejected(detail="malformed-jws") from None


def split_jws(token: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Decode header and payload of a compact JWS **without verifying anything**.

    Returns ``None`` when the token is not shaped like a JWS (an opaque token, a JWE with five
    parts, or three parts whose first is not a JSON object); raises :class:`TokenRejected` when
    the header decodes but the payload is not a JSON object. Use only to route the token and
    to pick a key set.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    if "=" in parts[2]:
        raise TokenRejected(detail="malformed-jws")  # RFC 7515 §2: base64url without padding
    try:
        header = _b64url_json(parts[0])
    except TokenRejected:
        return None
    if not isinstance(header, dict):
        return None
    payload = _b64url_json(parts[1])
    if not isinstance(payload, dict):
        raise TokenRejected(detail="payload-not-object")
    return header, payload


_JWS: dict[str, PyJWS] = {}


def _jws_for(alg: str) -> PyJWS:
    """A pyjwt JWS decoder that knows exactly one algorithm."""
    jws = _JWS.get(alg)
    if jws is None:
        jws = _JWS[alg] = PyJWS(algorithms=[alg])
    return jws


class JwtVerifier:
    """Verifies the access tokens of one configured issuer."""

    def __init__(
        self,
        *,
        issuer: str,
        algorithms: Sequence[str],
        audiences: Sequence[str],
        keys: IssuerKeys,
        leeway_s: float,
        scope_claim: str,
        clock: Callable[[], float],
    ) -> None:
        self.issuer = issuer
        self._algorithms = frozenset(algorithms)
        self._audiences = tuple(audiences)
        self._keys = keys
        self._leeway = leeway_s
        self._scope_claim = scope_claim
        self._clock = clock

    async def verify(self, token: str, header: Mapping[str, Any]) -> dict[str, Any]:
        """Verify ``token`` (whose unverified ``header`` the caller already decoded).

        Returns the verified claims. Raises :class:`TokenRejected` (→ 401) or
        :class:`~gateway.auth.jwks.KeysUnavailable` (→ 503).
        """
        alg = self._check_header(header)
        kid = header.get("kid")
        candidates = [k for k in await self._keys.keys_for(kid) if k.accepts(alg)]
        if not candidates:
            raise TokenRejected(detail="no-fitting-key")
        payload: bytes | None = None
        for key in candidates[:_MAX_CANDIDATE_KEYS]:
            try:
                decoded = _jws_for(alg).decode_complete(token, key=key.key, algorithms=[alg])
            except pyjwt.InvalidSignatureError:
                continue
            except pyjwt.PyJWTError:
                raise TokenRejected(detail="malformed-jws") from None
            if decoded["header"] != header:
                raise TokenRejected(detail="malformed-jws")
            payload = decoded["payload"]
            break
        if payload is None:
            raise TokenRejected(detail="signature")
        try:
            claims = parse_json(payload)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise TokenRejected(detail="payload-not-object") from None
        if not isinstance(claims, dict):
            raise TokenRejected(detail="payload-not-object")
        self._check_claims(claims)
        return claims

    def _check_header(self, header: Mapping[str, Any]) -> str:
        """RFC 7515 §4.1 header checks before any key is looked up."""
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise TokenRejected(detail="alg")
        if "crit" in header or "b64" in header or "zip" in header or "enc" in header:
            raise TokenRejected(detail="unsupported-header")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYP):
            raise TokenRejected(detail="typ")
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= MAX_KID_LENGTH):
            raise TokenRejected(detail="kid")
        return alg

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        """RFC 7519 §4.1 registered claims and the RFC 9068 §4 access-token rules."""
        if claims.get("iss") != self.issuer:
            raise TokenRejected(detail="iss")
        aud = claims.get("aud")
        token_audiences = aud if isinstance(aud, list) else [aud]
        if not any(isinstance(a, str) and a in self._audiences for a in token_audiences):
            raise TokenRejected(detail="aud")
        now = self._clock()
        exp = claims.get("exp")
        if not is_number(exp):
            raise TokenRejected(detail="exp")
        if now >= exp + self._leeway:
            raise TokenRejected("token.expired", DESCRIPTION_EXPIRED, detail="exp")
        for name in ("nbf", "iat"):
            value = claims.get(name)
            if value is None:
                continue
            if not is_number(value) or value > now + self._leeway:
                raise TokenRejected(detail=name)
        if any(name in claims for name in _ID_TOKEN_CLAIMS):
            raise TokenRejected(detail="id-token")
        if "cnf" in claims:
            raise TokenRejected(detail="sender-constrained")
        if self._scope_claim not in claims and SCOPE_ARRAY_CLAIM not in claims:
            raise TokenRejected(detail="no-scope")
