"""RFC 6750 transport rules: where a token may come from and the challenges we send."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.auth.bearer import (
    DESCRIPTION_MALFORMED,
    DESCRIPTION_TWO_PLACES,
    MAX_AUTHORIZATION_LENGTH,
    challenge,
    extract_bearer,
)
from gateway.errors import GatewayError, InvalidRequest, Unauthorized

REALM = "fhir-gateway"
TOKEN = "abc.DEF-ghi_jkl~mno+pqr/stu=="
FIXED_TEXTS = {
    "Authentication is required.",
    DESCRIPTION_MALFORMED,
    DESCRIPTION_TWO_PLACES,
}


def _error(exc: GatewayError) -> str | None:
    value = exc.headers["WWW-Authenticate"]
    assert value.startswith(f'Bearer realm="{REALM}"')
    if 'error="' not in value:
        return None
    return value.split('error="', 1)[1].split('"', 1)[0]


@pytest.mark.parametrize(
    "header",
    [
        f"Bearer {TOKEN}",
        f"bearer {TOKEN}",
        f"BEARER {TOKEN}",
        f"BeArEr {TOKEN}",
        f"Bearer   {TOKEN}",
        f"  Bearer {TOKEN}  ",
    ],
)
def test_accepted_header_forms(header: str) -> None:
    assert extract_bearer(header, token_elsewhere=False, realm=REALM) == TOKEN


def test_no_header_is_401_without_error_code() -> None:
    with pytest.raises(Unauthorized) as info:
        extract_bearer(None, token_elsewhere=False, realm=REALM)
    assert info.value.status == 401
    assert info.value.reason == "token.missing"
    assert info.value.headers == {"WWW-Authenticate": f'Bearer realm="{REALM}"'}


def test_token_only_in_query_or_body_is_never_accepted() -> None:
    with pytest.raises(Unauthorized) as info:
        extract_bearer(None, token_elsewhere=True, realm=REALM)
    assert info.value.reason == "token.missing"
    assert _error(info.value) is None


def test_token_in_two_places_is_400_invalid_request() -> None:
    with pytest.raises(InvalidRequest) as info:
        extract_bearer(f"Bearer {TOKEN}", token_elsewhere=True, realm=REALM)
    assert info.value.status == 400
    assert info.value.reason == "token.invalid-request"
    assert _error(info.value) == "invalid_request"


@pytest.mark.parametrize(
    "header", ["Basic dXNlcjpwYXNz", "DPoP abc", "Negotiate x", "", "Bearer%20abc"]
)
def test_other_scheme_is_401_without_error_code(header: str) -> None:
    with pytest.raises(Unauthorized) as info:
        extract_bearer(header, token_elsewhere=False, realm=REALM)
    assert info.value.reason == "token.missing"
    assert _error(info.value) is None


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer ",
        "Bearer a b",
        "Bearer a,b",
        "Bearer a=b",
        "Bearer =abc",
        "Bearer\tabc",
        "Bearer abc\tdef",
        "Bearer abc\r\ndef",
        "Bearer tökén",
        'Bearer "abc"',
        "Bearer abc;",
        "{}",
        "Bearer " + "a" * MAX_AUTHORIZATION_LENGTH,
    ],
)
def test_malformed_bearer_is_401_invalid_token(header: str) -> None:
    with pytest.raises(Unauthorized) as info:
        extract_bearer(header, token_elsewhere=False, realm=REALM)
    assert info.value.reason == "token.invalid"
    assert _error(info.value) == "invalid_token"
    assert "abc" not in info.value.diagnostics


def test_challenge_quotes_the_realm() -> None:
    assert challenge('a "b" \\c\r\n') == 'Bearer realm="a \\"b\\" \\\\c"'
    assert (
        challenge("r", "invalid_token", "The access token expired.")
        == 'Bearer realm="r", error="invalid_token", '
        'error_description="The access token expired."'
    )


@given(st.text(max_size=200), st.booleans())
def test_extract_never_fails_open(header: str, elsewhere: bool) -> None:
    """Any header yields a b64token or one of our errors; nothing else escapes."""
    try:
        token = extract_bearer(header, token_elsewhere=elsewhere, realm=REALM)
    except (Unauthorized, InvalidRequest) as exc:
        assert exc.diagnostics in FIXED_TEXTS
        return
    assert not elsewhere
    assert token and " " not in token and token in header
