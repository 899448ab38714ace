"""TLS to the upstream is always verified: an unknown CA is a 502, a configured CA bundle works,
and a client certificate is presented for mutual TLS when configured."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import GatewayFactory


def _write_cert(
    tmp: Path, name: str, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = ca if ca else (None, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if ca is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            False,
        )
    cert = builder.sign(issuer_key, hashes.SHA256())
    cert_path, key_path = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key, cert_path, key_path


class TlsUpstream:
    def __init__(self) -> None:
        self.client_certs: list[object] = []
        self.port = 0


@pytest.fixture
async def tls_upstream(tmp_path: Path) -> AsyncIterator[tuple[TlsUpstream, Path, Path, Path]]:
    ca_cert, ca_key, ca_path, _ = _write_cert(tmp_path, "ca", None)
    _, _, srv_cert, srv_key = _write_cert(tmp_path, "server", (ca_cert, ca_key))
    _, _, cli_cert, cli_key = _write_cert(tmp_path, "client", (ca_cert, ca_key))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(srv_cert, srv_key)
    ctx.load_verify_locations(ca_path)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    state = TlsUpstream()

    async def answer(request: web.Request) -> web.Response:
        ssl_obj = request.transport.get_extra_info("ssl_object") if request.transport else None
        state.client_certs.append(ssl_obj.getpeercert() if ssl_obj else None)
        return web.json_response(
            {"resourceType": "Patient", "id": "p1"}, content_type="application/fhir+json"
        )

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    state.port = runner.addresses[0][1]
    yield state, ca_path, cli_cert, cli_key
    await runner.cleanup()


async def test_unknown_upstream_ca_is_502(
    gateway_factory: GatewayFactory,
    tls_upstream: tuple[TlsUpstream, Path, Path, Path],
    auth: dict[str, str],
) -> None:
    state, _, _, _ = tls_upstream
    gw = await gateway_factory(f"https://127.0.0.1:{state.port}/fhir")
    async with gw.session.get(f"{gw.base}/Patient/p1", headers=auth) as resp:
        assert resp.status == 502
    assert state.client_certs == []  # the handshake failed: no request was served


async def test_configured_ca_and_client_certificate(
    gateway_factory: GatewayFactory,
    tls_upstream: tuple[TlsUpstream, Path, Path, Path],
    auth: dict[str, str],
) -> None:
    state, ca_path, cli_cert, cli_key = tls_upstream
    gw = await gateway_factory(
        f"https://127.0.0.1:{state.port}/fhir",
        upstream={
            "tls": {
                "ca_file": str(ca_path),
                "client_cert_file": str(cli_cert),
                "client_key_file": str(cli_key),
            }
        },
    )
    async with gw.session.get(f"{gw.base}/Patient/p1", headers=auth) as resp:
        assert resp.status == 200
    [peer] = state.client_certs
    assert peer and dict(x[0] for x in peer["subject"])["commonName"] == "client"  # type: ignore[index]
