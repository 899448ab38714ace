"""The image's build and start steps, reproduced without a Docker engine (issue 10, part 1).

The Dockerfile is read, and its steps run with every image path mapped into one temporary
directory (``/src``, ``/wheels``, ``/opt/fhir-gateway``, ``/etc/fhir-gateway``,
``/var/lib/fhir-gateway``):

* build stage: the COPY sources (filtered by ``.dockerignore``) into ``src/``, then its RUN
  step verbatim, with a fresh virtual environment standing in for the base image's Python;
* runtime stage: its ``install -d`` steps (the ``useradd`` is replaced by running as the
  numeric ``USER``, as Kubernetes' ``runAsUser`` does), the documented mounts (config file and
  policies read-only, the spill directory writable), secrets in environment variables;
* start: ENTRYPOINT + CMD, as that non-root user and, when the test runs as root (CI), in a
  private mount namespace where ``/`` and the whole image tree are read-only except the
  declared spill directory, with no capabilities and ``no_new_privs``. The gateway must then
  serve requests, pass the image's HEALTHCHECK and stop cleanly on SIGTERM.

The wheel and environment are built once per session (the build stage needs PyPI, as a
``docker build`` would; pip's download cache is kept, unlike in the image, to save time).
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.deploy.support import (
    REPO,
    Stage,
    admin_listener_off,
    eventually,
    free_port,
    read_dockerfile,
    spawn,
    wait_ready,
)
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import PUBLIC_BASE
from tests.support.issuer import INTROSPECTION_CLIENT_ID, INTROSPECTION_SECRET, TestIssuer

IMAGE_PATHS = ("/opt/fhir-gateway", "/etc/fhir-gateway", "/var/lib/fhir-gateway", "/wheels", "/src")
CURSOR_KEY = "mSh3cS6cJm8Vq7m2oJtX0dC0Z0g7bq2cXg1Pjq6mQvA="
STEP_TIMEOUT_S = 900


@dataclass
class Image:
    """The image's file system, mapped into ``top``."""

    top: Path
    build: Stage
    runtime: Stage
    uid: int
    gid: int

    def path(self, image_path: str) -> Path:
        return Path(self.map(image_path))

    def map(self, text: str) -> str:
        """Every image path in ``text`` rewritten into ``top`` (whole path prefixes only)."""
        for prefix in IMAGE_PATHS:
            text = re.sub(
                rf"(?<![\w./-]){re.escape(prefix)}(?=[/\s\"',:]|$)", str(self.top) + prefix, text
            )
        return text

    @property
    def as_root(self) -> bool:
        return os.geteuid() == 0


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [
        line.strip().removeprefix("**/")
        for line in lines
        if line.strip() and not line.startswith(("#", "!")) and line.strip() != "*"
    ]


def copy_build_context(stage: Stage, dest: Path) -> None:
    """The build stage's COPY instructions, from the repository, minus .dockerignore."""
    patterns = dockerignore_patterns()

    def ignore(_dir: str, names: list[str]) -> set[str]:
        return {n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)}

    for copy in stage.all("COPY"):
        parts = [p for p in copy.args.split() if not p.startswith("--")]
        *sources, target = parts
        for source in sources:
            src = REPO / source
            to = dest / target if len(sources) == 1 and src.is_dir() else dest / target / source
            if src.is_dir():
                shutil.copytree(src, to, ignore=ignore)
            else:
                to.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, to)


