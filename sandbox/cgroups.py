"""cgroup v1 plumbing for nsjail: the parent groups it needs, and one jail's counters.

nsjail puts each jail in `<controller>/<parent>/NSJAIL.<pid of the jailed init>` and sets
the limits there; it only needs the parent groups to exist. The counters tell the host
why a process died (memory.oom_control's oom_kill, pids.events' max).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from pathlib import Path

from sandbox.errors import SandboxSetupError

CONTROLLERS = ("memory", "pids", "cpu")

FIX_HINT = (
    "The jailed sandbox needs writable cgroup v1 controllers (memory, pids, cpu) at {root}. "
    "Fix: run the service as root with /sys/fs/cgroup mounted read-write (in Kubernetes: a "
    "privileged container or CAP_SYS_ADMIN with a writable cgroupfs - see README, Sandbox), or "
    "create the groups beforehand: `mkdir -p {root}/{{memory,pids,cpu}}/{parent}` with "
    "write access for the service's user. For development only, SandboxConfig(unjailed=True) "
    "runs code without any jail."
)


def ensure_parents(root: str, parent: str, controllers: tuple[str, ...] = CONTROLLERS) -> None:
    """Create `<root>/<controller>/<parent>` for each controller; clear error when impossible."""
    hint = FIX_HINT.format(root=root, parent=parent)
    for ctl in controllers:
        base = Path(root) / ctl
        if not (base / "cgroup.procs").exists():
            v2 = (Path(root) / "cgroup.controllers").exists()
            why = f"{base} is not a cgroup v1 hierarchy" + (
                " (this host uses cgroup v2 only, which is not supported yet)" if v2 else ""
            )
            raise SandboxSetupError(f"{why}. {hint}")
        target = base / parent
        try:
            target.mkdir(exist_ok=True)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                reason = e.strerror or str(e)
                raise SandboxSetupError(f"cannot create cgroup {target}: {reason}. {hint}") from e
            raise SandboxSetupError(f"cannot create cgroup {target}: {e}. {hint}") from e
        if not os.access(target, os.W_OK):
            raise SandboxSetupError(f"cgroup {target} is not writable. {hint}")
        remove_stale(target)


def remove_stale(parent_dir: Path) -> None:
    """rmdir the empty groups of jails whose process is gone (nsjail leaves them behind when
    it is SIGKILLed or fails to start the jail)."""
    for group in parent_dir.glob("NSJAIL.*"):
        pid = group.name.partition(".")[2]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            with contextlib.suppress(OSError):  # not empty, or raced: leave it
                group.rmdir()


def _read_kv(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == key:
                return int(v)
    except (OSError, ValueError):
        pass
    return 0


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


class JailCgroups:
    """The cgroups nsjail created for one jail (named after the jailed init's host pid)."""

    def __init__(self, root: str, parent: str, init_pid: int) -> None:
        name = f"NSJAIL.{init_pid}"
        self.dirs = {ctl: Path(root) / ctl / parent / name for ctl in CONTROLLERS}

    def oom_kills(self) -> int:
        return _read_kv(self.dirs["memory"] / "memory.oom_control", "oom_kill")

    def pids_limit_hits(self) -> int:
        return _read_kv(self.dirs["pids"] / "pids.events", "max")

    def memory_usage(self) -> int:
        return _read_int(self.dirs["memory"] / "memory.usage_in_bytes")

    def memory_peak(self) -> int:
        return _read_int(self.dirs["memory"] / "memory.max_usage_in_bytes")

    def procs(self) -> list[int]:
        """Host pids of every process in the jail (zombies excluded)."""
        try:
            return [int(x) for x in (self.dirs["pids"] / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def cleanup(self) -> bool:
        """Kill anything left (nsjail normally does this) and remove the groups.

        Returns True when every group is gone; call again a little later otherwise.
        """
        for pid in self.procs():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for d in self.dirs.values():
            with contextlib.suppress(FileNotFoundError, OSError):
                d.rmdir()
        return not any(d.exists() for d in self.dirs.values())
