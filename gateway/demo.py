"""``fhir-gateway demo``: a real FHIR server with synthetic patients, and the gateway in front.

The pieces are reusable (the real-upstream test fixtures import them):

- :func:`generate_dataset` runs ``carebundle`` (one transaction Bundle per patient) and adds the
  cases the privacy policies are about, deterministically, to the first two patients:
  a Condition labelled ``PSY`` (psychiatry information sensitivity) and a set of *preliminary*
  laboratory Observations with a *preliminary* DiagnosticReport. Every added resource carries an
  identifier in :data:`DEMO_IDENTIFIER_SYSTEM` (``sensitive-condition-1``,
  ``preliminary-lab-1-2``, ``preliminary-report-1``, ...; every Patient gets ``patient-N``).
- :func:`start_upstream` / :func:`wait_until_up` / :func:`load_dataset` run ``sekmet serve`` on a
  loopback port with a fresh database and load the Bundles; :func:`load_dataset` returns the
  server-assigned ids, found again by identifier.
- :func:`run_demo` strings it together, starts ``python -m gateway serve`` in front, prints what
  runs where and stops everything it started on Ctrl-C or SIGTERM.

Only the standard library (plus msgspec, which keeps FHIR decimals exact, and PyYAML) is used:
this module must work before the rest of the gateway does.
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
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any, TypedDict

import msgspec
import yaml

from gateway.demo_issuer import DemoIssuer

__all__ = [
    "DEFAULT_SEED",
    "DEMO_IDENTIFIER_SYSTEM",
    "SPECIAL_PATIENTS",
    "DatasetSummary",
    "DemoError",
    "PatientSummary",
    "demo_identifier",
    "find_ids_by_identifier",
    "free_port",
    "generate_dataset",
    "http_get_json",
    "load_dataset",
    "port_is_free",
    "run_demo",
    "start_gateway",
    "start_upstream",
    "stop_process",
    "upstream_base_url",
    "wait_until_up",
    "write_gateway_config",
    "write_upstream_settings",
]

DEMO_IDENTIFIER_SYSTEM = "urn:fhir-gateway:demo"
DEFAULT_SEED = 7
SPECIAL_PATIENTS = 2
"""How many patients (the first ones) get the sensitive and preliminary resources."""

# Bump when the post-processing below changes, so cached datasets are regenerated.
DATASET_VERSION = 1
_MANIFEST = "dataset-manifest.json"
_PROFILE = "mixed"
_UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, DEMO_IDENTIFIER_SYSTEM)

_HOST = "127.0.0.1"
_FHIR_JSON = "application/fhir+json"
_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
_HTEST = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
    "code": "HTEST",
    "display": "test health data",
}
_PSY = {
    "system": _ACT_CODE,
    "code": "PSY",
    "display": "psychiatry disorder information sensitivity",
}
_SNOMED = "http://snomed.info/sct"
_LOINC = "http://loinc.org"
_UCUM = "http://unitsofmeasure.org"

# (LOINC code, display, value, UCUM unit) — a basic metabolic panel drawn the morning after the
# generated encounter, still preliminary. Values are Decimals so their precision survives.
_PRELIMINARY_LABS: tuple[tuple[str, str, Decimal, str], ...] = (
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", Decimal("5.9"), "mmol/L"),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", Decimal("1.40"), "mg/dL"),
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", Decimal("182"), "mg/dL"),
)
_PRELIMINARY_PANEL = ("51990-0", "Basic metabolic panel - Blood")
_PRELIMINARY_TIME = "2026-01-02T08:00:00Z"

_decoder = msgspec.json.Decoder(float_hook=Decimal)
_encoder = msgspec.json.Encoder(decimal_format="number")


class DemoError(RuntimeError):
    """A failure the demo explains to its user in one sentence (no traceback)."""


class PatientSummary(TypedDict):
    index: int
    """1-based position in the dataset (``patient-1`` is the first Bundle)."""
    patient_id: str
    name: str
    sensitive_condition_ids: list[str]
    preliminary_observation_ids: list[str]
    preliminary_report_ids: list[str]


class DatasetSummary(TypedDict):
    base_url: str
    patients: list[PatientSummary]


# --------------------------------------------------------------------------- the dataset


def demo_identifier(value: str) -> dict[str, str]:
    """The identifier every resource the demo adds carries (``urn:fhir-gateway:demo|value``)."""
    return {"system": DEMO_IDENTIFIER_SYSTEM, "value": value}


def _mint(seed: int, name: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_UUID_NAMESPACE, f'{seed}/{name}')}"


def _narrative(text: str) -> dict[str, str]:
    return {
        "status": "generated",
        "div": '<div xmlns="http://www.w3.org/1999/xhtml"><p><b>SYNTHETIC TEST DATA — not a '
        f"real person.</b></p><p>{text} (synthetic).</p></div>",
    }


def _coding(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _entry(full_url: str, resource: dict[str, Any]) -> dict[str, Any]:
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }


def _first_full_url(bundle: dict[str, Any], resource_type: str) -> str | None:
    for entry in bundle.get("entry", []):
        if entry.get("resource", {}).get("resourceType") == resource_type:
            return str(entry["fullUrl"])
    return None


def _special_entries(
    seed: int, n: int, patient: str, encounter: str | None
) -> list[dict[str, Any]]:
    """The sensitive Condition and the preliminary labs + report for patient number ``n``."""
    subject = {"reference": patient}
    context = {"encounter": {"reference": encounter}} if encounter else {}
    condition = {
        "resourceType": "Condition",
        "meta": {"security": [dict(_HTEST), dict(_PSY)]},
        "text": _narrative("Condition: Depressive disorder"),
        "identifier": [demo_identifier(f"sensitive-condition-{n}")],
        "clinicalStatus": _coding(
            "http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"
        ),
        "verificationStatus": _coding(
            "http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed"
        ),
        "category": [
            _coding(
                "http://terminology.hl7.org/CodeSystem/condition-category",
                "problem-list-item",
                "Problem List Item",
            )
        ],
        "code": _coding(_SNOMED, "35489007", "Depressive disorder"),
        "subject": subject,
        **context,
        "onsetDateTime": "2025-03-14",
        "recordedDate": "2026-01-01",
    }
    entries = [_entry(_mint(seed, f"sensitive-condition-{n}"), condition)]
    lab_category = _coding(
        "http://terminology.hl7.org/CodeSystem/observation-category", "laboratory", "Laboratory"
    )
    results: list[dict[str, str]] = []
    for k, (code, display, value, unit) in enumerate(_PRELIMINARY_LABS, start=1):
        name = f"preliminary-lab-{n}-{k}"
        full_url = _mint(seed, name)
        results.append({"reference": full_url})
        observation = {
            "resourceType": "Observation",
            "meta": {"security": [dict(_HTEST)]},
            "text": _narrative(f"{display}: {value} {unit}, preliminary"),
            "identifier": [demo_identifier(name)],
            "status": "preliminary",
            "category": [lab_category],
            "code": _coding(_LOINC, code, display),
            "subject": subject,
            **context,
            "effectiveDateTime": _PRELIMINARY_TIME,
            "valueQuantity": {"value": value, "unit": unit, "system": _UCUM, "code": unit},
        }
        entries.append(_entry(full_url, observation))
    report = {
        "resourceType": "DiagnosticReport",
        "meta": {"security": [dict(_HTEST)]},
        "text": _narrative("Laboratory report, preliminary"),
        "identifier": [demo_identifier(f"preliminary-report-{n}")],
        "status": "preliminary",
        "category": [_coding("http://terminology.hl7.org/CodeSystem/v2-0074", "LAB", "Laboratory")],
        "code": _coding(_LOINC, *_PRELIMINARY_PANEL),
        "subject": subject,
        **context,
        "effectiveDateTime": _PRELIMINARY_TIME,
        "result": results,
    }
    entries.append(_entry(_mint(seed, f"preliminary-report-{n}"), report))
    return entries


def _augment(bundle: dict[str, Any], *, seed: int, n: int) -> None:
    """Add the demo identifiers and, for the first patients, the special resources (in place)."""
    patient_url = None
    for entry in bundle.get("entry", []):
        resource = entry.get("resource", {})
        if resource.get("resourceType") == "Patient":
            resource.setdefault("identifier", []).append(demo_identifier(f"patient-{n}"))
            patient_url = str(entry["fullUrl"])
            break
    if patient_url is None:
        raise DemoError(f"carebundle output for patient {n} has no Patient entry")
    if n <= SPECIAL_PATIENTS:
        encounter = _first_full_url(bundle, "Encounter")
        bundle["entry"].extend(_special_entries(seed, n, patient_url, encounter))


def _console_command(script: str, module: str, func: str) -> list[str]:
    """How to run a console script of a package installed beside this interpreter."""
    beside = Path(sys.executable).parent / script
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    # Neither package has a ``__main__``: import its entry point directly.
    code = f"import sys; from {module} import {func}; sys.argv[0] = {script!r}; sys.exit({func}())"
    return [sys.executable, "-c", code]


def _carebundle_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("carebundle")
    except PackageNotFoundError:
        raise DemoError(
            "carebundle is not installed: pip install -e '.[demo]' (or make install)"
        ) from None


def generate_dataset(out_dir: Path, *, patients: int = 20, seed: int = DEFAULT_SEED) -> list[Path]:
    """Write one transaction Bundle per patient into ``out_dir``; return their paths in order.

    Deterministic for ``(patients, seed)``. A complete earlier run for the same parameters (its
    manifest matches) is reused as is; otherwise the directory's Bundles are regenerated.
    """
    if patients < 1:
        raise ValueError("patients must be at least 1")
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = {
        "profile": _PROFILE,
        "patients": patients,
        "seed": seed,
        "carebundle": _carebundle_version(),
        "dataset_version": DATASET_VERSION,
    }
    names = [f"{_PROFILE}-{seed}-{i:04d}.json" for i in range(patients)]
    paths = [out_dir / name for name in names]
    manifest = out_dir / _MANIFEST
    with contextlib.suppress(OSError, msgspec.DecodeError):
        if _decoder.decode(manifest.read_bytes()) == {**wanted, "files": names} and all(
            p.is_file() for p in paths
        ):
            return paths

    manifest.unlink(missing_ok=True)
    for stale in out_dir.glob(f"{_PROFILE}-*.json"):
        stale.unlink()
    command = [
        *_console_command("carebundle", "carebundle.cli", "run"),
        "generate",
        f"--profile={_PROFILE}",
        f"--count={patients}",
        f"--seed={seed}",
        f"--out={out_dir}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        raise DemoError(f"carebundle failed (exit {done.returncode}): {done.stderr.strip()}")
    for n, path in enumerate(paths, start=1):
        if not path.is_file():
            raise DemoError(f"carebundle did not write {path}")
        bundle = _decoder.decode(path.read_bytes())
        _augment(bundle, seed=seed, n=n)
        path.write_bytes(msgspec.json.format(_encoder.encode(bundle), indent=2) + b"\n")
    manifest.write_bytes(_encoder.encode({**wanted, "files": names}) + b"\n")
    return paths


# --------------------------------------------------------------------------- HTTP helpers


def http_get_json(url: str, *, timeout_s: float = 10.0) -> Any:
    """GET a FHIR JSON document (decimals kept exact); raise DemoError unless 200."""
    request = urllib.request.Request(url, headers={"Accept": _FHIR_JSON})  # noqa: S310 - our URLs
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return _decoder.decode(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            raise DemoError(f"GET {url}: HTTP {exc.code}") from None


def _post_bundle(base_url: str, body: bytes, *, timeout_s: float = 120.0) -> Any:
    request = urllib.request.Request(  # noqa: S310 - loopback URL built by this module
        base_url,
        data=body,
        method="POST",
        headers={"Content-Type": _FHIR_JSON, "Accept": _FHIR_JSON},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            if response.status != 200:
                raise DemoError(f"POST {base_url}: HTTP {response.status}, expected 200")
            return _decoder.decode(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            detail = exc.read(2000).decode("utf-8", "replace")
        raise DemoError(f"POST {base_url}: HTTP {exc.code}: {detail}") from None


def find_ids_by_identifier(base_url: str, resource_type: str, value: str) -> list[str]:
    """Server ids of ``resource_type`` resources carrying ``urn:fhir-gateway:demo|value``."""
    query = urllib.parse.urlencode({"identifier": f"{DEMO_IDENTIFIER_SYSTEM}|{value}"})
    bundle = http_get_json(f"{base_url}/{resource_type}?{query}")
    return [
        str(entry["resource"]["id"])
        for entry in bundle.get("entry", [])
        if entry.get("resource", {}).get("resourceType") == resource_type
    ]


def _one_id(base_url: str, resource_type: str, value: str) -> str:
    ids = find_ids_by_identifier(base_url, resource_type, value)
    if len(ids) != 1:
        raise DemoError(
            f"expected one {resource_type} with identifier {value!r} after loading, found "
            f"{len(ids)} (was the upstream database wiped first?)"
        )
    return ids[0]


def _demo_values(bundle: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(resourceType, identifier value) of every resource carrying a demo identifier."""
    for entry in bundle.get("entry", []):
        resource = entry.get("resource", {})
        for ident in resource.get("identifier", []):
            if ident.get("system") == DEMO_IDENTIFIER_SYSTEM:
                yield str(resource["resourceType"]), str(ident["value"])


