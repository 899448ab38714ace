"""The basic pass-through: a read reaches the upstream exactly as checked and comes back."""

from __future__ import annotations

from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import RunningGateway


async def test_read_is_forwarded_and_answered(
    gateway: RunningGateway, fake_upstream: FakeUpstream, auth: dict[str, str]
) -> None:
    async with gateway.session.get(f"{gateway.base}/Patient/pat-1", headers=auth) as resp:
        assert resp.status == 200
        assert await resp.json(content_type=None) == {"resourceType": "Patient", "id": "pat-1"}
    [rec] = fake_upstream.requests
    assert rec.method == "GET"
    assert rec.raw_target == "/fhir/Patient/pat-1"
    assert "Authorization" not in rec.headers


async def test_no_token_is_401_and_nothing_forwarded(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    async with gateway.session.get(f"{gateway.base}/Patient/pat-1") as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer realm=")
    assert fake_upstream.requests == []
