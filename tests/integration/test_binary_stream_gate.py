"""Raw Binary content cannot be verified, so it streams only when nothing would need to judge
it: a caller whose Binary access is only granular, or restricted by a privacy policy, gets no
raw content (fail closed)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from tests.conftest import GatewayFactory
from tests.support.fake_upstream import FakeUpstream, Recorded
from tests.support.issuer import TestIssuer


async def raw_pdf(_: web.Request, __: Recorded) -> web.StreamResponse:
    return web.Response(body=b"%PDF-1.7 secret", content_type="application/pdf")


async def test_plainly_granted_binary_streams(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    gw = await gateway_factory()
    fake_upstream.reply(raw_pdf)
    token = issuer.mint(scope="user/Binary.rs", patient=None)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/pdf"}
    async with gw.session.get(f"{gw.base}/Binary/b1", headers=headers) as resp:
        assert resp.status == 200
        assert await resp.read() == b"%PDF-1.7 secret"


async def test_granular_binary_scope_gets_no_raw_content(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    """Binary has no token search parameter a granular scope could constrain exactly, so such a
    scope grants nothing at all (and the content is never fetched)."""
    gw = await gateway_factory()
    fake_upstream.reply(raw_pdf)
    token = issuer.mint(scope="user/Binary.rs?contenttype=urn:ietf:bcp:13|text/plain", patient=None)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/pdf"}
    async with gw.session.get(f"{gw.base}/Binary/b1", headers=headers) as resp:
        body = await resp.read()
    assert b"secret" not in body
    assert resp.status == 403
    assert fake_upstream.requests == []


async def test_policy_restricted_binary_gets_no_raw_content(
    gateway_factory: GatewayFactory,
    fake_upstream: FakeUpstream,
    issuer: TestIssuer,
    tmp_path: Path,
) -> None:
    (tmp_path / "binary.yaml").write_text(
        "policies:\n"
        "  - id: no-raw-binary\n"
        "    description: every Binary is withheld from this test's callers\n"
        "    resource_types: [Binary]\n"
        "    effect: withhold\n"
    )
    gw = await gateway_factory(policies={"paths": [str(tmp_path)]})
    fake_upstream.reply(raw_pdf)
    token = issuer.mint(scope="user/Binary.rs", patient=None)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/pdf"}
    async with gw.session.get(f"{gw.base}/Binary/b1", headers=headers) as resp:
        body = await resp.read()
    assert b"secret" not in body
    assert resp.status in (403, 404, 502)
