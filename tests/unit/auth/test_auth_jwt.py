"""Local JWT verification: the tokens we accept, and every hostile token we must refuse (401)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm

from gateway.auth import Authenticator, Principal
from gateway.errors import Unauthorized
from tests.support.issuer import DEFAULT_AUDIENCE as AUDIENCE
from tests.support.issuer import FakeClock, IssuerFactory, TestIssuer, new_key

AuthFactory = Callable[..., Awaitable[Authenticator]]

LEEWAY = 30.0


def b64u(data: bytes | str | dict[str, Any]) -> str:
    if isinstance(data, dict):
        data = json.dumps(data)
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any] | str, payload: dict[str, Any] | str, sig: bytes = b"") -> str:
    """A compact JWS built by hand (no library checks in the way)."""
    return f"{b64u(header)}.{b64u(payload)}.{b64u(sig)}"


def hs256(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{b64u(header)}.{b64u(payload)}"
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64u(sig)}"


async def accepted(auth: Authenticator, token: str) -> Principal:
    return await auth.authenticate(f"Bearer {token}", token_elsewhere=False)


async def refused(auth: Authenticator, token: str, reason: str = "token.invalid") -> Unauthorized:
    with pytest.raises(Unauthorized) as info:
        await auth.authenticate(f"Bearer {token}", token_elsewhere=False)
    exc = info.value
    assert exc.status == 401
    assert exc.reason == reason
    assert 'error="invalid_token"' in exc.headers["WWW-Authenticate"]
    for text in (exc.diagnostics, exc.headers["WWW-Authenticate"], str(exc)):
        for part in (token, *token.split(".")):
            assert len(part) < 8 or part not in text
    return exc


# --------------------------------------------------------------------------- accepted tokens


async def test_valid_rs256_token(auth: Authenticator, issuer: TestIssuer) -> None:
    p = await accepted(auth, issuer.mint())
    assert p.issuer == issuer.url
    assert p.subject == "user-1"
    assert p.client_id == "test-client"
    assert p.scopes == ("patient/*.rs",)
    assert p.patient == "pat-1"
    assert p.token_kind == "jwt"


async def test_valid_es256_token(auth: Authenticator, issuer: TestIssuer) -> None:
    p = await accepted(auth, issuer.mint(key="ec"))
    assert p.patient == "pat-1"


@pytest.mark.parametrize(
    "typ", ["at+jwt", "AT+JWT", "application/at+jwt", "Application/AT+JWT", "JWT", "jwt", None]
)
async def test_accepted_typ(auth: Authenticator, issuer: TestIssuer, typ: str | None) -> None:
    await accepted(auth, issuer.mint(headers={"typ": typ}))


async def test_audience_list_containing_ours(auth: Authenticator, issuer: TestIssuer) -> None:
    await accepted(auth, issuer.mint(aud=["https://other.example", AUDIENCE]))


async def test_times_within_leeway(
    auth: Authenticator, issuer: TestIssuer, clock: FakeClock
) -> None:
    now = int(clock())
    await accepted(auth, issuer.mint(exp=now - int(LEEWAY) + 2))
    await accepted(auth, issuer.mint(nbf=now + int(LEEWAY) - 2, iat=now + int(LEEWAY) - 2))


async def test_scp_array(auth: Authenticator, issuer: TestIssuer) -> None:
    p = await accepted(auth, issuer.mint(scope=None, scp=["user/*.rs", "openid"]))
    assert p.scopes == ("user/*.rs", "openid")


async def test_configured_audience_list(make_auth: AuthFactory, issuer: TestIssuer) -> None:
    auth = await make_auth(jwt=[issuer.jwt_issuer(audience=["urn:a", "urn:b"])])
    await accepted(auth, issuer.mint(aud="urn:b"))
    await refused(auth, issuer.mint())  # the default audience no longer applies


async def test_token_without_kid_uses_a_fitting_key(
    auth: Authenticator, issuer: TestIssuer
) -> None:
    await accepted(auth, issuer.mint(headers={"kid": None}))
    await accepted(auth, issuer.mint(headers={"kid": None}, key="ec"))


async def test_ps256_and_eddsa_with_keys_without_alg(
    make_auth: AuthFactory, issuer: TestIssuer
) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    issuer.jwks_extra_keys = [
        {**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "ps"},
        {**OKPAlgorithm.to_jwk(ed_key.public_key(), as_dict=True), "kid": "ed"},
    ]
    auth = await make_auth(jwt=[issuer.jwt_issuer(algorithms=["PS256", "EdDSA", "RS256"])])
    claims = issuer.claims()
    hdr = {"typ": "at+jwt"}
    await accepted(auth, jwt.encode(claims, rsa_key, "PS256", {**hdr, "kid": "ps"}))
    await accepted(auth, jwt.encode(claims, ed_key, "EdDSA", {**hdr, "kid": "ed"}))
    # RS256 is allowed, but this key came without an "alg": RS256 with it is fine too ...
    await accepted(auth, jwt.encode(issuer.claims(), rsa_key, "RS256", {**hdr, "kid": "ps"}))
    # ... while ES256 is not configured at all here.
    await refused(auth, issuer.mint(key="ec"))


# --------------------------------------------------------------------------- alg attacks


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", ""])
async def test_alg_none_any_casing(auth: Authenticator, issuer: TestIssuer, alg: str) -> None:
    header = {"alg": alg, "typ": "at+jwt", "kid": issuer.current_key.kid}
    await refused(auth, forge(header, issuer.claims()))
    await refused(auth, forge(header, issuer.claims()).rstrip("."))  # two parts only
    await refused(auth, forge(header, issuer.claims(), b"x"))


def _public_secrets(issuer: TestIssuer) -> dict[str, bytes]:
    public = issuer.current_key.private.public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pkcs1 = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        "pem": pem,
        "pem-crlf": pem.replace(b"\n", b"\r\n"),
        "pem-stripped": pem.strip(),
        "pem-trailing-space": pem + b"  \n",
        "pkcs1-pem": pkcs1,
        "der": der,
        "jwk-json": json.dumps(issuer.current_key.public_jwk()).encode(),
        "jwks-json": json.dumps(issuer.jwks_document()).encode(),
    }


@pytest.mark.parametrize(
    "secret_kind",
    [
        "pem",
        "pem-crlf",
        "pem-stripped",
        "pem-trailing-space",
        "pkcs1-pem",
        "der",
        "jwk-json",
        "jwks-json",
    ],
)
@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_hmac_signed_with_the_public_key(
    auth: Authenticator, issuer: TestIssuer, secret_kind: str, alg: str
) -> None:
    secret = _public_secrets(issuer)[secret_kind]
    header = {"alg": alg, "typ": "at+jwt", "kid": issuer.current_key.kid}
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    signing_input = f"{b64u(header)}.{b64u(issuer.claims())}"
    sig = hmac.new(secret, signing_input.encode(), digest).digest()
    await refused(auth, f"{signing_input}.{b64u(sig)}")


async def test_alg_not_matching_the_keys_own_alg(
    make_auth: AuthFactory, issuer: TestIssuer
) -> None:
    auth = await make_auth(jwt=[issuer.jwt_issuer(algorithms=["RS256", "RS384", "PS256"])])
    # The JWK says alg RS256; the same key signing RS384 or PS256 must not pass.
    for alg in ("RS384", "PS256"):
        await refused(auth, issuer.mint(headers={"alg": alg}))
    await accepted(auth, issuer.mint())


async def test_key_type_mismatch(auth: Authenticator, issuer: TestIssuer) -> None:
    assert issuer.ec_key is not None
    # ES256 header naming the RSA key, signed with the EC key.
    await refused(auth, issuer.mint(key="ec", headers={"kid": issuer.current_key.kid}))
    # RS256 header naming the EC key, signed with the RSA key.
    await refused(auth, issuer.mint(headers={"kid": issuer.ec_key.kid}))


async def test_alg_outside_the_allow_list(make_auth: AuthFactory, issuer: TestIssuer) -> None:
    auth = await make_auth(jwt=[issuer.jwt_issuer(algorithms=["ES256"])])
    await refused(auth, issuer.mint())  # a perfectly signed RS256 token
    await accepted(auth, issuer.mint(key="ec"))


@pytest.mark.parametrize("alg", ["RS256 ", "rs256", "ES256K", "HS256", "dir", "RSA-OAEP", 1, None])
async def test_odd_alg_values(auth: Authenticator, issuer: TestIssuer, alg: Any) -> None:
    header = {"alg": alg, "typ": "at+jwt", "kid": issuer.current_key.kid}
    await refused(auth, forge(header, issuer.claims(), b"sig"))


# --------------------------------------------------------------------------- tampering


def _swap_part(token: str, index: int, value: str) -> str:
    parts = token.split(".")
    parts[index] = value
    return ".".join(parts)


async def test_tampered_payload(auth: Authenticator, issuer: TestIssuer) -> None:
    token = issuer.mint()
    forged = _swap_part(token, 1, b64u(issuer.claims(patient="other-patient")))
    await refused(auth, forged)


async def test_tampered_header(auth: Authenticator, issuer: TestIssuer) -> None:
    token = issuer.mint()
    header = {"alg": "RS256", "typ": "at+jwt", "kid": issuer.current_key.kid, "x": 1}
    await refused(auth, _swap_part(token, 0, b64u(header)))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s[:-4] + ("AAAA" if not s.endswith("AAAA") else "BBBB"),
        lambda s: s[: len(s) // 2],
        lambda s: "",
        lambda s: s + "A",
        lambda s: s + "==",
        lambda s: s.replace(s[5], "-" if s[5] != "-" else "_", 1),
    ],
)
async def test_tampered_signature(
    auth: Authenticator, issuer: TestIssuer, mutate: Callable[[str], str]
) -> None:
    token = issuer.mint()
    await refused(auth, _swap_part(token, 2, mutate(token.split(".")[2])))


async def test_signed_by_another_key_with_our_kid(auth: Authenticator, issuer: TestIssuer) -> None:
    stranger = new_key("rsa")
    token = jwt.encode(issuer.claims(), stranger.private, "RS256", {"kid": issuer.current_key.kid})
    await refused(auth, token)


# --------------------------------------------------------------------------- foreign key hints


async def test_jku_x5u_jwk_headers_are_never_used(
    auth: Authenticator, issuer: TestIssuer, issuer_factory: IssuerFactory
) -> None:
    attacker = await issuer_factory(AUDIENCE)
    evil = attacker.current_key
    claims = issuer.claims()  # claims naming OUR issuer
    headers: list[dict[str, Any]] = [
        {"kid": evil.kid, "jku": attacker.jwks_uri},
        {"kid": evil.kid, "x5u": f"{attacker.url}/cert.pem"},
        {"kid": evil.kid, "jwk": evil.public_jwk()},
        {"kid": issuer.current_key.kid, "jwk": evil.public_jwk(), "jku": attacker.jwks_uri},
        {"jwk": evil.public_jwk()},
        {"x5c": ["MIIB"], "kid": evil.kid},
    ]
    for extra in headers:
        token = jwt.encode(claims, evil.private, "RS256", {"typ": "at+jwt", **extra})
        await refused(auth, token)
    assert sum(attacker.requests.values()) == 0


async def test_jku_header_on_a_valid_token_is_ignored(
    auth: Authenticator, issuer: TestIssuer, issuer_factory: IssuerFactory
) -> None:
    other = await issuer_factory(AUDIENCE)
    await accepted(auth, issuer.mint(headers={"jku": other.jwks_uri, "x5u": other.url}))
    assert sum(other.requests.values()) == 0


@pytest.mark.parametrize(
    "kid",
    [
        "unknown-kid",
        "../../etc/passwd",
        "' OR 1=1 --",
        "x" * 5000,
        "",
        "%00",
        "\u0000",
        "http://127.0.0.1:1/jwks",
        5,
        ["a"],
        {"k": "v"},
        True,
    ],
)
async def test_unknown_and_hostile_kids(auth: Authenticator, issuer: TestIssuer, kid: Any) -> None:
    await refused(auth, issuer.mint(headers={"kid": kid}))


# --------------------------------------------------------------------------- claims


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": "expired"}, "token.expired"),
        ({"exp": None}, "token.invalid"),
        ({"exp": "9999999999"}, "token.invalid"),
        ({"exp": True}, "token.invalid"),
        ({"nbf": "future"}, "token.invalid"),
        ({"iat": "future"}, "token.invalid"),
        ({"nbf": "9"}, "token.invalid"),
        ({"iss": None}, "token.invalid"),
        ({"iss": "https://evil.example"}, "token.invalid"),
        ({"iss": "issuer/"}, "token.invalid"),
        ({"iss": ["issuer"]}, "token.invalid"),
        ({"aud": None}, "token.invalid"),
        ({"aud": "https://other.example/fhir"}, "token.invalid"),
        ({"aud": AUDIENCE + "/"}, "token.invalid"),
        ({"aud": ["https://other.example"]}, "token.invalid"),
        ({"aud": []}, "token.invalid"),
        ({"aud": [[AUDIENCE]]}, "token.invalid"),
        ({"aud": {"a": AUDIENCE}}, "token.invalid"),
        ({"nonce": "n-0S6_WzA2Mj"}, "token.invalid"),
        ({"at_hash": "77QmUPtjPfzWtF2AnpK9RQ"}, "token.invalid"),
        ({"scope": None}, "token.invalid"),
        ({"cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}}, "token.invalid"),
        ({"patient": "../x"}, "token.invalid"),
        ({"patient": "a" * 65}, "token.invalid"),
        ({"patient": "a b"}, "token.invalid"),
        ({"patient": 123}, "token.invalid"),
        ({"patient": ["p1"]}, "token.invalid"),
        ({"fhirUser": "Practitioner/../1"}, "token.invalid"),
    ],
)
async def test_refused_claims(
    auth: Authenticator, issuer: TestIssuer, clock: FakeClock, claims: dict[str, Any], reason: str
) -> None:
    now = int(clock())
    resolved = dict(claims)
    for name, value in claims.items():
        if value == "expired":
            resolved[name] = now - int(LEEWAY) - 1
        elif value == "future":
            resolved[name] = now + int(LEEWAY) + 5
        elif value == "issuer/":
            resolved[name] = issuer.url + "/"
    await refused(auth, issuer.mint(**resolved), reason)


async def test_id_token_used_as_access_token(auth: Authenticator, issuer: TestIssuer) -> None:
    id_token = issuer.mint(
        headers={"typ": "JWT"},
        scope=None,
        client_id=None,
        patient=None,
        aud=AUDIENCE,
        nonce="abc",
        auth_time=1,
        at_hash="x",
    )
    await refused(auth, id_token)
    await refused(auth, issuer.mint(headers={"typ": "JWT"}, scope=None, patient=None))


@pytest.mark.parametrize(
    "typ", ["id_token+jwt", "logout+jwt", "dpop+jwt", "JOSE", "JOSE+JSON", "at+jwt ", "", 1]
)
async def test_refused_typ(auth: Authenticator, issuer: TestIssuer, typ: Any) -> None:
    await refused(auth, issuer.mint(headers={"typ": typ}))


@pytest.mark.parametrize(
    "header_extra",
    [{"crit": ["exp"]}, {"crit": []}, {"b64": False, "crit": ["b64"]}, {"zip": "DEF"}],
)
async def test_critical_and_unsupported_headers(
    auth: Authenticator, issuer: TestIssuer, header_extra: dict[str, Any]
) -> None:
    await refused(auth, issuer.mint(headers=header_extra))


@pytest.mark.parametrize(
    "raw_exp", ["1e999", "NaN", "Infinity", "-Infinity", "99999999999999999999999999999999"]
)
async def test_non_finite_exp(auth: Authenticator, issuer: TestIssuer, raw_exp: str) -> None:
    claims = issuer.claims(exp=1234567)
    text = json.dumps(claims).replace("1234567", raw_exp)
    header = {"alg": "RS256", "typ": "at+jwt", "kid": issuer.current_key.kid}
    signing_input = f"{b64u(header)}.{b64u(text)}"
    sig = jwt.get_algorithm_by_name("RS256").sign(
        signing_input.encode(), issuer.current_key.private
    )
    token = f"{signing_input}.{b64u(sig)}"
    # A huge integer is still a finite number: only the non-finite values must fail.
    if raw_exp.startswith("9999"):
        await accepted(auth, token)
    else:
        await refused(auth, token)


@pytest.mark.parametrize(
    "token",
    [
        "a.b.c.d.e",
        "eyJhbGciOiJSUzI1NiJ9.bm90LWpzb24.c2ln",
        "eyJhbGciOiJSUzI1NiJ9.WzFd.c2ln",
        "W10.e30.c2ln",
        "e30.e30.",
        "..",
        "opaque-token-without-dots",
        f"{b64u('[' * 3000)}.e30.c2ln",
        f"{b64u({'alg': 'RS256'})}.{b64u('[' * 3000)}.c2ln",
    ],
)
async def test_malformed_or_unroutable_tokens(auth: Authenticator, token: str) -> None:
    await refused(auth, token)


async def test_payload_not_an_object(auth: Authenticator, issuer: TestIssuer) -> None:
    header = {"alg": "RS256", "typ": "at+jwt", "kid": issuer.current_key.kid}
    signing_input = f"{b64u(header)}.{b64u('[1, 2]')}"
    sig = jwt.get_algorithm_by_name("RS256").sign(
        signing_input.encode(), issuer.current_key.private
    )
    await refused(auth, f"{signing_input}.{b64u(sig)}")


async def test_nothing_about_the_token_is_logged(
    auth: Authenticator, issuer: TestIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = [
        issuer.mint(patient="../x"),
        issuer.mint(headers={"kid": "nope"}),
        issuer.mint(aud="x"),
        forge({"alg": "none"}, issuer.claims()),
    ]
    for token in tokens:
        await refused(auth, token)
    text = caplog.text
    for token in tokens:
        for part in token.split("."):
            if part:
                assert part not in text
    assert "pat-1" not in text


# ----------------------------------------------------------------- refused for the right reason

DETAIL_CASES: list[tuple[str, Callable[[TestIssuer], str], str]] = [
    ("alg-none", lambda i: forge({"alg": "none", "kid": i.current_key.kid}, i.claims()), "alg"),
    (
        "hs256-with-pem",
        lambda i: hs256(
            {"alg": "HS256", "kid": i.current_key.kid}, i.claims(), _public_secrets(i)["pem"]
        ),
        "alg",
    ),
    ("unknown-kid", lambda i: i.mint(headers={"kid": "nope"}), "no-fitting-key"),
    ("key-type", lambda i: i.mint(key="ec", headers={"kid": i.current_key.kid}), "no-fitting-key"),
    (
        "tampered",
        lambda i: _swap_part(i.mint(), 1, b64u(i.claims(patient="other"))),
        "signature",
    ),
    ("typ", lambda i: i.mint(headers={"typ": "JOSE"}), "typ"),
    ("crit", lambda i: i.mint(headers={"crit": ["exp"]}), "unsupported-header"),
    ("long-kid", lambda i: i.mint(headers={"kid": "k" * 5000}), "kid"),
    ("aud", lambda i: i.mint(aud="https://other.example"), "aud"),
    ("unknown-iss", lambda i: i.mint(iss="https://other.example"), "unknown-issuer"),
    ("exp-missing", lambda i: i.mint(exp=None), "exp"),
    ("expired", lambda i: i.mint(exp=int(i.clock()) - 100), "exp"),
    ("nbf", lambda i: i.mint(nbf=int(i.clock()) + 100), "nbf"),
    ("iat", lambda i: i.mint(iat=int(i.clock()) + 100), "iat"),
    ("nonce", lambda i: i.mint(nonce="n"), "id-token"),
    ("cnf", lambda i: i.mint(cnf={"jkt": "x"}), "sender-constrained"),
    ("no-scope", lambda i: i.mint(scope=None), "no-scope"),
    ("patient", lambda i: i.mint(patient="../x"), "claim:patient"),
    ("fhir-user", lambda i: i.mint(fhirUser="Patient"), "claim:fhirUser"),
    ("opaque", lambda i: "opaque-token", "not-a-jwt"),
]


@pytest.mark.parametrize(
    ("build", "detail"), [c[1:] for c in DETAIL_CASES], ids=[c[0] for c in DETAIL_CASES]
)
async def test_refused_for_the_right_reason(
    auth: Authenticator,
    issuer: TestIssuer,
    caplog: pytest.LogCaptureFixture,
    build: Callable[[TestIssuer], str],
    detail: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.auth")
    with pytest.raises(Unauthorized):
        await auth.authenticate(f"Bearer {build(issuer)}", token_elsewhere=False)
    assert f"({detail})" in caplog.text
