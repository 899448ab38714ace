"""The real upstream for tests: sekmet-fhir on a loopback port, loaded with synthetic patients.

Use the session fixture (import it into a conftest, or into a test module)::

    from tests.support.sekmet import real_upstream  # noqa: F401

    def test_something(real_upstream: RealUpstream) -> None:
        p1 = real_upstream.patient(1)   # PatientSummary: patient_id, sensitive_condition_ids, ...

One server and one dataset serve the whole session (3 patients, seed 7; patients 1 and 2 carry
the PSY-labelled Condition and the preliminary labs, see ``gateway.demo``). Tests must treat it
as read-only: create what you need under your own identifiers and never change or delete the
loaded resources. The server process runs in its own process group and is killed at session
end (and at interpreter exit, should the fixture's teardown be skipped).

The generated Bundles are cached in pytest's cache directory between runs when the cache
plugin is active (the manifest in that directory invalidates stale copies).
"""

from __future__ import annotations

import atexit
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.demo import (
    DEFAULT_SEED,
    DatasetSummary,
    PatientSummary,
    free_port,
    generate_dataset,
    load_dataset,
    start_upstream,
    stop_process,
    upstream_base_url,
    wait_until_up,
)

PATIENTS = 3
SEED = DEFAULT_SEED


@dataclass
class RealUpstream:
    base_url: str
    """``http://127.0.0.1:PORT/fhir``, no trailing slash; also the base of its paging links."""
    port: int
    process: subprocess.Popen[bytes]
    summary: DatasetSummary
    workdir: Path
    bundles: list[Path] = field(default_factory=list)

    @property
    def log_file(self) -> Path:
        return self.workdir / "sekmet.log"

    @property
    def patient_ids(self) -> list[str]:
        return [p["patient_id"] for p in self.summary["patients"]]

    def patient(self, index: int) -> PatientSummary:
        """The summary of patient ``index`` (1-based, as in the ``patient-N`` identifier)."""
        return self.summary["patients"][index - 1]

    def url(self, path: str) -> str:
        """``base_url`` joined with a relative FHIR path such as ``Patient/123``."""
        return f"{self.base_url}/{path.lstrip('/')}"

    def stop(self) -> None:
        """Terminate the server's process group and wait for it. Idempotent."""
        stop_process(self.process)


def start_loaded_upstream(
    workdir: Path,
    *,
    patients: int = PATIENTS,
    seed: int = SEED,
    dataset_dir: Path | None = None,
    port: int | None = None,
) -> RealUpstream:
    """Start sekmet on a free port, generate (or reuse) the dataset meanwhile, load it.

    On any failure the server is stopped before the exception propagates.
    """
    port = port or free_port()
    base_url = upstream_base_url(port)
    process = start_upstream(workdir, port)  # starts in ~1-2 s: generate while it boots
    atexit.register(stop_process, process)
    try:
        bundles = generate_dataset(dataset_dir or workdir / "dataset", patients=patients, seed=seed)
        wait_until_up(f"{base_url}/metadata", process=process, log_file=workdir / "sekmet.log")
        summary = load_dataset(base_url, bundles)
    except BaseException:
        stop_process(process)
        raise
    return RealUpstream(
        base_url=base_url,
        port=port,
        process=process,
        summary=summary,
        workdir=workdir,
        bundles=bundles,
    )


def _dataset_dir(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = getattr(config, "cache", None)  # absent under -p no:cacheprovider
    if cache is not None:
        return Path(cache.mkdir(f"real-upstream-dataset-{PATIENTS}-{SEED}"))
    return tmp_path_factory.mktemp("dataset")


@pytest.fixture(scope="session")
def real_upstream(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealUpstream]:
    """A running sekmet-fhir loaded with the test dataset, shared by the whole session."""
    upstream = start_loaded_upstream(
        tmp_path_factory.mktemp("sekmet"),
        dataset_dir=_dataset_dir(pytestconfig, tmp_path_factory),
    )
    try:
        yield upstream
    finally:
        upstream.stop()
