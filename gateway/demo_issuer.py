"""The demo's own token issuer: a key made for one demo run, trusted only by the demo gateway.

``fhir-gateway demo`` starts it on a loopback port, configures the demo gateway to trust it
(``auth.jwt``), and prints tokens it signed. The key lives in memory only and dies with the
demo, so its tokens are worthless anywhere else. This is the only place in the project that
signs tokens; the gateway itself never does.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

TOKEN_LIFETIME_S = 8 * 3600


class DemoIssuer:
    def __init__(self, audience: str, host: str = "127.0.0.1") -> None:
        self.audience = audience
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "demo-" + secrets.token_hex(6)
        jwk = RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        self._jwks = json.dumps(
            {"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}]}
        ).encode()
        self._server = ThreadingHTTPServer((host, 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> DemoIssuer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def auth_section(self) -> dict[str, Any]:
        """The demo gateway's ``auth:`` config: trust this issuer and nothing else."""
        return {
            "jwt": [{"issuer": self.url, "jwks_uri": f"{self.url}/jwks", "algorithms": ["RS256"]}]
        }

    def mint(self, **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": self.url,
            "aud": self.audience,
            "iat": now,
            "exp": now + TOKEN_LIFETIME_S,
            "jti": secrets.token_hex(8),
            **claims,
        }
        return jwt.encode(
            body, self._key, algorithm="RS256", headers={"kid": self.kid, "typ": "at+jwt"}
        )

    def demo_tokens(self, patient_id: str) -> dict[str, str]:
        """A patient-context token, a clinician token and a backend-service token."""
        return {
            f"patient (Patient/{patient_id}, patient/*.rs)": self.mint(
                sub=f"patient-user-{patient_id}",
                client_id="demo-patient-app",
                scope="launch/patient openid fhirUser patient/*.rs",
                patient=patient_id,
                fhirUser=f"Patient/{patient_id}",
            ),
            "clinician (user/*.cruds, role sensitive-data-reader)": self.mint(
                sub="dr-demo",
                client_id="demo-clinician-app",
                scope="openid fhirUser user/*.cruds",
                fhirUser="Practitioner/demo-clinician",
                roles=["sensitive-data-reader"],
            ),
            "backend service (system/*.rs)": self.mint(
                sub="demo-backend", client_id="demo-backend", scope="system/*.rs"
            ),
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/jwks":
                    body = issuer._jwks
                elif self.path == "/.well-known/openid-configuration":
                    doc = {"issuer": issuer.url, "jwks_uri": f"{issuer.url}/jwks"}
                    body = json.dumps(doc).encode()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # quiet: the demo prints its own banner

        return Handler
