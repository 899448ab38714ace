"""Helpers for the deployment tests: a small Dockerfile reader, gateway processes, polling.

Everything listens on 127.0.0.1 only; every wait is bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from gateway.config import ServerConfig
from gateway.demo import free_port

__all__ = ["free_port"]

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
K8S_DIR = REPO / "deploy" / "k8s"

T = TypeVar("T")


# --------------------------------------------------------------------------- Dockerfile


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest of the logical line, continuations joined

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction (``CMD ["a", "b"]``), else None."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            text = text.partition(" CMD ")[2].strip()
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        return None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.base}: no {keyword}"
        return found[-1]

    def env(self) -> dict[str, str]:
        """The ``ENV key=value ...`` pairs of this stage (values unquoted; no expansion)."""
        out: dict[str, str] = {}
        for ins in self.all("ENV"):
            for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', ins.args):
                out[key] = value.strip('"')
        return out


def logical_lines(text: str) -> list[str]:
    """Comments dropped, ``\\`` continuations joined (as BuildKit reads them)."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1].rstrip() + " "
            continue
        current += stripped
        if current.strip():
            lines.append(current.strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ``ARG`` defaults and the stages, in order."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            stages.append(Stage(base=base, name=name))
        elif not stages:
            if keyword == "ARG" and "=" in rest:
                key, _, value = rest.partition("=")
                args[key.strip()] = value.strip().strip('"')
        else:
            stages[-1].instructions.append(Instruction(keyword, rest))
    return args, stages


def read_dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- config helpers


def admin_listener_off() -> dict[str, Any]:
    """``server`` keys that switch the admin listener off where the config has one (issue 8).

    Several gateways on one machine must not all bind the default admin port."""
    return {"admin_port": None} if "admin_port" in ServerConfig.model_fields else {}


# --------------------------------------------------------------------------- waiting


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    *,
    timeout_s: float,
    interval_s: float = 0.05,
    what: str = "condition",
) -> T:
    """Await ``probe()`` until it returns something other than None; bounded by ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while True:
        try:
            result = await probe()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            result, last_error = None, exc
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout_s} s waiting for {what} ({last_error!r})"
            )
        await asyncio.sleep(interval_s)


async def http_status(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> int:
    timeout = aiohttp.ClientTimeout(total=5)
    async with session.get(url, timeout=timeout, **kwargs) as resp:
        await resp.read()
        return resp.status


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    """A child process in its own process group, its output in ``log``."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """SIGTERM the group, wait (bounded), then SIGKILL it. Safe to call twice."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout_s)


def spawn(
    name: str,
    argv: list[str],
    log: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    return Proc(name=name, process=process, log=log)


async def wait_ready(
    session: aiohttp.ClientSession, proc: Proc, url: str, timeout_s: float
) -> None:
    """Poll ``url`` until 200; fail early, with the log's tail, if the process exits."""

    async def probe() -> bool | None:
        if not proc.alive():
            raise AssertionError(
                f"{proc.name} exited ({proc.process.returncode}) before {url} was ready:\n"
                f"{proc.tail()}"
            )
        return True if await http_status(session, url) == 200 else None

    try:
        await eventually(probe, timeout_s=timeout_s, interval_s=0.1, what=f"{proc.name} {url}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- {proc.name} log ---\n{proc.tail()}") from None
