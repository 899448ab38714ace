"""The one JSON codec the gateway uses for FHIR bodies: fast and decimal-exact.

FHIR decimals carry their precision (``1.50`` is not ``1.5``), so JSON numbers with a fraction
or exponent decode to ``decimal.Decimal`` and encode back as the same JSON number text.
msgspec does both at C speed (``float_hook`` / ``decimal_format="number"``); the standard
library's ``json`` would need a slow Python round trip to achieve the same.
"""

from __future__ import annotations

import json as stdlib_json
from decimal import Decimal
from typing import Any

import msgspec

_decoder = msgspec.json.Decoder(float_hook=Decimal)
_encoder = msgspec.json.Encoder(decimal_format="number")


class JsonError(ValueError):
    """The bytes are not valid JSON (the message never quotes the input)."""


def decode(data: bytes | str) -> Any:
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        raise JsonError("invalid JSON") from None  # RecursionError: nested too deeply


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


class _DuplicateKey(Exception):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> None:
    if len({k for k, _ in pairs}) != len(pairs):
        raise _DuplicateKey
    return None


def has_duplicate_keys(data: bytes | str) -> bool:
    """True if any JSON object in ``data`` (already known to be valid JSON) repeats a name.

    Parsers disagree on duplicates (msgspec and the stdlib keep the last, others the first
    or merge), so a body the gateway judged could mean something else upstream. msgspec
    cannot report them; the stdlib's pair hook can (slower: used on client write bodies
    only, which are small and rare next to reads).
    """
    try:
        stdlib_json.loads(data, object_pairs_hook=_unique_pairs, parse_float=str, parse_int=str)
    except _DuplicateKey:
        return True
    except RecursionError:
        raise JsonError("invalid JSON") from None  # nested too deeply
    return False
