"""Loading policy files and reloading them atomically (SIGHUP and polling).

``policies.paths`` lists files and directories; a directory contributes every ``*.yaml`` /
``*.yml`` file below it, in sorted order, skipping names that start with ``.`` (Kubernetes
ConfigMap volumes keep their real files in ``..data`` / ``..<timestamp>`` directories and expose
them through symlinks, which are followed).

A reload parses and compiles the *whole* new set before it replaces the old one; on any
problem the old set stays, the problems are logged, ``failures`` is incremented and
``on_error`` is called (decision 17). Readers take ``store.current`` once per request, so a
request never sees two sets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.ops.logging import log
from gateway.policy.compile import compile_files
from gateway.policy.engine import PolicySet
from gateway.policy.model import PolicyError, PolicyFile, Pos, Problem, parse_file

logger = logging.getLogger("gateway.policy")

Fingerprint = tuple[tuple[object, ...], ...]
_SUFFIXES = (".yaml", ".yml")


def discover(paths: Sequence[Path]) -> list[Path]:
    """The policy files named by ``paths`` (files as given, directories walked)."""
    out: list[Path] = []
    for root in paths:
        if not root.is_dir():
            out.append(root)
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            out.extend(
                Path(dirpath) / f
                for f in sorted(filenames)
                if f.endswith(_SUFFIXES) and not f.startswith(".")
            )
    return out


def fingerprint(paths: Sequence[Path]) -> Fingerprint:
    """What a change looks like: the file list, and per file its target, inode, mtime, size."""
    out: list[tuple[object, ...]] = []
    for p in discover(paths):
        try:
            st = p.stat()
            out.append(
                (str(p), os.path.realpath(p), st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            )
        except OSError:
            out.append((str(p), "missing"))
    return tuple(out)


def load_policy_set(paths: Sequence[Path]) -> PolicySet:
    """Parse and compile every policy file; raise :class:`PolicyError` listing all problems
    (with file, line and column) across all files. Used at start-up, on reload and by
    ``check-config``."""
    problems: list[Problem] = []
    files: list[PolicyFile] = []
    for path in discover(paths):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(Pos(str(path), 1, 1), f"cannot read: {type(exc).__name__}"))
            continue
        try:
            files.append(parse_file(text, str(path)))
        except PolicyError as exc:
            problems.extend(exc.items)
            if exc.partial is not None:  # its well-formed policies still get compiled
                files.append(exc.partial)
    try:
        policy_set = compile_files(files)
    except PolicyError as exc:
        problems.extend(exc.items)
        policy_set = PolicySet()
    if problems:
        raise PolicyError(problems)
    return policy_set


class PolicyStore:
    """The current :class:`PolicySet`, reloaded on SIGHUP and when the files change."""

    def __init__(
        self,
        paths: Sequence[Path],
        *,
        poll_interval_s: float = 5.0,
        on_reload: Callable[[PolicySet], None] | None = None,
        on_error: Callable[[PolicyError], None] | None = None,
    ) -> None:
        self.paths = tuple(paths)
        self.poll_interval_s = poll_interval_s
        self.on_reload = on_reload
        self.on_error = on_error
        self.reloads = 0  # successful reloads (not counting the first load)
        self.failures = 0  # failed reloads: metric policy_reload_failures_total
        self.last_error: PolicyError | None = None
        self._current = PolicySet()
        self._fingerprint: Fingerprint = ()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._signal_installed = False

    @property
    def current(self) -> PolicySet:
        return self._current

    def load(self) -> PolicySet:
        """The first load: raises :class:`PolicyError` (the gateway must refuse to start)."""
        fp = fingerprint(self.paths)
        self._current = load_policy_set(self.paths)
        self._fingerprint = fp
        log(
            logger,
            logging.INFO,
            "policy.loaded",
            policies=len(self._current),
            files=len(self._current.files),
        )
        return self._current

    async def reload(self, trigger: str = "manual") -> bool:
        """Load and compile the files again; swap only if everything compiled."""
        async with self._lock:
            fp = await asyncio.to_thread(fingerprint, self.paths)
            try:
                new = await asyncio.to_thread(load_policy_set, self.paths)
            except PolicyError as exc:
                self._fingerprint = fp  # report a broken change once, not every poll
                self.failures += 1
                self.last_error = exc
                first = str(exc.items[0]) if exc.items else ""
                log(logger, logging.ERROR, "policy.reload.failed", trigger=trigger,
                    problems=len(exc.items), first=first, kept=len(self._current))  # fmt: skip
                if self.on_error is not None:
                    self.on_error(exc)
                return False
            self._current = new
            self._fingerprint = fp
            self.reloads += 1
            self.last_error = None
            log(logger, logging.INFO, "policy.reloaded", trigger=trigger,
                policies=len(new), files=len(new.files))  # fmt: skip
            if self.on_reload is not None:
                self.on_reload(new)
            return True

    def changed(self) -> bool:
        return fingerprint(self.paths) != self._fingerprint

    def request_reload(self) -> None:
        """Ask the background task to reload now (the SIGHUP handler calls this)."""
        self._wake.set()

    async def start(self, *, install_sighup: bool = True) -> None:
        """Start polling (and listen for SIGHUP); call after :meth:`load`."""
        if self._task is not None:
            return
        if install_sighup and hasattr(signal, "SIGHUP"):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.request_reload)
                self._signal_installed = True
        self._task = asyncio.create_task(self._run(), name="policy-reload")

    async def stop(self) -> None:
        if self._signal_installed:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._signal_installed = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)
            try:
                if self._wake.is_set():
                    self._wake.clear()
                    await self.reload("sighup")
                elif await asyncio.to_thread(self.changed):
                    await self.reload("poll")
            except Exception:  # the reload task must survive anything
                logger.exception("policy.reload.crashed")