def _patient_name(bundle: dict[str, Any]) -> str:
    for entry in bundle.get("entry", []):
        resource = entry.get("resource", {})
        if resource.get("resourceType") == "Patient":
            for name in resource.get("name", []):
                return " ".join([*name.get("given", []), name.get("family", "")]).strip()
    return ""


def load_dataset(base_url: str, bundles: Sequence[Path]) -> DatasetSummary:
    """POST every transaction Bundle to ``base_url`` (each must answer 200), then look up the
    server-assigned ids of each Patient and of the resources the demo added, by identifier."""
    base_url = base_url.rstrip("/")
    parsed: list[dict[str, Any]] = []
    for path in bundles:
        body = path.read_bytes()
        _post_bundle(base_url, body)
        parsed.append(_decoder.decode(body))
    patients: list[PatientSummary] = []
    for index, bundle in enumerate(parsed, start=1):
        summary = PatientSummary(
            index=index,
            patient_id="",
            name=_patient_name(bundle),
            sensitive_condition_ids=[],
            preliminary_observation_ids=[],
            preliminary_report_ids=[],
        )
        for resource_type, value in _demo_values(bundle):
            found = _one_id(base_url, resource_type, value)
            if value.startswith("patient-"):
                summary["patient_id"] = found
            elif value.startswith("sensitive-condition-"):
                summary["sensitive_condition_ids"].append(found)
            elif value.startswith("preliminary-lab-"):
                summary["preliminary_observation_ids"].append(found)
            elif value.startswith("preliminary-report-"):
                summary["preliminary_report_ids"].append(found)
        if not summary["patient_id"]:
            raise DemoError(f"{bundles[index - 1]} has no Patient with a demo identifier")
        patients.append(summary)
    return DatasetSummary(base_url=base_url, patients=patients)


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
                f"{_describe(process)} exited with status {process.returncode} before {url} "
                f"answered{_log_tail(log_file)}"
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
                + _log_tail(log_file)
            )
        time.sleep(0.1)


