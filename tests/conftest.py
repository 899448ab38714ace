"""Shared fixtures: the recording fake upstream, a test issuer, and the gateway between them.

Real-server fixtures (sekmet-fhir, oidc-provider) live in tests/support and are imported by the
test modules that need them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import PUBLIC_BASE, RunningGateway, make_config, run_gateway
from tests.support.issuer import TestIssuer, issuer_factory, start_issuer

__all__ = ["issuer_factory"]

GatewayFactory = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
async def fake_upstream() -> AsyncIterator[FakeUpstream]:
    fake = await FakeUpstream.start()
    yield fake
    await fake.close()


@pytest.fixture
async def issuer() -> AsyncIterator[TestIssuer]:
    iss = await start_issuer(PUBLIC_BASE)
    yield iss
    await iss.stop()


@pytest.fixture
async def gateway_factory(
    fake_upstream: FakeUpstream, issuer: TestIssuer
) -> AsyncIterator[GatewayFactory]:
    """Start gateways in front of the fake upstream, trusting the test issuer."""
    started: list[RunningGateway] = []

    async def make(upstream_url: str | None = None, **sections: Any) -> RunningGateway:
        auth = {"jwt": [{"issuer": issuer.url, "jwks_uri": issuer.jwks_uri}]}
        sections = {"auth": auth, **sections}
        cfg = make_config(upstream_url or fake_upstream.base_url, **sections)
        gw = await run_gateway(cfg)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        await gw.close()


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory) -> RunningGateway:
    return await gateway_factory()


@pytest.fixture
def token(issuer: TestIssuer) -> str:
    """A clinician-style token (``user/*.cruds``, no patient context): proxy-mechanics tests
    use it so that authorization never stands in their way. Patient-context tests mint their
    own."""
    return issuer.mint(
        scope="openid fhirUser user/*.cruds", patient=None, fhirUser="Practitioner/dr-1"
    )


@pytest.fixture
def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
