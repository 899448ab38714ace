"""Paging cursors (issue 5): AES-GCM sealed, caller-bound, expiring, rotatable.

``CursorCodec`` with an injected clock; the HTTP round trip is in
``tests/integration/test_phi_cursors.py``.
"""

from __future__ import annotations

import base64
import os

import msgspec
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import BadRequest, NotFound
from gateway.phi.cursors import CursorCodec, CursorData, caller_binding
from tests.support.issuer import FakeClock

K1 = os.urandom(32)
K2 = os.urandom(32)
BINDING = caller_binding("https://issuer.test", "user-1", "client-1")
ARGS = {
    "method": "GET",
    "path": ("Patient",),
    "params": (("name", "PHIMARK-Smith"), ("birthdate", "1961-06-03")),
    "link": "Patient?name=PHIMARK-Smith&_offset=10",
}


def codec(*keys: bytes, clock: FakeClock | None = None, ttl: float = 900) -> CursorCodec:
    return CursorCodec(keys=list(keys), ttl_s=ttl, clock=clock or FakeClock())


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_round_trip() -> None:
    c = codec(K1)
    token = c.seal(**ARGS, binding=BINDING)
    data = c.open(token, BINDING)
    assert (data.method, data.path, data.params, data.link) == (
        "GET",
        ("Patient",),
        ARGS["params"],
        ARGS["link"],
    )


def test_cursor_is_url_safe_and_reveals_nothing() -> None:
    token = codec(K1).seal(**ARGS, binding=BINDING)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    raw = unb64(token)
    for marker in (b"PHIMARK", b"Smith", b"1961", b"Patient", b"_offset", BINDING.encode()):
        assert marker not in raw


def test_each_seal_uses_a_fresh_nonce() -> None:
    c = codec(K1)
    assert c.seal(**ARGS, binding=BINDING) != c.seal(**ARGS, binding=BINDING)


@pytest.mark.parametrize(
    "other",
    [
        caller_binding("https://issuer.test", "user-2", "client-1"),
        caller_binding("https://issuer.test", "user-1", "client-2"),
        caller_binding("https://other-issuer.test", "user-1", "client-1"),
        caller_binding(None, None, None),
    ],
)
def test_foreign_caller_is_404(other: str) -> None:
    c = codec(K1)
    token = c.seal(**ARGS, binding=BINDING)
    with pytest.raises(NotFound) as err:
        c.open(token, other)
    assert err.value.status == 404
    assert err.value.reason == "cursor.foreign"


def test_binding_components_do_not_run_together() -> None:
    assert caller_binding("i", "ab", "c") != caller_binding("i", "a", "bc")
    assert caller_binding("i", "a", None) == caller_binding("i", "a", "")
    token = "eyJhbGciOiJSUzI1NiJ9.secret.sig"
    assert token not in caller_binding("i", "a", "c")


def test_expiry_with_injected_clock() -> None:
    clock = FakeClock(1_000_000.0)
    c = codec(K1, clock=clock, ttl=60)
    token = c.seal(**ARGS, binding=BINDING)
    clock.advance(59.9)
    c.open(token, BINDING)
    clock.advance(0.1)
    c.open(token, BINDING)  # exactly at the expiry instant: still valid
    clock.advance(0.01)
    with pytest.raises(NotFound) as err:
        c.open(token, BINDING)
    assert err.value.reason == "cursor.expired"


def test_every_bit_flip_is_refused() -> None:
    c = codec(K1)
    token = c.seal(**ARGS, binding=BINDING)
    raw = unb64(token)
    for i in range(len(raw)):
        for bit in (0x01, 0x80):
            forged = bytearray(raw)
            forged[i] ^= bit
            with pytest.raises(BadRequest):
                c.open(b64(bytes(forged)), BINDING)


def test_tampered_text_character_is_refused() -> None:
    c = codec(K1)
    token = c.seal(**ARGS, binding=BINDING)
    mid = len(token) // 2
    forged = token[:mid] + ("A" if token[mid] != "A" else "B") + token[mid + 1 :]
    with pytest.raises(BadRequest) as err:
        c.open(forged, BINDING)
    assert err.value.status == 400


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "A",
        "AAAA",
        "not a cursor",
        "%%%%",
        "Zm9v",  # "foo"
        "é" * 40,
        "=" * 40,
        "A" * 200,
        b64(b"\x02" + os.urandom(60)),  # unknown version
        b64(b"\x01" + os.urandom(12) + os.urandom(15)),  # shorter than a tag
        b64(b"\x01" + os.urandom(100)),  # right version, random content
    ],
)
def test_garbage_is_400(garbage: str) -> None:
    with pytest.raises(BadRequest) as err:
        codec(K1).open(garbage, BINDING)
    assert err.value.status == 400
    assert err.value.reason == "cursor.invalid"


def test_truncations_are_400() -> None:
    c = codec(K1)
    token = c.seal(**ARGS, binding=BINDING)
    for cut in (1, 2, 3, 4, 10, len(token) // 2, len(token) - 1):
        with pytest.raises(BadRequest):
            c.open(token[:cut], BINDING)
        with pytest.raises(BadRequest):
            c.open(token[cut:], BINDING)


def test_authentic_but_undecodable_plaintext_is_400() -> None:
    nonce = os.urandom(12)
    sealed = AESGCM(K1).encrypt(nonce, b"\xc1 not msgpack", b"\x01")
    with pytest.raises(BadRequest):
        codec(K1).open(b64(b"\x01" + nonce + sealed), BINDING)


def test_wrong_associated_data_is_400() -> None:
    nonce = os.urandom(12)
    plain = msgspec.msgpack.encode(CursorData("GET", (), (), "", BINDING, 1e12))
    sealed = AESGCM(K1).encrypt(nonce, plain, b"\x02")
    with pytest.raises(BadRequest):
        codec(K1).open(b64(b"\x01" + nonce + sealed), BINDING)


def test_key_rotation() -> None:
    old = codec(K1).seal(**ARGS, binding=BINDING)
    rotated = codec(K2, K1)
    assert rotated.open(old, BINDING).link == ARGS["link"]
    new = rotated.seal(**ARGS, binding=BINDING)
    assert codec(K2).open(new, BINDING).link == ARGS["link"]  # the first key seals
    with pytest.raises(BadRequest):
        codec(K1).open(new, BINDING)
    with pytest.raises(BadRequest):
        codec(K2).open(old, BINDING)  # old key dropped: refused


def test_replicas_sharing_a_key_accept_each_other() -> None:
    a, b = codec(K1), codec(K1)
    assert b.open(a.seal(**ARGS, binding=BINDING), BINDING).params == ARGS["params"]


def test_from_config() -> None:
    c = CursorCodec.from_config([b64(K2), b64(K1)], 30)
    assert c.keys == [K2, K1]
    assert c.ttl_s == 30
    assert c.open(codec(K1).seal(**ARGS, binding=BINDING), BINDING)


def test_from_config_without_keys_uses_a_random_key_per_process() -> None:
    a = CursorCodec.from_config([], 30)
    b = CursorCodec.from_config([], 30)
    assert len(a.keys) == 1 and len(a.keys[0]) == 32
    with pytest.raises(BadRequest):
        b.open(a.seal(**ARGS, binding=BINDING), BINDING)
