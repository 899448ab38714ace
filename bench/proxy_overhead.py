#!/usr/bin/env python3
"""Measure the gateway's overhead on a small read against direct upstream access.

One run, one machine, the same load tool (wrk) and the same static upstream; runs interleaved
(direct, gateway-public, gateway-authenticated, direct, ...) and medians reported, so the
ratios hold on a noisy machine:

- ``direct``: wrk -> static upstream (a ~2 KB Patient)
- ``gateway, no token``: wrk -> gateway -> upstream on the public ``metadata`` route (the proxy
  path without authentication: canonicalise, forward, decode, rewrite, respond)
- ``gateway, cached JWT``: the same read on ``Patient/{id}`` with an RS256 bearer token (after
  the first request the verified-token cache answers)

Usage: .venv/bin/python bench/proxy_overhead.py [--duration 10] [--rounds 3] [--connections 32]
Requires wrk (Debian package ``wrk``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.demo_issuer import DemoIssuer  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(out: str) -> dict[str, float]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        lat[pct] = float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non2xx:
        raise SystemExit(f"wrk saw {non2xx.group(1)} non-2xx answers:\n{out}")
    return {"rps": rps, "p50": lat["50"], "p99": lat["99"]}


def wrk(url: str, duration: int, connections: int, headers: list[str]) -> dict[str, float]:
    cmd = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{duration}s", "--latency", url]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return parse_wrk(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk)")

    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    up_port, gw_port = free_port(), free_port()
    base = f"http://127.0.0.1:{gw_port}/fhir"
    issuer = DemoIssuer(audience=base).start()
    token = issuer.mint(sub="bench", client_id="bench", scope="system/*.rs")
    cfg = {
        "server": {"host": "127.0.0.1", "port": gw_port, "public_base_url": base},
        "upstream": {"url": f"http://127.0.0.1:{up_port}/fhir"},
        "auth": issuer.auth_section(),
        "logging": {"level": "WARNING", "access_log": False},
    }
    (tmp / "gateway.yaml").write_text(yaml.safe_dump(cfg))
    py = sys.executable
    procs = [
        subprocess.Popen([py, str(ROOT / "bench" / "static_upstream.py"), str(up_port)]),
        subprocess.Popen(
            [py, "-m", "gateway", "serve", "--config", str(tmp / "gateway.yaml")],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        ),
    ]
    try:
        wait_http(f"http://127.0.0.1:{up_port}/fhir/Patient/bench-1")
        wait_http(f"http://127.0.0.1:{gw_port}/readyz")
        targets = {
            "direct upstream": (f"http://127.0.0.1:{up_port}/fhir/Patient/bench-1", []),
            "gateway, no token (metadata)": (f"{base}/metadata", []),
            "gateway, cached JWT (Patient/{id})": (
                f"{base}/Patient/bench-1",
                [f"Authorization: Bearer {token}"],
            ),
        }
        results: dict[str, list[dict[str, float]]] = {k: [] for k in targets}
        for url, headers in targets.values():  # warm-up
            wrk(url, 2, args.connections, headers)
        for _ in range(args.rounds):
            for name, (url, headers) in targets.items():
                results[name].append(wrk(url, args.duration, args.connections, headers))
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)
        issuer.stop()

    direct = statistics.median(r["rps"] for r in results["direct upstream"])
    print(
        f"\nwrk -t1 -c{args.connections} -d{args.duration}s, {args.rounds} interleaved rounds, "
        f"medians; {os.cpu_count()} cores; Python {sys.version.split()[0]}\n"
    )
    print("| target | requests/s | p50 ms | p99 ms | vs direct |")
    print("|---|---:|---:|---:|---:|")
    for name, runs in results.items():
        rps = statistics.median(r["rps"] for r in runs)
        p50 = statistics.median(r["p50"] for r in runs)
        p99 = statistics.median(r["p99"] for r in runs)
        print(f"| {name} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {rps / direct:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
