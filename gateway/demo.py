"""``fhir-gateway demo``: a real FHIR server with synthetic patients, and the gateway in front.

:func:`run_demo` strings the pieces together: it starts a demo token issuer, ``sekmet serve``
with a fresh database, generates and loads the synthetic patients, starts ``python -m gateway
serve`` in front, prints what runs where (with tokens and example requests) and stops
everything it started on Ctrl-C or SIGTERM.

The pieces are reusable (the real-upstream test fixtures import them) and re-exported here:
:mod:`gateway.demo_data` generates and loads the dataset, :mod:`gateway.demo_processes` starts,
waits for and stops the upstream and the gateway.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import msgspec

from gateway.demo_data import (
    DEFAULT_SEED,
    DEMO_IDENTIFIER_SYSTEM,
    SPECIAL_PATIENTS,
    DatasetSummary,
    DemoError,
    PatientSummary,
    demo_identifier,
    find_ids_by_identifier,
    generate_dataset,
    http_get_json,
    json_encoder,
    load_dataset,
)
from gateway.demo_issuer import DemoIssuer
from gateway.demo_processes import (
    HOST,
    describe_process,
    free_port,
    log_tail,
    port_is_free,
    require_free,
    start_gateway,
    start_upstream,
    stop_process,
    upstream_base_url,
    wait_until_up,
    write_gateway_config,
    write_upstream_settings,
)

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
    base = f"http://{HOST}:{port}/fhir"
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
        f" health               http://{HOST}:{port}/healthz",
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
    require_free(port, "gateway", "--port")
    require_free(upstream_port, "upstream FHIR server", "--upstream-port")
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    t0 = time.monotonic()
    issuer = DemoIssuer(audience=f"http://{HOST}:{port}/fhir").start()
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
        msgspec.json.format(json_encoder.encode(summary), indent=2) + b"\n"
    )

    gateway_log = workdir / "gateway.log"
    _say(f"starting the gateway on http://{HOST}:{port} (log: {gateway_log}) ...")
    gateway = start_gateway(config, log_file=gateway_log)
    started.append(gateway)
    wait_until_up(f"http://{HOST}:{port}/healthz", process=gateway, log_file=gateway_log)

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
                    f"{describe_process(process)} exited unexpectedly with status "
                    f"{process.returncode}{log_tail(log)}"
                )
        time.sleep(0.5)
