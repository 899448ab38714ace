"""The real parts of a SMART launch, wired together on loopback for the end-to-end tests.

- upstream: ``sekmet-fhir`` with carebundle patients and the sensitive/unreleased cases
  (the session's ``real_upstream``);
- authorization server: ``oidc-provider`` configured for SMART (``tests/node/e2e/smart_as.mjs``)
  with a public browser app, a confidential Python app and a backend client;
- the gateway itself as its own process (``python -m gateway serve``), trusting that server,
  advertising it through ``metadata`` and ``.well-known/smart-configuration`` (merged with the
  server's own discovery document), allowing the app page's origin only;
- the app page's two origins (allowed and not allowed): ports served by the browser driver
  (``tests/node/e2e/browser.mjs``), which runs headless Chromium through ``playwright-core``.

Nothing here is skipped: a missing ``node``, ``node_modules`` or ``/usr/bin/chromium`` fails
the tests (``make test`` installs all three).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from gateway.config import CAPABILITIES as ALL_CAPABILITIES
from gateway.config import ServerConfig
from gateway.demo import free_port, start_gateway, stop_process, wait_until_up
from tests.support.sekmet import RealUpstream

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "tests" / "node"
AS_SCRIPT = NODE_DIR / "e2e" / "smart_as.mjs"
BROWSER_SCRIPT = NODE_DIR / "e2e" / "browser.mjs"
APP_DIR = Path(__file__).resolve().parent / "app"
BUNDLE = NODE_DIR / "node_modules" / "fhirclient" / "build" / "fhir-client.js"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"

BROWSER_APP = "smart-browser-app"
PYTHON_APP = ("smart-python-app", "python-app-secret-e2e-only")
BACKEND = ("smart-backend", "backend-secret-e2e-only")
CLINICIAN = "Practitioner/dr-ehr-1"
REPO_POLICIES = Path(__file__).resolve().parents[2] / "policies"
#: every capability the gateway can advertise: all are configured
CAPABILITIES = list(ALL_CAPABILITIES)
#: what the real authorization server (smart_as.mjs) does not back: no ``private_key_jwt`` with
#: RS384/ES384, no ``launch/encounter`` or ``online_access`` scope. Its own document contradicts
#: them, so the gateway drops them from the answer (with a warning)
UNBACKED = ("client-confidential-asymmetric", "context-standalone-encounter", "permission-online")
#: what the well-known document then advertises
ADVERTISED = [c for c in CAPABILITIES if c not in UNBACKED]


def require_tools() -> str:
    """The node binary; fail (never skip) when a part the e2e tests drive is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: `make test` (or .ci/run) installs it")
    for part in ("oidc-provider", "fhirclient", "playwright-core"):
        if not (NODE_DIR / "node_modules" / part).is_dir():
            pytest.fail(f"tests/node/node_modules/{part} is missing: run `make node`")
    if not BUNDLE.is_file():
        pytest.fail(f"{BUNDLE} is missing: the fhirclient package changed its layout")
    if not CHROMIUM.is_file():
        pytest.fail("/usr/bin/chromium is missing: run `make chromium` (apt-get install chromium)")
    return node


def signing_jwks() -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = RSAAlgorithm.to_jwk(key, as_dict=True)
    jwk.update(kid=f"e2e-{os.urandom(6).hex()}", use="sig", alg="RS256")
    return {"keys": [jwk]}


