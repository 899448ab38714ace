"""TLS on the listener (HSTS, TLS >= 1.2 only) and graceful shutdown of the real process."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import signal
import socket
import ssl
import sys
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.app import build_app
from gateway.server import GatewayRunner, server_ssl_context
from tests.support.fake_upstream import FakeUpstream, Recorded
from tests.support.gateway import PUBLIC_BASE, make_config
from tests.support.issuer import TestIssuer

REPO = Path(__file__).resolve().parents[2]


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture
async def tls_gateway(
    tmp_path: Path, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> AsyncIterator[tuple[int, Path]]:
    cert_file, key_file = self_signed(tmp_path)
    cfg = make_config(
        fake_upstream.base_url,
        server={"tls": {"cert_file": str(cert_file), "key_file": str(key_file)}},
        auth={"jwt": [{"issuer": issuer.url, "jwks_uri": issuer.jwks_uri}]},
    )
    runner = GatewayRunner(
        build_app(cfg), access_log=None, handle_signals=False, shutdown_timeout=2
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl_context(cfg))
    await site.start()
    try:
        yield runner.addresses[0][1], cert_file
    finally:
        await runner.cleanup()


async def test_https_works_with_hsts(
    tls_gateway: tuple[int, Path], fake_upstream: FakeUpstream, token: str
) -> None:
    port, cert_file = tls_gateway
    ctx = ssl.create_default_context(cafile=str(cert_file))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"https://127.0.0.1:{port}/healthz", ssl=ctx) as resp:
            assert resp.status == 200
            assert resp.headers["Strict-Transport-Security"].startswith("max-age=")
        async with session.get(
            f"https://127.0.0.1:{port}/r4/Patient/p1",
            ssl=ctx,
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            assert resp.status == 200
            assert "max-age=" in resp.headers["Strict-Transport-Security"]
        async with session.get(f"https://127.0.0.1:{port}/r4/Patient/p1", ssl=ctx) as resp:
            assert resp.status == 401
            assert "Strict-Transport-Security" in resp.headers  # errors too
    [rec] = fake_upstream.requests
    assert rec.headers["X-Forwarded-Proto"] == "https"
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    assert writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
    writer.close()
    await writer.wait_closed()


async def test_plain_http_to_the_tls_port_fails(tls_gateway: tuple[int, Path]) -> None:
    port, _ = tls_gateway
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                await resp.read()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
async def test_tls_below_1_2_cannot_connect(
    tls_gateway: tuple[int, Path], version: ssl.TLSVersion
) -> None:
    port, cert_file = tls_gateway
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(cert_file))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # that is the point of the test
        try:
            ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            ctx.maximum_version = version
            ctx.set_ciphers("ALL:@SECLEVEL=0")
        except (ValueError, ssl.SSLError):
            pass  # the local OpenSSL may refuse even to offer it: the handshake must fail anyway
    with pytest.raises((ssl.SSLError, OSError)):
        _, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1"), 5
        )
        writer.close()  # only reached if a < TLS 1.2 session was established (test fails)


# ----------------------------------------------------------------- graceful shutdown


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def can_connect(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def test_sigterm_drains_in_flight_request_then_exits(
    tmp_path: Path, fake_upstream: FakeUpstream, issuer: TestIssuer
) -> None:
    port = free_port()
    config = {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "public_base_url": PUBLIC_BASE,
            "admin_port": None,
            "shutdown_timeout_s": 5,
        },
        "upstream": {"url": fake_upstream.base_url, "timeout_s": 10},
        "auth": {"jwt": [{"issuer": issuer.url, "jwks_uri": issuer.jwks_uri}]},
        "logging": {"access_log": True, "level": "INFO"},
    }
    cfg_file = tmp_path / "gateway.yaml"
    cfg_file.write_text(yaml.safe_dump(config))

    async def answer(_: web.Request, rec: Recorded) -> web.StreamResponse:
        if "slow" in rec.path:
            await asyncio.sleep(1.5)
        return web.json_response({"resourceType": "Bundle", "type": "searchset"})

    fake_upstream.reply(answer)
    env = {k: v for k, v in os.environ.items() if k != "AIOHTTP_NO_EXTENSIONS"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--config",
        str(cfg_file),
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stderr_task = asyncio.ensure_future(proc.stderr.read())  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"
    token = issuer.mint(scope="user/*.cruds", patient=None)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):  # wait until ready (keys fetched)
                try:
                    async with session.get(f"{base}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("gateway process never became ready")
            async with session.get(
                f"{base}/r4/Observation?code=PHIMARKER&value-string=PHIMARKER", headers=headers
            ) as resp:
                assert resp.status == 200

            async def slow_request() -> tuple[int, dict]:
                async with session.get(
                    f"{base}/r4/Patient/slow?name=PHIMARKER", headers=headers
                ) as resp:
                    return resp.status, await resp.json(content_type=None)

            in_flight = asyncio.ensure_future(slow_request())
            for _ in range(100):
                if any("slow" in r.path for r in fake_upstream.requests):
                    break
                await asyncio.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.4)
            assert not in_flight.done()
            assert not await can_connect(port), "new connections must be refused while draining"
            status, doc = await asyncio.wait_for(in_flight, 5)
            assert status == 200
            assert doc["resourceType"] == "Bundle"
        rc = await asyncio.wait_for(proc.wait(), 6)
        assert rc == 0
        assert not await can_connect(port)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        stderr = await stderr_task
        await proc.stdout.read()  # type: ignore[union-attr]

    text = stderr.decode()
    assert "PHIMARKER" not in text
    events = [json.loads(line) for line in text.splitlines() if line.strip()]
    access = [e for e in events if e.get("event") == "access"]
    assert {e["route"] for e in access} >= {"Patient/{id}", "Observation?search"}
    assert all(e["status"] == 200 for e in access)
    assert not any("=" in str(v) for e in access for v in e.values())
    assert [e["event"] for e in events if e.get("logger") == "gateway.server"][-1] == "stopped"
