"""``server.workers: 2``: one port served by two forked workers; SIGTERM stops them all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        out += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return out


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=2) as resp:
        resp.read()
        return int(resp.status)


def test_two_workers_share_the_port_and_stop_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    cfg = {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "public_base_url": f"http://127.0.0.1:{port}/fhir",
            "admin_port": None,
            "workers": 2,
            "shutdown_timeout_s": 5,
        },
        "upstream": {"url": "http://127.0.0.1:9/fhir"},
        "logging": {"level": "WARNING", "access_log": False},
        "audit": {"file": str(tmp_path / "audit.jsonl")},
    }
    conf = tmp_path / "gateway.yaml"
    conf.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(conf)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if _get(f"http://127.0.0.1:{port}/readyz") == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, "the gateway exited"
            assert time.monotonic() < deadline, "the gateway did not come up"
            time.sleep(0.1)
        workers = _children(proc.pid)
        assert len(workers) == 2
        # both workers listen on the port (SO_REUSEPORT), the parent binds nothing
        deadline = time.monotonic() + 15
        while True:
            listening = _listeners(port)
            if len(listening) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert listening == set(workers)
        for _ in range(50):  # new connection each time: the kernel spreads them
            assert _get(f"http://127.0.0.1:{port}/healthz") == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "Z" in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _listeners(port: int) -> set[int]:
    """PIDs holding a listening socket on the port (from /proc/net/tcp and fd links)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    pids: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                link = os.readlink(f"/proc/{entry}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    pids.add(int(entry))
        except OSError:
            continue
    return pids