def _log_tail(log_file: Path | None, lines: int = 15) -> str:
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
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = _HOST) -> bool:
    """Whether a server could listen on ``host:port`` (SO_REUSEADDR, as servers bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _require_free(port: int, what: str, option: str) -> None:
    if not port_is_free(port):
        raise DemoError(
            f"port {port} on {_HOST} is already in use, so the {what} cannot listen there; "
            f"stop whatever uses it or choose another port with {option}"
        )


def upstream_base_url(port: int) -> str:
    return f"http://{_HOST}:{port}/fhir"


def write_upstream_settings(directory: Path, port: int, *, data_dir: Path | None = None) -> Path:
    """Write ``sekmet-settings.yaml`` for a loopback sekmet on ``port``; return its path."""
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    settings = {
        "base_url": upstream_base_url(port),
        "host": _HOST,
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
    _require_free(port, "upstream FHIR server", "--upstream-port")
    data_dir = workdir / "upstream-data"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    settings = write_upstream_settings(workdir, port, data_dir=data_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEKMET_")}
    command = [*_console_command("sekmet", "sekmet.cli", "app"), "serve", "-c", str(settings)]
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


def _describe(process: subprocess.Popen[bytes]) -> str:
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
            "host": _HOST,
            "port": port,
            "public_base_url": f"http://{_HOST}:{port}/fhir",
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


# --------------------------------------------------------------------------- run_demo


class _Stop(Exception):
    """Raised by the signal handlers in the main thread."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    del frame
    raise _Stop(signal.Signals(signum).name)


