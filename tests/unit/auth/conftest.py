"""Fixtures for the token-validation unit tests: a fake clock, a real issuer, an Authenticator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from gateway.auth import Authenticator
from gateway.config import AuthConfig
from tests.support.issuer import DEFAULT_AUDIENCE as AUDIENCE
from tests.support.issuer import (  # noqa: F401 - issuer_factory is a fixture
    FakeClock,
    IssuerFactory,
    TestIssuer,
    issuer_factory,
)

REALM = "fhir-gateway"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def issuer(issuer_factory: IssuerFactory, clock: FakeClock) -> TestIssuer:  # noqa: F811
    return await issuer_factory(AUDIENCE, with_ec=True, clock=clock)


AuthFactory = Callable[..., Awaitable[Authenticator]]


@pytest.fixture
async def make_auth(session: aiohttp.ClientSession, clock: FakeClock) -> AsyncIterator[AuthFactory]:
    """``auth = await make_auth(jwt=[...], introspection=..., start=True, **auth_config)``."""
    made: list[Authenticator] = []

    async def make(*, start: bool = True, **config: Any) -> Authenticator:
        auth = Authenticator(
            AuthConfig(**config),
            default_audience=AUDIENCE,
            realm=REALM,
            session=session,
            clock=clock,
        )
        made.append(auth)
        if start:
            await auth.start()
        return auth

    yield make
    for auth in made:
        await auth.close()


@pytest.fixture
async def auth(make_auth: AuthFactory, issuer: TestIssuer) -> Authenticator:
    """An Authenticator trusting ``issuer`` whose key set is already fetched."""
    a = await make_auth(jwt=[issuer.jwt_issuer(algorithms=["RS256", "ES256"])])
    for keys in a.issuer_keys.values():
        assert await keys.refresh()
    assert a.ready
    return a
