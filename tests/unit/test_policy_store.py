"""Loading and atomic reload: success, failure (old set kept), polling, symlink swaps, SIGHUP."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.policy.engine import PolicySet
from gateway.policy.model import PolicyError
from gateway.policy.store import PolicyStore, discover, load_policy_set

GOOD = """policies:
  - id: {pid}
    description: test
    resource_types: [Condition]
    effect: withhold
"""
BAD = "policies:\n  - id: x\n    effect: nope\n"


def ids(s: PolicySet) -> list[str]:
    return [p.id for p in s.policies]


async def until(check: Callable[[], bool], within: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_discover_walks_directories_skips_hidden(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text("")
    (tmp_path / "a.yml").write_text("")
    (tmp_path / "notes.md").write_text("")
    (tmp_path / ".hidden.yaml").write_text("")
    (tmp_path / "codes").mkdir()
    (tmp_path / "codes" / "c.yaml").write_text("")
    (tmp_path / "..data").mkdir()
    (tmp_path / "..data" / "d.yaml").write_text("")
    single = tmp_path / "single.txt"
    single.write_text("")
    found = discover([tmp_path, single])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a.yml", "b.yaml", "codes/c.yaml", "single.txt",
    ]  # fmt: skip


def test_first_load_raises(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(BAD)
    store = PolicyStore([tmp_path])
    with pytest.raises(PolicyError):
        store.load()
    assert len(store.current) == 0


async def test_reload_success_and_failure_keeps_old_set(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(GOOD.format(pid="one"))
    reloaded: list[PolicySet] = []
    errors: list[PolicyError] = []
    store = PolicyStore([tmp_path], on_reload=reloaded.append, on_error=errors.append)
    first = store.load()
    assert ids(first) == ["one"]

    f.write_text(GOOD.format(pid="two"))
    assert await store.reload()
    assert ids(store.current) == ["two"] and reloaded == [store.current]
    good = store.current

    (tmp_path / "q.yaml").write_text(BAD)  # one broken file: nothing of the new set applies
    f.write_text(GOOD.format(pid="three"))
    with caplog.at_level(logging.ERROR, logger="gateway.policy"):
        assert not await store.reload()
    assert store.current is good
    assert store.failures == 1 and store.reloads == 1
    assert errors and store.last_error is errors[0]
    assert "q.yaml:2:5: policy: 'description' is required" in str(errors[0].items[0])
    assert any(r.getMessage() == "policy.reload.failed" for r in caplog.records)

    (tmp_path / "q.yaml").unlink()
    assert await store.reload()
    assert ids(store.current) == ["three"] and store.last_error is None


async def test_polling_picks_up_a_changed_file(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(GOOD.format(pid="one"))
    store = PolicyStore([f], poll_interval_s=0.05)
    store.load()
    await store.start(install_sighup=False)
    try:
        f.write_text(GOOD.format(pid="changed-id"))
        await until(lambda: ids(store.current) == ["changed-id"])
        f.write_text(BAD)
        await until(lambda: store.failures == 1)
        await asyncio.sleep(0.2)
        assert store.failures == 1  # a broken change is reported once, not on every poll
        assert ids(store.current) == ["changed-id"]
    finally:
        await store.stop()


async def test_polling_follows_a_configmap_symlink_swap(tmp_path: Path) -> None:
    """Kubernetes: files are symlinks to ..data/, and ..data is swapped atomically."""
    mount = tmp_path / "mount"
    mount.mkdir()
    v1 = mount / "..2024_01_01"
    v1.mkdir()
    (v1 / "p.yaml").write_text(GOOD.format(pid="v1"))
    os.symlink("..2024_01_01", mount / "..data")
    os.symlink("..data/p.yaml", mount / "p.yaml")
    store = PolicyStore([mount], poll_interval_s=0.05)
    store.load()
    assert ids(store.current) == ["v1"]
    await store.start(install_sighup=False)
    try:
        v2 = mount / "..2024_01_02"
        v2.mkdir()
        (v2 / "p.yaml").write_text(GOOD.format(pid="v2"))  # same size as v1
        os.symlink("..2024_01_02", mount / "..data_tmp")
        os.replace(mount / "..data_tmp", mount / "..data")
        await until(lambda: ids(store.current) == ["v2"])
    finally:
        await store.stop()


async def test_sighup_triggers_a_reload(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(GOOD.format(pid="one"))
    store = PolicyStore([f], poll_interval_s=3600)  # polling effectively off
    store.load()
    await store.start()
    try:
        f.write_text(GOOD.format(pid="two"))
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: ids(store.current) == ["two"])
        assert store.reloads == 1
    finally:
        await store.stop()
    # the handler is removed again: default SIGHUP would end the test run, so do not send it


async def test_request_reload_without_change_still_reloads(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(GOOD.format(pid="one"))
    store = PolicyStore([f], poll_interval_s=3600)
    store.load()
    await store.start(install_sighup=False)
    try:
        store.request_reload()
        await until(lambda: store.reloads == 1)
        assert not store.changed()
    finally:
        await store.stop()


def test_shipped_policies_load() -> None:
    root = Path(__file__).resolve().parents[2] / "policies"
    s = load_policy_set([root])
    assert ids(s) == [
        "sensitive-conditions", "sensitive-conditions-break-the-glass", "unreleased-labs",
    ]  # fmt: skip
    assert len(s.files) == 6
