#!/usr/bin/env python3
"""The cost of authentication on the hot path: microseconds per `Authenticator.authenticate`.

Three cases, on one core: a token already verified (the verified-token cache answers), a fresh
RS256 token (full signature check + claims), and, for scale, a bare `sha256` of the token.

Usage: .venv/bin/python bench/auth_cost.py [--n 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.auth import Authenticator
from gateway.config import AuthConfig
from gateway.demo_issuer import DemoIssuer

AUDIENCE = "https://fhir.example.org/r4"


async def main(n: int) -> None:
    issuer = DemoIssuer(audience=AUDIENCE).start()
    try:
        async with aiohttp.ClientSession() as session:
            auth = Authenticator(
                AuthConfig.model_validate(issuer.auth_section()),
                default_audience=AUDIENCE,
                realm=AUDIENCE,
                session=session,
            )
            await auth.start()
            for _ in range(200):  # the key set is fetched in the background at start
                if auth.ready:
                    break
                await asyncio.sleep(0.05)
            token = issuer.mint(sub="bench", client_id="bench", scope="patient/*.rs", patient="p1")
            header = f"Bearer {token}"
            await auth.authenticate(header, token_elsewhere=False)

            t0 = time.perf_counter()
            for _ in range(n):
                await auth.authenticate(header, token_elsewhere=False)
            cached = (time.perf_counter() - t0) / n * 1e6

            fresh_tokens = [
                issuer.mint(sub=f"u{i}", client_id="bench", scope="system/*.rs")
                for i in range(min(n, 2000))
            ]
            t0 = time.perf_counter()
            for t in fresh_tokens:
                await auth.authenticate(f"Bearer {t}", token_elsewhere=False)
            fresh = (time.perf_counter() - t0) / len(fresh_tokens) * 1e6

            t0 = time.perf_counter()
            for _ in range(n):
                hashlib.sha256(token.encode()).hexdigest()
            digest = (time.perf_counter() - t0) / n * 1e6
            await auth.close()
    finally:
        issuer.stop()
    print("| case | µs per request |")
    print("|---|---:|")
    print(f"| cached token (verified-token cache hit) | {cached:.1f} |")
    print(f"| fresh RS256 token (signature + claims) | {fresh:.1f} |")
    print(f"| sha256 fingerprint alone | {digest:.1f} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    asyncio.run(main(ap.parse_args().n))