def get_json(url: str, *, timeout_s: float = 30.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # loopback URLs only
        return json.load(resp)


@dataclass
class Process:
    """A child process in its own process group, logging to a file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        stop_process(self.process)


@dataclass
class SmartStack:
    upstream: RealUpstream
    workdir: Path
    node: str
    gateway_port: int
    as_port: int
    app_port: int
    other_port: int
    launches: dict[str, dict[str, str]]
    processes: list[Process] = field(default_factory=list)

    @property
    def base(self) -> str:
        """The gateway's FHIR base: what apps are pointed at, and the tokens' audience."""
        return f"http://127.0.0.1:{self.gateway_port}/r4"

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.as_port}"

    @property
    def app_origin(self) -> str:
        return f"http://127.0.0.1:{self.app_port}"

    @property
    def other_origin(self) -> str:
        """Serves the same app page, but is not in the gateway's ``cors.allowed_origins``."""
        return f"http://127.0.0.1:{self.other_port}"

    @property
    def python_redirect(self) -> str:
        return "http://127.0.0.1:9/python-app/callback"  # never contacted: the test reads it

    def patient_id(self, index: int) -> str:
        return self.upstream.patient(index)["patient_id"]

    def upstream_log_offset(self) -> int:
        return self.upstream.log_file.stat().st_size

    def upstream_requests(self, since: int) -> list[tuple[str, str]]:
        """(method, target) of every request the upstream logged after byte ``since``."""
        with self.upstream.log_file.open("rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", "replace")
        out = []
        for line in text.splitlines():
            # uvicorn's access log: INFO:     127.0.0.1:PORT - "GET /fhir/x HTTP/1.1" 200 OK
            if '"' in line and " HTTP/1.1" in line:
                method, _, rest = line.split('"', 2)[1].partition(" ")
                out.append((method, rest.rsplit(" ", 1)[0]))
        return out

    def gateway_config(self) -> dict[str, Any]:
        server: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.gateway_port,
            "public_base_url": self.base,
            "shutdown_timeout_s": 2,
        }
        if "admin_port" in ServerConfig.model_fields:
            server["admin_port"] = None  # no second listener on a fixed port for the session
        return {
            "server": server,
            "upstream": {"url": self.upstream.base_url},
            # the JWK Set is found through the server's own discovery document
            "auth": {"jwt": [{"issuer": self.issuer, "algorithms": ["RS256"]}]},
            "smart": {
                "capabilities": CAPABILITIES,
                "management_endpoint": f"{self.issuer}/manage",
                "openid_configuration_url": f"{self.issuer}/.well-known/openid-configuration",
            },
            "cors": {"allowed_origins": [self.app_origin]},
            "policies": {"paths": [str(REPO_POLICIES)]},  # the shipped privacy policies
            "logging": {"level": "INFO", "access_log": True},
        }

    def as_config(self) -> dict[str, Any]:
        pages = [f"http://127.0.0.1:{p}/index.html" for p in (self.app_port, self.other_port)]
        return {
            "port": self.as_port,
            "audience": self.base,
            "jwks": signing_jwks(),
            "clients": [
                {"client_id": BROWSER_APP, "kind": "public", "redirect_uris": pages},
                {
                    "client_id": PYTHON_APP[0],
                    "client_secret": PYTHON_APP[1],
                    "kind": "confidential",
                    "redirect_uris": [self.python_redirect],
                },
                {"client_id": BACKEND[0], "client_secret": BACKEND[1], "kind": "backend"},
            ],
            "launches": self.launches,
        }

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "smart-as.log"
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/tmp"),
            "SMART_AS_CONFIG": json.dumps(self.as_config()),
        }
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [self.node, str(AS_SCRIPT)],
                cwd=NODE_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        auth_server = Process("authorization server", proc, log)
        self.processes.append(auth_server)
        self._wait(f"{self.issuer}/.well-known/openid-configuration", auth_server)

        config = self.workdir / "gateway.yaml"
        config.write_text(yaml.safe_dump(self.gateway_config(), sort_keys=False))
        gw_log = self.workdir / "gateway.log"
        gateway = Process("gateway", start_gateway(config, log_file=gw_log), gw_log)
        self.processes.append(gateway)
        # ready = config loaded, upstream pool up and the issuer's keys fetched; then the
        # discovery documents once (their first answer fetches the upstream's and the AS's)
        self._wait(f"http://127.0.0.1:{self.gateway_port}/readyz", gateway)
        self._wait(f"{self.base}/.well-known/smart-configuration", gateway)
        self._wait(f"{self.base}/metadata", gateway)

    def _wait(self, url: str, proc: Process) -> None:
        try:
            wait_until_up(url, timeout_s=60, process=proc.process, log_file=proc.log)
        except Exception as exc:
            self.stop()
            pytest.fail(f"the {proc.name} did not start: {exc}")

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()

    # ------------------------------------------------------------------ the browser

    def run_browser(self, scenarios: list[dict[str, str]]) -> dict[str, Any]:
        """Run scenarios (name, url, screenshot) in headless Chromium; their outcomes."""
        plan = {
            "appDir": str(APP_DIR),
            "bundle": str(BUNDLE),
            "executablePath": str(CHROMIUM),
            "ports": [self.app_port, self.other_port],
            "timeoutMs": 30000,
            "scenarios": scenarios,
        }
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/tmp"),
            "TMPDIR": tempfile.gettempdir(),
            "E2E_BROWSER_PLAN": json.dumps(plan),
        }
        started = time.monotonic()
        done = subprocess.run(
            [self.node, str(BROWSER_SCRIPT)],
            cwd=NODE_DIR,
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(
                f"the browser driver failed (exit {done.returncode}):\n"
                f"{done.stderr.decode(errors='replace')[-4000:]}"
            )
        out: dict[str, Any] = json.loads(done.stdout)
        out["seconds"] = round(time.monotonic() - started, 1)
        return out


def start_stack(upstream: RealUpstream, workdir: Path) -> SmartStack:
    node = require_tools()
    ports = set()
    while len(ports) < 4:
        ports.add(free_port())
    gateway_port, as_port, app_port, other_port = sorted(ports)
    ehr_patient = upstream.patient(2)["patient_id"]
    stack = SmartStack(
        upstream=upstream,
        workdir=workdir,
        node=node,
        gateway_port=gateway_port,
        as_port=as_port,
        app_port=app_port,
        other_port=other_port,
        # an EHR launch: the EHR's clinician opens patient 2's chart and launches the app
        launches={"ehr-launch-1": {"patient": ehr_patient, "fhirUser": CLINICIAN}},
    )
    stack.start()
    return stack
