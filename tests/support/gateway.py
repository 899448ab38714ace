"""Run the real gateway (our runner, our connection handler) on a loopback port for tests."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.app import build_app
from gateway.config import Config, parse_config
from gateway.server import GatewayRunner

PUBLIC_BASE = "https://fhir.example.test/r4"


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def make_config(upstream_url: str, issuer_url: str | None = None, **sections: Any) -> Config:
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "public_base_url": PUBLIC_BASE},
        "upstream": {"url": upstream_url, "timeout_s": 5, "connect_timeout_s": 2},
        "cors": {"allowed_origins": ["https://app.example.test"]},
        "logging": {"access_log": True},
    }
    if issuer_url is not None:
        data["auth"] = {"jwt": [{"issuer": issuer_url, "algorithms": ["RS256", "ES256"]}]}
    data = deep_merge(data, sections)
    return parse_config(data, base_dir=Path.cwd())


@dataclass
class RunningGateway:
    runner: GatewayRunner
    app: web.Application
    port: int
    session: aiohttp.ClientSession

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        """The FHIR base as reached in tests (the path of PUBLIC_BASE on our port)."""
        return f"{self.origin}/r4"

    async def close(self) -> None:
        await self.session.close()
        await self.runner.cleanup()


async def run_gateway(cfg: Config) -> RunningGateway:
    app = build_app(cfg)
    runner = GatewayRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    session = aiohttp.ClientSession(auto_decompress=True)
    return RunningGateway(runner=runner, app=app, port=port, session=session)
