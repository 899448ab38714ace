"""The Authenticator against a real authorization server: panva/oidc-provider 9.x on 127.0.0.1.

The server (``tests/node/oidc/server.mjs``) issues client_credentials access tokens: RFC 9068
JWTs for the gateway's audience (the default resource, RFC 8707) and opaque tokens for a second
resource indicator, checked through its RFC 7662 introspection endpoint; RFC 7009 revocation is
enabled. Node and ``tests/node/node_modules`` (``make node``) are required: without them these
tests fail, they are never skipped.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from gateway.auth import Authenticator
from gateway.config import AuthConfig, Introspection, JwtIssuer
from gateway.errors import Unauthorized
from tests.support.issuer import FakeClock

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
SERVER = NODE_DIR / "oidc" / "server.mjs"
AUDIENCE = "https://gateway.example/fhir"
OPAQUE_RESOURCE = "urn:fhir-gateway:opaque"
PATIENT = "pat-123"
BACKEND = ("smart-backend", "backend-secret")
GATEWAY = ("fhir-gateway", "gateway-secret")
REALM = "fhir-gateway"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def signing_jwks() -> tuple[dict[str, Any], str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = RSAAlgorithm.to_jwk(key, as_dict=True)
    kid = f"oidc-{os.urandom(6).hex()}"
    jwk.update(kid=kid, use="sig", alg="RS256")
    return {"keys": [jwk]}, kid


class OidcProvider:
    """One oidc-provider process; ``restart()`` keeps the port (so the issuer) and may rekey."""

    def __init__(self) -> None:
        node = shutil.which("node")
        if node is None:
            pytest.fail("node is not installed: the real authorization server cannot run")
        if not (NODE_DIR / "node_modules" / "oidc-provider").is_dir():
            pytest.fail("tests/node/node_modules is missing: run `make node`")
        self.node = node
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.jwks, self.kid = signing_jwks()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the owner after stop()

    def start(self) -> None:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/tmp"),
            "OIDC_PORT": str(self.port),
            "OIDC_AUDIENCE": AUDIENCE,
            "OIDC_OPAQUE_RESOURCE": OPAQUE_RESOURCE,
            "OIDC_JWKS": json.dumps(self.jwks),
            "OIDC_PATIENT": PATIENT,
            "OIDC_CLIENTS": json.dumps([list(BACKEND), list(GATEWAY)]),
        }
        self.proc = subprocess.Popen(
            [self.node, str(SERVER)],
            cwd=NODE_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"oidc-provider exited early:\n{self.output()}")
            try:
                with urllib.request.urlopen(
                    f"{self.url}/.well-known/openid-configuration", timeout=1
                ) as resp:
                    if json.load(resp)["issuer"] == self.url:
                        return
            except (OSError, urllib.error.URLError, ValueError):
                time.sleep(0.1)
        pytest.fail(f"oidc-provider did not answer in time:\n{self.output()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def restart(self, *, new_key: bool) -> None:
        self.stop()
        if new_key:
            self.jwks, self.kid = signing_jwks()
        self.start()

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    # ------------------------------------------------------------------ client side

    async def _post(self, path: str, form: dict[str, str], who: tuple[str, str]) -> tuple[int, Any]:
        """A client request on its own connection (never one of the Authenticator's)."""
        basic = base64.b64encode(f"{who[0]}:{who[1]}".encode()).decode()
        async with (
            aiohttp.ClientSession() as client,
            client.post(
                f"{self.url}{path}", data=form, headers={"Authorization": f"Basic {basic}"}
            ) as resp,
        ):
            text = await resp.text()
            return resp.status, (json.loads(text) if text else None)

    async def token(
        self,
        *,
        scope: str = "system/*.rs",
        resource: str | None = None,
    ) -> dict[str, Any]:
        form = {"grant_type": "client_credentials", "scope": scope}
        if resource is not None:
            form["resource"] = resource
        status, body = await self._post("/token", form, BACKEND)
        assert status == 200, body
        assert isinstance(body, dict)
        return body

    async def revoke(self, token: str) -> None:
        status, _ = await self._post("/token/revocation", {"token": token}, BACKEND)
        assert status == 200

    async def introspect(self, token: str) -> tuple[int, Any]:
        return await self._post("/token/introspection", {"token": token}, GATEWAY)


@pytest.fixture(scope="module")
def oidc() -> Iterator[OidcProvider]:
    provider = OidcProvider()
    provider.start()
    yield provider
    provider.stop()
    provider.log.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def auth_config(oidc: OidcProvider, **overrides: Any) -> AuthConfig:
    data: dict[str, Any] = {
        "jwt": [JwtIssuer(issuer=oidc.url, algorithms=["RS256"])],  # discovery finds the JWKS
        "introspection": Introspection(
            endpoint=f"{oidc.url}/token/introspection",
            client_id=GATEWAY[0],
            client_secret=GATEWAY[1],
        ),
    }
    data.update(overrides)
    return AuthConfig(**data)


@pytest.fixture
async def authenticator(
    oidc: OidcProvider, session: aiohttp.ClientSession
) -> AsyncIterator[Authenticator]:
    auth = Authenticator(auth_config(oidc), default_audience=AUDIENCE, realm=REALM, session=session)
    await auth.start()
    yield auth
    await auth.close()


def jose_header(token: str) -> dict[str, Any]:
    part = token.split(".")[0]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


async def test_client_credentials_jwt_is_accepted(
    oidc: OidcProvider, authenticator: Authenticator, session: aiohttp.ClientSession
) -> None:
    answer = await oidc.token()
    token = answer["access_token"]
    assert jose_header(token) == {"alg": "RS256", "typ": "at+jwt", "kid": oidc.kid}
    principal = await authenticator.authenticate(f"Bearer {token}", token_elsewhere=False)
    assert authenticator.ready
    assert principal.token_kind == "jwt"
    assert principal.issuer == oidc.url
    assert principal.client_id == BACKEND[0]
    assert principal.scopes == ("system/*.rs",)
    assert principal.patient == PATIENT
    assert principal.claims["aud"] == AUDIENCE


async def test_unknown_scopes_are_dropped_by_the_server(
    oidc: OidcProvider, authenticator: Authenticator, session: aiohttp.ClientSession
) -> None:
    answer = await oidc.token(scope="system/Observation.rs unknown/Thing.x")
    assert answer["scope"] == "system/Observation.rs"
    principal = await authenticator.authenticate(
        f"Bearer {answer['access_token']}", token_elsewhere=False
    )
    assert principal.scopes == ("system/Observation.rs",)


async def test_the_server_refuses_to_introspect_its_jwts(
    oidc: OidcProvider, session: aiohttp.ClientSession
) -> None:
    token = (await oidc.token())["access_token"]
    status, body = await oidc.introspect(token)
    assert status == 400
    assert body["error"] == "unsupported_token_type"


async def test_opaque_token_is_introspected(
    oidc: OidcProvider, authenticator: Authenticator, session: aiohttp.ClientSession
) -> None:
    token = (await oidc.token(resource=OPAQUE_RESOURCE))["access_token"]
    assert token.count(".") == 0
    principal = await authenticator.authenticate(f"Bearer {token}", token_elsewhere=False)
    assert principal.token_kind == "opaque"
    assert principal.client_id == BACKEND[0]
    assert principal.scopes == ("system/*.rs",)
    assert principal.patient == PATIENT
    assert principal.issuer == oidc.url


async def test_revoked_token_is_refused(oidc: OidcProvider, session: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    auth = Authenticator(
        auth_config(oidc), default_audience=AUDIENCE, realm=REALM, session=session, clock=clock
    )
    try:
        seen = (await oidc.token(resource=OPAQUE_RESOURCE))["access_token"]
        unseen = (await oidc.token(resource=OPAQUE_RESOURCE))["access_token"]
        await auth.authenticate(f"Bearer {seen}", token_elsewhere=False)
        await oidc.revoke(seen)
        await oidc.revoke(unseen)
        with pytest.raises(Unauthorized) as info:
            await auth.authenticate(f"Bearer {unseen}", token_elsewhere=False)
        assert info.value.reason == "token.revoked"
        # A revocation is honoured once the cached answer (at most cache_max_ttl_s) runs out.
        clock.advance(60)
        with pytest.raises(Unauthorized) as info:
            await auth.authenticate(f"Bearer {seen}", token_elsewhere=False)
        assert info.value.reason == "token.revoked"
    finally:
        await auth.close()


async def test_restart_with_a_new_signing_key(session: aiohttp.ClientSession) -> None:
    provider = OidcProvider()
    provider.start()
    clock = FakeClock()
    auth = Authenticator(
        auth_config(provider),
        default_audience=AUDIENCE,
        realm=REALM,
        session=session,
        clock=clock,
    )
    try:
        await auth.start()
        old_kid = provider.kid
        before = (await provider.token())["access_token"]
        never_seen = (await provider.token())["access_token"]
        await auth.authenticate(f"Bearer {before}", token_elsewhere=False)
        opaque = (await provider.token(resource=OPAQUE_RESOURCE))["access_token"]
        await auth.authenticate(f"Bearer {opaque}", token_elsewhere=False)

        provider.restart(new_key=True)
        assert provider.kid != old_kid
        after = (await provider.token())["access_token"]
        assert jose_header(after)["kid"] == provider.kid
        clock.advance(60)  # jwks_min_refetch_interval_s since the last fetch
        principal = await auth.authenticate(f"Bearer {after}", token_elsewhere=False)
        assert principal.client_id == BACKEND[0]
        # Introspection reaches the new process although a pooled connection went stale.
        opaque = (await provider.token(resource=OPAQUE_RESOURCE))["access_token"]
        assert (await auth.authenticate(f"Bearer {opaque}", token_elsewhere=False)).token_kind == (
            "opaque"
        )
        # A token signed with the retired key (and never verified before) is refused now.
        with pytest.raises(Unauthorized) as info:
            await auth.authenticate(f"Bearer {never_seen}", token_elsewhere=False)
        assert info.value.reason == "token.invalid"
    finally:
        await auth.close()
        provider.stop()
        provider.log.close()
