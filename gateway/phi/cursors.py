"""Paging cursors: opaque, encrypted, authenticated, caller-bound and short-lived (decision 14).

A cursor replaces every link of a returned Bundle (``self``, ``first``, ``previous``, ``next``,
``last``). It holds the client's original request (so following it re-runs authorization for
the current caller), the upstream page link, the binding (a hash of issuer, subject and client
id, never the token) and an expiry. AES-256-GCM (``cryptography``) encrypts and authenticates
it; the key comes from ``phi.cursor_keys`` (the first encrypts; all decrypt, for rotation).
Cursors need no server-side state, so every replica that shares the keys accepts them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import BadRequest, NotFound

_VERSION = b"\x01"
_NONCE = 12


class CursorData(msgspec.Struct, frozen=True, array_like=True):
    method: str  # the client's original method (GET or POST _search)
    path: tuple[str, ...]  # the client's original path segments (below the base)
    params: tuple[tuple[str, str], ...]  # the client's original parameters
    link: str  # the upstream page link, relative to the upstream base
    binding: str
    expires: float


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(CursorData)


def caller_binding(
    issuer: str | None, subject: str | None, client_id: str | None, patient: str | None = None
) -> str:
    """Who may follow a cursor: the same user of the same app, in the same patient context."""
    raw = "\x1f".join(x or "" for x in (issuer, subject, client_id, patient)).encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class CursorCodec:
    keys: list[bytes]
    ttl_s: float
    clock: Callable[[], float] = time.time

    @classmethod
    def from_config(cls, keys: list[str], ttl_s: float) -> CursorCodec:
        raw = [_unb64(k) for k in keys] or [AESGCM.generate_key(bit_length=256)]
        return cls(keys=raw, ttl_s=ttl_s)

    def seal(
        self,
        *,
        method: str,
        path: tuple[str, ...],
        params: tuple[tuple[str, str], ...],
        link: str,
        binding: str,
    ) -> str:
        data = CursorData(method, path, params, link, binding, self.clock() + self.ttl_s)
        nonce = os.urandom(_NONCE)
        sealed = AESGCM(self.keys[0]).encrypt(nonce, _encoder.encode(data), _VERSION)
        return _b64(_VERSION + nonce + sealed)

    def open(self, token: str, binding: str) -> CursorData:
        """The cursor's content; 400 if it is not a cursor of ours, 404 if expired or foreign."""
        try:
            blob = _unb64(token)
        except (ValueError, TypeError):
            raise BadRequest("Invalid paging cursor.", reason="cursor.invalid") from None
        if len(blob) < 1 + _NONCE + 16 or blob[:1] != _VERSION:
            raise BadRequest("Invalid paging cursor.", reason="cursor.invalid")
        nonce, sealed = blob[1 : 1 + _NONCE], blob[1 + _NONCE :]
        for key in self.keys:
            try:
                plain = AESGCM(key).decrypt(nonce, sealed, _VERSION)
            except InvalidTag:
                continue
            try:
                data = _decoder.decode(plain)
            except msgspec.DecodeError:
                break
            if data.binding != binding:
                raise NotFound(reason="cursor.foreign")
            if data.expires < self.clock():
                raise NotFound("The paging cursor has expired.", reason="cursor.expired")
            return data
        raise BadRequest("Invalid paging cursor.", reason="cursor.invalid")