def run_step(image: Image, script: str, *, env: dict[str, str], cwd: Path) -> None:
    proc = subprocess.run(
        ["/bin/bash", "-euo", "pipefail", "-c", image.map(script)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, (
        f"step failed: {script}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )


@pytest.fixture(scope="session")
def image() -> Iterator[Image]:
    _, stages = read_dockerfile()
    build, runtime = stages[0], stages[-1]
    uid, _, gid = runtime.last("USER").args.partition(":")
    top = Path(tempfile.mkdtemp(prefix="fhir-gw-image-"))
    top.chmod(0o755)  # the non-root user must reach the environment and the mounts
    img = Image(top=top, build=build, runtime=runtime, uid=int(uid), gid=int(gid))
    try:
        # the base image's interpreter: same minor version as the image tag, fresh environment
        tag = re.search(r"python:(\d+\.\d+)", build.base)
        assert tag and tag.group(1) == f"{sys.version_info.major}.{sys.version_info.minor}"
        base = top / "base-python"
        base_exe = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base_exe, "-m", "venv", str(base)], check=True, timeout=120)
        # ---- build stage
        workdir = img.path(build.last("WORKDIR").args)
        workdir.mkdir(parents=True)
        copy_build_context(build, workdir)
        env = {
            **{k: v for k, v in build.env().items() if k != "PIP_NO_CACHE_DIR"},
            "PATH": f"{base / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "HOME": os.environ.get("HOME", "/root"),
        }
        for step in build.all("RUN"):
            run_step(img, step.args, env=env, cwd=workdir)
        # ---- runtime stage: the same path for the environment, the directories it declares
        [copy] = runtime.all("COPY")
        _, src, dst = copy.args.split()
        assert src == dst, "the environment must keep its path (scripts point at it)"
        for step in runtime.all("RUN"):
            for part in step.args.split("&&"):
                part = part.strip()
                if part.startswith("install -d"):
                    if not img.as_root:
                        part = re.sub(r"-[og] \d+ ", "", part)
                    run_step(img, part, env={"PATH": "/usr/bin:/bin"}, cwd=top)
        yield img
    finally:
        shutil.rmtree(top, ignore_errors=True)


def runtime_env(image: Image, **extra: str) -> dict[str, str]:
    """The container's environment: the stage's ENV (PATH mapped), nothing from this shell."""
    env = {
        k: image.map(v).replace("$PATH", "/usr/local/bin:/usr/bin:/bin")
        for k, v in image.runtime.env().items()
    }
    return {**env, "HOME": "/nonexistent", "LANG": "C.UTF-8", **extra}


def as_user(image: Image, argv: list[str], *, read_only: bool) -> list[str]:
    """``argv`` as the image's USER; with ``read_only``, on a read-only root file system."""
    if not image.as_root:
        return argv  # already not root (a developer's machine)
    drop = [
        "setpriv",
        f"--reuid={image.uid}",
        f"--regid={image.gid}",
        "--clear-groups",
        "--no-new-privs",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    ]
    if not read_only:
        return [*drop, *argv]
    spill = str(image.path("/var/lib/fhir-gateway"))
    script = (
        "top=$1 spill=$2; shift 2; "
        'mount --bind "$top" "$top" && mount -o remount,bind,ro "$top" && '
        "mount -o remount,bind,ro / && "
        'mount --bind "$spill" "$spill" && mount -o remount,bind,rw "$spill" && '
        'exec "$@"'
    )
    return [
        "unshare", "--mount", "--propagation", "private", "--",
        "/bin/sh", "-c", script, "sh", str(image.top), spill, *drop, *argv,
    ]  # fmt: skip


def write_mounts(image: Image, port: int, upstream: str, issuer: TestIssuer) -> Path:
    """/etc/fhir-gateway/config.yaml and policies/, root-owned and read-only to the user."""
    etc = image.path("/etc/fhir-gateway")
    config = {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "public_base_url": PUBLIC_BASE,
            "shutdown_timeout_s": 3,
            **admin_listener_off(),
        },
        "upstream": {"url": upstream, "timeout_s": 5, "connect_timeout_s": 2},
        "auth": {
            "jwt": [{"issuer": issuer.url, "jwks_uri": issuer.jwks_uri}],
            "introspection": {
                "endpoint": issuer.introspection_endpoint,
                "client_id": INTROSPECTION_CLIENT_ID,
                "client_secret": "${GATEWAY_INTROSPECTION_SECRET}",
            },
        },
        "phi": {"cursor_keys": ["${GATEWAY_CURSOR_KEY}"]},
        "policies": {"paths": ["policies/"], "poll_interval_s": 1},
        "logging": {"level": "INFO"},
    }
    path = etc / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    path.chmod(0o644)
    policies = etc / "policies"
    shutil.rmtree(policies)
    shutil.copytree(REPO / "policies", policies)
    for p in [policies, *policies.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return path


def entrypoint(image: Image, *override: str) -> list[str]:
    argv = image.runtime.last("ENTRYPOINT").exec_form()
    cmd = image.runtime.last("CMD").exec_form()
    assert argv is not None and cmd is not None
    return [image.map(a) for a in (*argv, *(override or cmd))]


# --------------------------------------------------------------------------- tests


def test_the_environment_holds_the_gateway_and_only_runtime_dependencies(image: Image) -> None:
    python = str(image.path("/opt/fhir-gateway/bin/python"))

    def imports(module: str) -> bool:
        proc = subprocess.run(
            [python, "-c", f"import {module}"], capture_output=True, timeout=60, check=False
        )
        return proc.returncode == 0

    for module in ("gateway.server", "aiohttp._http_parser", "cryptography", "fhirpathpy"):
        assert imports(module), module
    for module in ("pip", "pytest", "ruff", "mypy", "fhirclient", "sekmet_fhir", "carebundle"):
        assert not imports(module), f"{module} must not be in the image"
    assert (image.path("/opt/fhir-gateway/bin/fhir-gateway")).exists()
    # wheels, sources and build tools stay in the build stage
    assert not any(image.path("/opt/fhir-gateway").rglob("*.whl"))


def test_the_spill_directory_is_the_only_path_the_user_owns(image: Image) -> None:
    spill = image.path("/var/lib/fhir-gateway")
    assert spill.is_dir() and (spill.stat().st_mode & 0o777) == 0o750
    if image.as_root:
        assert (spill.stat().st_uid, spill.stat().st_gid) == (image.uid, image.gid)
        for p in (image.path("/opt/fhir-gateway"), image.path("/etc/fhir-gateway")):
            assert p.stat().st_uid == 0 and not p.stat().st_mode & 0o022


def check_config_as_user(image: Image, config: Path) -> subprocess.CompletedProcess[str]:
    env = runtime_env(
        image, GATEWAY_CURSOR_KEY=CURSOR_KEY, GATEWAY_INTROSPECTION_SECRET=INTROSPECTION_SECRET
    )
    argv = as_user(
        image, entrypoint(image, "check-config", "--config", str(config)), read_only=True
    )
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def healthcheck_as_user(image: Image, url: str) -> int:
    check = image.runtime.last("HEALTHCHECK").exec_form()
    assert check is not None
    env = runtime_env(image, FHIR_GATEWAY_HEALTHCHECK_URL=url)
    argv = as_user(image, [image.map(a) for a in check], read_only=False)
    proc = subprocess.run(argv, env=env, capture_output=True, timeout=30, check=False)
    return proc.returncode


def proc_status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def mount_options(pid: int, path: Path) -> str:
    """The per-mount options of the mount that holds ``path``, as process ``pid`` sees it."""
    best, options = "", ""
    for line in Path(f"/proc/{pid}/mountinfo").read_text(encoding="utf-8").splitlines():
        fields = line.split()
        point = fields[4]
        inside = str(path) == point or str(path).startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, options = point, fields[5]
    return options


async def test_the_image_serves_as_non_root_on_a_read_only_root(
    image: Image, fake_upstream: FakeUpstream, issuer: TestIssuer, tmp_path: Path
) -> None:
    port = free_port()
    config = await asyncio.to_thread(write_mounts, image, port, fake_upstream.base_url, issuer)
    checked = await asyncio.to_thread(check_config_as_user, image, config)
    assert checked.returncode == 0, checked.stderr
    env = runtime_env(
        image, GATEWAY_CURSOR_KEY=CURSOR_KEY, GATEWAY_INTROSPECTION_SECRET=INTROSPECTION_SECRET
    )
    argv = as_user(image, entrypoint(image), read_only=True)
    workdir = image.path(image.runtime.last("WORKDIR").args)
    gw = spawn("image", argv, tmp_path / "gateway.log", env=env, cwd=workdir)
    try:
        async with aiohttp.ClientSession() as session:
            origin = f"http://127.0.0.1:{port}"
            await wait_ready(session, gw, f"{origin}/readyz", timeout_s=60)
            jwt = issuer.mint(scope="user/*.rs", patient=None, fhirUser="Practitioner/dr-1")
            opaque = issuer.issue_opaque(
                scope="user/*.rs", patient=None, fhirUser="Practitioner/dr-1"
            )
            for token in (jwt, opaque):  # the introspection secret came from the environment
                async with session.get(
                    f"{origin}/r4/Patient/p1", headers={"Authorization": f"Bearer {token}"}
                ) as resp:
                    assert resp.status == 200, await resp.text()
                    assert (await resp.json())["id"] == "p1"
            assert [r.path for r in fake_upstream.requests] == ["/fhir/Patient/p1"] * 2

            if image.as_root:
                status = proc_status(gw.pid)
                assert status["Uid"].split()[:2] == [str(image.uid)] * 2
                assert status["Gid"].split()[:2] == [str(image.gid)] * 2
                assert status["NoNewPrivs"] == "1" and int(status["CapEff"], 16) == 0
                venv = image.path("/opt/fhir-gateway")
                assert "ro" in mount_options(gw.pid, venv).split(",")
                assert "ro" in mount_options(gw.pid, Path("/")).split(",")
                spill = image.path("/var/lib/fhir-gateway")
                assert "rw" in mount_options(gw.pid, spill).split(",")

            healthz = f"{origin}/healthz"
            assert await asyncio.to_thread(healthcheck_as_user, image, healthz) == 0
            closed = f"http://127.0.0.1:{free_port()}/healthz"
            assert await asyncio.to_thread(healthcheck_as_user, image, closed) != 0

        # exec-form entrypoint: SIGTERM reaches the gateway itself, which drains and exits 0
        os.kill(gw.pid, signal.SIGTERM)

        async def exited() -> int | None:
            return gw.process.poll()

        assert await eventually(exited, timeout_s=15, what="exit after SIGTERM") == 0
        log = gw.tail(200)
        assert '"stopped"' in log or "stopped" in log, log
        assert "Traceback" not in log and "Read-only file system" not in log, log
    finally:
        await asyncio.to_thread(gw.stop, timeout_s=10)