def _say(text: str = "") -> None:
    print(text, flush=True)


def _banner(
    *,
    port: int,
    upstream_port: int,
    workdir: Path,
    summary: DatasetSummary,
    tokens: dict[str, str],
    seed: int,
) -> str:
    base = f"http://{_HOST}:{port}/fhir"
    special = summary["patients"][:SPECIAL_PATIENTS]
    first = special[0]["patient_id"]
    auth = '-H "Authorization: Bearer $TOKEN" '
    lines = [
        "",
        "=" * 78,
        " fhir-gateway demo is running",
        "=" * 78,
        f" gateway (use this)   {base}",
        f" upstream (sekmet)    {summary['base_url']}   (loopback only; the gateway's upstream)",
        f" health               http://{_HOST}:{port}/healthz",
        f" data                 {len(summary['patients'])} synthetic patients "
        f"(carebundle, seed {seed})",
        f" files                {workdir}  (gateway.yaml, gateway.log, sekmet.log, summary.json)",
        "",
        " Patients with a PSY-labelled Condition and preliminary lab results:",
    ]
    for p in special:
        lines.append(
            f"   patient-{p['index']}  Patient/{p['patient_id']}  {p['name']}\n"
            f"              sensitive Condition/{', Condition/'.join(p['sensitive_condition_ids'])}"
            f"\n              preliminary DiagnosticReport/"
            f"{', DiagnosticReport/'.join(p['preliminary_report_ids'])}"
            f" + {len(p['preliminary_observation_ids'])} Observations"
        )
    lines.append("")
    lines.append(
        " Tokens, signed by a key made for this run only (valid 8 h; export one as TOKEN):"
    )
    for label, token in tokens.items():
        lines += [f"   {label}:", f"     TOKEN={token}"]
    lines += [
        "",
        " Try:",
        f"   curl -s {base}/metadata",
        f"   curl -s {auth}{base}/Patient/{first}",
        f'   curl -s {auth}"{base}/Observation?patient={first}&_count=5"',
        f'   curl -s {auth}"{base}/Condition?patient={first}"',
        f'   curl -s {auth}"{base}/DiagnosticReport?patient={first}"',
        f"   curl -s {auth}-X POST -H 'Content-Type: application/x-www-form-urlencoded' \\",
        f"        --data 'patient={first}&category=laboratory' {base}/Observation/_search",
        "",
        " Privacy policies (policies/): with the patient token the PSY-labelled Condition and",
        " the preliminary DiagnosticReport and labs are absent; the clinician token sees them.",
        " A search with the patient token for another patient's data is refused (403), a read",
        " of it answers 404. Paging links are opaque cursors bound to the token's user.",
        "",
        f" Ports {port} and {upstream_port} are released on exit. Press Ctrl-C to stop.",
        "=" * 78,
        "",
    ]
    return "\n".join(lines)


