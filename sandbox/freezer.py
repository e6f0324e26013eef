"""Freezing a jail between steps: nothing of a run executes while no step runs.

The host calls `freeze()` when a step has ended (after killing every process but the
jail's init and its state process) and `thaw()` before it sends the next request. Frozen
processes get no CPU: a timer the code re-armed or a process it left behind cannot burn
CPU between steps, and a process that stops the state process cannot keep anything
running. Messages sent to a frozen jail wait in its socket.

`Freezer` is the whole interface the rest of the sandbox uses; `make_freezer` picks the
implementation:
- cgroup v1: a group `<root>/freezer/<parent>/<jail name>`, the jail's processes moved in
  at start-up (its init and state process; their children inherit it), `freezer.state`
  written FROZEN / THAWED (freezing completes asynchronously, thawing at once);
- cgroup v2 (sandbox.cgroups, another module): `cgroup.freeze` of the jail's own group -
  return such an object from `make_freezer` when the jail runs under cgroup v2;
- none available: `None`, and the host still kills strays at the end of every step.
Every method is synchronous, cheap (one small write) and never raises for a jail that is
already gone.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)


class Freezer(Protocol):
    def attach(self, pids: Iterable[int]) -> None:
        """Put these (host) pids of the jail under the freezer."""
        ...

    def freeze(self) -> None: ...

    def thaw(self) -> None: ...

    def remove(self) -> None:
        """Thaw and delete what was created (the jail's processes are gone or going)."""
        ...


class CgroupV1Freezer:
    def __init__(self, root: str, parent: str, name: str) -> None:
        self.dir = Path(root) / "freezer" / parent / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self._state = str(self.dir / "freezer.state")
        self.frozen = False

    def attach(self, pids: Iterable[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, OSError):
                _write(str(self.dir / "cgroup.procs"), str(pid))

    def procs(self) -> list[int]:
        try:
            return [int(x) for x in (self.dir / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def freeze(self) -> None:
        if not self.frozen:
            with contextlib.suppress(OSError):
                _write(self._state, "FROZEN")
                self.frozen = True

    def thaw(self) -> None:
        if self.frozen:
            with contextlib.suppress(OSError):
                _write(self._state, "THAWED")
            self.frozen = False

    def remove(self) -> None:
        self.frozen = True  # force the write
        self.thaw()
        with contextlib.suppress(OSError):
            self.dir.rmdir()

    @property
    def exists(self) -> bool:
        return self.dir.exists()


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def v1_available(root: str) -> bool:
    return (Path(root) / "freezer" / "cgroup.procs").exists()


def make_freezer(root: str, parent: str, name: str, counters: object = None) -> Freezer | None:
    """The freezer for one jail, or None when this host offers none (logged once).

    `counters` is the jail's cgroup object (sandbox.cgroups): when it has a `freezer()`
    method (the cgroup v2 path: `cgroup.freeze` of the jail's group), that is used;
    otherwise the v1 freezer hierarchy under `root`, when there is one.
    """
    own = getattr(counters, "freezer", None)
    if callable(own):
        result = own()
        return result if result is not None else None
    if v1_available(root):
        try:
            return CgroupV1Freezer(root, parent, name)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            _warn_once(f"cannot create the freezer group ({e})")
            return None
    _warn_once("no cgroup freezer")
    return None


_warned: list[bool] = [False]


def _warn_once(why: str) -> None:
    if not _warned[0]:
        _warned[0] = True
        log.warning(
            "sandbox: %s: jails are not frozen between steps (strays are still killed at "
            "the end of every step)",
            why,
        )
