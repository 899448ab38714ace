"""The processes of ``fhir-gateway demo``: ports, the sekmet-fhir upstream and the gateway.

- :func:`start_upstream` / :func:`wait_until_up` run ``sekmet serve`` on a loopback port with a
  fresh database (:func:`write_upstream_settings`); :func:`stop_process` stops it, and
  everything else started here, by process group.
- :func:`write_gateway_config` / :func:`start_gateway` run ``python -m gateway serve`` in front,
  with the repository's shipped policies.

Only the standard library (plus PyYAML) is used: this module must work before the rest of the
gateway does (the gateway's config parser is imported only to validate the demo config).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from gateway.demo_data import DemoError, console_command

__all__ = [
    "free_port",
    "port_is_free",
    "start_gateway",
    "start_upstream",
    "stop_process",
    "upstream_base_url",
    "wait_until_up",
    "write_gateway_config",
    "write_upstream_settings",
]

HOST = "127.0.0.1"


def wait_until_up(
    url: str,
    timeout_s: float = 60.0,
    *,
    process: subprocess.Popen[bytes] | None = None,
    log_file: Path | None = None,
) -> None:
    """Poll ``url`` until it answers 200. Fail early (with the log's tail) if ``process`` exits."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        if process is not None and process.poll() is not None:
            raise DemoError(
                f"{describe_process(process)} exited with status {process.returncode} before {url} "
                f"answered{log_tail(log_file)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2.0) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            with exc:
                last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(getattr(exc, "reason", exc))
        if time.monotonic() >= deadline:
            raise DemoError(
                f"{url} did not answer 200 within {timeout_s:g} s (last: {last})"
                + log_tail(log_file)
            )
        time.sleep(0.1)


def log_tail(log_file: Path | None, lines: int = 15) -> str:
    if log_file is None:
        return ""
    try:
        tail = log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"; last lines of {log_file}:\n    " + "\n    ".join(tail)


# --------------------------------------------------------------------------- processes and ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = HOST) -> bool:
    """Whether a server could listen on ``host:port`` (SO_REUSEADDR, as servers bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def require_free(port: int, what: str, option: str) -> None:
    if not port_is_free(port):
        raise DemoError(
            f"port {port} on {HOST} is already in use, so the {what} cannot listen there; "
            f"stop whatever uses it or choose another port with {option}"
        )


def upstream_base_url(port: int) -> str:
    return f"http://{HOST}:{port}/fhir"


def write_upstream_settings(directory: Path, port: int, *, data_dir: Path | None = None) -> Path:
    """Write ``sekmet-settings.yaml`` for a loopback sekmet on ``port``; return its path."""
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    settings = {
        "base_url": upstream_base_url(port),
        "host": HOST,
        "port": port,
        "data_dir": str((data_dir or directory / "upstream-data").resolve()),
        # sekmet resolves this relative to its working directory otherwise
        "own_private_key_path": str(directory / "upstream-keys" / "sekmet_private.pem"),
        "simulator": {"enabled": False},
        "validation": {"inbound": "warn"},
        "log_inbound": False,  # its traffic log would copy every body into the database
    }
    path = directory / "sekmet-settings.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    return path


def _spawn(
    command: list[str], *, log_file: Path, cwd: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        return subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,  # its own process group: we stop it and all its children
        )


def start_upstream(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    """Start ``sekmet serve`` on 127.0.0.1:``port`` with an empty database under ``workdir``.

    It runs in its own process group and logs to ``workdir/sekmet.log``. Stop it with
    :func:`stop_process`; wait for it with ``wait_until_up(upstream_base_url(port) + "/metadata")``.
    """
    workdir = workdir.resolve()
    require_free(port, "upstream FHIR server", "--upstream-port")
    data_dir = workdir / "upstream-data"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    settings = write_upstream_settings(workdir, port, data_dir=data_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEKMET_")}
    command = [*console_command("sekmet", "sekmet.cli", "app"), "serve", "-c", str(settings)]
    log_file = workdir / "sekmet.log"
    log_file.unlink(missing_ok=True)
    return _spawn(command, log_file=log_file, cwd=workdir, env=env)


def stop_process(process: subprocess.Popen[bytes], *, timeout_s: float = 10.0) -> None:
    """SIGTERM the process group, wait, SIGKILL it if it lingers. Safe to call twice."""
    if process.poll() is not None:
        return  # reaped earlier: its pid (= group id) may belong to someone else by now
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    # Children that outlived the leader go too (the group id stays reserved while they live).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def describe_process(process: subprocess.Popen[bytes]) -> str:
    args = process.args
    if isinstance(args, list | tuple) and args:
        return f"process {process.pid} ({Path(str(args[0])).name})"
    return f"process {process.pid}"


# --------------------------------------------------------------------------- the gateway


def _shipped_policies() -> list[Path]:
    """The repository's policies/ directory (sensitive Conditions, unreleased labs)."""
    shipped = Path(__file__).resolve().parent.parent / "policies"
    return [shipped] if shipped.is_dir() else []


def write_gateway_config(
    workdir: Path, *, port: int, upstream_url: str, auth: dict[str, Any]
) -> Path:
    """Write and validate ``workdir/gateway.yaml`` for a loopback gateway on ``port``."""
    from gateway.config import parse_config
    from gateway.errors import ConfigError

    workdir = workdir.resolve()
    data: dict[str, Any] = {
        "server": {
            "host": HOST,
            "port": port,
            "public_base_url": f"http://{HOST}:{port}/fhir",
            "shutdown_timeout_s": 2,
        },
        "upstream": {"url": upstream_url},
        "auth": auth,
        "policies": {"paths": [str(p) for p in _shipped_policies()]},
        "logging": {"level": "INFO", "access_log": True},
    }
    try:
        parse_config(data, base_dir=workdir, env={})
    except ConfigError as exc:
        raise DemoError(
            "the demo gateway config is invalid:\n  - " + "\n  - ".join(exc.problems)
        ) from None
    path = workdir / "gateway.yaml"
    header = "# Written by `fhir-gateway demo`; rewritten on every run.\n"
    path.write_text(header + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def start_gateway(config: Path, *, log_file: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m gateway serve --config CONFIG`` in its own process group."""
    command = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
    log_file.unlink(missing_ok=True)
    return _spawn(command, log_file=log_file, cwd=Path.cwd(), env=dict(os.environ))