def run_demo(
    workdir: Path,
    *,
    port: int,
    upstream_port: int,
    patients: int,
    seed: int = DEFAULT_SEED,
) -> int:
    """Run sekmet with synthetic patients and the gateway in front until SIGINT/SIGTERM.

    Returns 0 after a requested stop, 1 when something failed (the reason is printed).
    """
    started: list[subprocess.Popen[bytes]] = []
    previous: dict[signal.Signals, Any] = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, _raise_stop)
    except ValueError:  # not the main thread: the caller handles signals
        previous.clear()
    try:
        return _run(workdir, port, upstream_port, patients, seed, started)
    except _Stop as stop:
        _say(f"\n{stop.args[0]} received, stopping")
        return 0
    except DemoError as exc:
        print(f"fhir-gateway demo: error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        for signum in previous:  # a second Ctrl-C must not interrupt the cleanup
            signal.signal(signum, signal.SIG_IGN)
        for process in reversed(started):  # the gateway first, then its upstream
            stop_process(process)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if started:
            _say("demo stopped")


def _run(
    workdir: Path,
    port: int,
    upstream_port: int,
    patients: int,
    seed: int,
    started: list[subprocess.Popen[bytes]],
) -> int:
    if patients < SPECIAL_PATIENTS:
        raise DemoError(f"--patients must be at least {SPECIAL_PATIENTS}")
    if port == upstream_port:
        raise DemoError("--port and --upstream-port must differ")
    _require_free(port, "gateway", "--port")
    _require_free(upstream_port, "upstream FHIR server", "--upstream-port")
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    t0 = time.monotonic()
    issuer = DemoIssuer(audience=f"http://{_HOST}:{port}/fhir").start()
    try:
        return _run_with_issuer(workdir, port, upstream_port, patients, seed, started, issuer, t0)
    finally:
        issuer.stop()


def _run_with_issuer(
    workdir: Path,
    port: int,
    upstream_port: int,
    patients: int,
    seed: int,
    started: list[subprocess.Popen[bytes]],
    issuer: DemoIssuer,
    t0: float,
) -> int:
    upstream_url = upstream_base_url(upstream_port)
    config = write_gateway_config(
        workdir, port=port, upstream_url=upstream_url, auth=issuer.auth_section()
    )  # fail early
    _say(f"starting sekmet-fhir on {upstream_url} (log: {workdir / 'sekmet.log'}) ...")
    upstream = start_upstream(workdir, upstream_port)  # boots while the data is generated
    started.append(upstream)
    _say(f"generating {patients} synthetic patients (seed {seed}) in {workdir / 'dataset'} ...")
    bundles = generate_dataset(workdir / "dataset", patients=patients, seed=seed)
    wait_until_up(f"{upstream_url}/metadata", process=upstream, log_file=workdir / "sekmet.log")
    _say(f"loading {len(bundles)} transaction Bundles ...")
    summary = load_dataset(upstream_url, bundles)
    (workdir / "summary.json").write_bytes(
        msgspec.json.format(_encoder.encode(summary), indent=2) + b"\n"
    )

    gateway_log = workdir / "gateway.log"
    _say(f"starting the gateway on http://{_HOST}:{port} (log: {gateway_log}) ...")
    gateway = start_gateway(config, log_file=gateway_log)
    started.append(gateway)
    wait_until_up(f"http://{_HOST}:{port}/healthz", process=gateway, log_file=gateway_log)

    _say(
        _banner(
            port=port,
            upstream_port=upstream_port,
            workdir=workdir,
            summary=summary,
            tokens=issuer.demo_tokens(summary["patients"][0]["patient_id"]),
            seed=seed,
        )
    )
    _say(f"(ready in {time.monotonic() - t0:.1f} s)")
    while True:
        for process, log in ((upstream, workdir / "sekmet.log"), (gateway, gateway_log)):
            if process.poll() is not None:
                raise DemoError(
                    f"{_describe(process)} exited unexpectedly with status "
                    f"{process.returncode}{_log_tail(log)}"
                )
        time.sleep(0.5)
