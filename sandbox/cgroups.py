"""Which resource limits the jails get: cgroup v1, cgroup v2, or (explicitly) rlimits only.

Contract:
- `detect(root)` names the hierarchy mounted at `root`: "v2" (a cgroup2 mount: the root has
  cgroup.controllers), "v1" (memory/ or pids/ are v1 hierarchies; a hybrid host with a
  cgroup2 mount at unified/ counts as v1, since its controllers live there), or "none".
- `prepare(config)` sets the machine up for `config.cgroup_mode` and returns a CgroupSetup:
    "auto"        v2 when detected, else v1 when detected, else SandboxSetupError. Never
                  picks rlimit-only: a host without usable cgroups must say so explicitly.
    "v1" / "v2"   that hierarchy or SandboxSetupError.
    "rlimit-only" no cgroups at all; what that no longer guarantees is logged as a warning
                  and returned by `describe()` (the executor's readiness detail shows it).
  v1 creates `<root>/<controller>/<parent>`; v2 delegates a subtree (sandbox.cgroup_v2).
  Both remove stale jail groups. Errors name what is missing and the ways out.
- `nsjail_args(config)` is the cgroup/rlimit part of nsjail's command line for the setup,
  `jail_cgroups(config, init_pid)` the counters of one jail (None under rlimit-only); both
  use the setup `prepare` made (and make it when nothing did yet).

nsjail puts each jail in `NSJAIL.<pid of the jailed init>`: on v1 under each controller's
`<parent>`, on v2 in the delegated parent (--use_cgroupv2 --cgroupv2_mount). The counters
tell the host why a process died: v1 memory.oom_control `oom_kill` and pids.events `max`;
v2 memory.events `oom_kill` and pids.events `max`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from sandbox import cgroup_v2
from sandbox.cgroup_v2 import _read_int, _read_kv, read_pids  # the same files on v1
from sandbox.errors import SandboxSetupError

if TYPE_CHECKING:
    from sandbox.config import SandboxConfig

log = logging.getLogger(__name__)

CONTROLLERS = ("memory", "pids", "cpu")
MODES = ("auto", "v1", "v2", "rlimit-only")
Mode = Literal["v1", "v2", "rlimit-only"]

FIX_HINT = (
    "The jailed sandbox needs writable cgroup v1 controllers (memory, pids, cpu) at {root}. "
    "Fix: run the service as root with /sys/fs/cgroup mounted read-write (in Kubernetes: a "
    "privileged container or CAP_SYS_ADMIN with a writable cgroupfs - see README, Sandbox), or "
    "create the groups beforehand: `mkdir -p {root}/{{memory,pids,cpu}}/{parent}` with "
    "write access for the service's user. On a cgroup v2 host use cgroup_mode auto or v2. "
    "For development only, SandboxConfig(unjailed=True) runs code without any jail."
)

RLIMIT_ONLY_WARNING = (
    "SANDBOX LIMITS ARE RLIMIT-ONLY (cgroup_mode=rlimit-only): no cgroup limits. Still "
    "enforced: namespaces, seccomp, CPU time, file size and descriptors per process, the "
    "wall-clock timeout. No longer guaranteed: memory is RLIMIT_AS={memory_mb} MB of address "
    "space per process, not per jail (each candidate and thread-heavy code can reach it; "
    "together they can exceed it); processes are RLIMIT_NPROC={pids} counted per user id "
    "across every jail of the machine, not per jail; no CPU throttle (cpu_ms_per_sec is "
    "ignored); memory and process-limit failures are reported from what the code sees "
    "(MemoryError, a failed fork), not from kernel counters; memory stats are RSS."
)


def detect(root: str) -> Literal["v1", "v2", "none"]:
    base = Path(root)
    if (base / "cgroup.controllers").exists():
        return "v2"
    if any((base / ctl / "cgroup.procs").exists() for ctl in ("memory", "pids")):
        return "v1"
    return "none"


class JailCounters(Protocol):
    """One jail's cgroup counters (v1: a group per controller; v2: one group)."""

    dirs: dict[str, Path]

    def oom_kills(self) -> int: ...
    def pids_limit_hits(self) -> int: ...
    def memory_usage(self) -> int: ...
    def memory_peak(self) -> int: ...
    def procs(self) -> list[int]: ...
    def cleanup(self) -> bool: ...


@dataclass(frozen=True)
class CgroupSetup:
    mode: Mode
    root: str
    parent: str
    controllers: tuple[str, ...]
    swap: bool = False
    """The swap limit file exists (v1 memsw / v2 memory.swap.max): jails get no swap."""
    delegation: cgroup_v2.Delegation | None = None

    def nsjail_args(self, config: SandboxConfig) -> list[str]:
        mem = str(config.memory_mb << 20)
        if self.mode == "rlimit-only":
            return ["--rlimit_as", str(config.memory_mb), "--rlimit_nproc", str(config.pids)]
        if self.mode == "v2":
            assert self.delegation is not None
            args = ["--use_cgroupv2", "--cgroupv2_mount", str(self.delegation.jail_parent)]
            args += ["--cgroup_mem_max", mem, "--cgroup_pids_max", str(config.pids)]
            if self.swap:  # no swapping past the limit
                args += ["--cgroup_mem_swap_max", "0"]
            if config.cpu_ms_per_sec:
                args += ["--cgroup_cpu_ms_per_sec", str(config.cpu_ms_per_sec)]
            return args
        cg, root = self.parent, self.root
        args = ["--cgroup_mem_max", mem, "--cgroup_mem_parent", cg]
        if self.swap:  # no swapping past the limit
            args += ["--cgroup_mem_memsw_max", mem]
        args += ["--cgroup_mem_mount", f"{root}/memory"]
        args += ["--cgroup_pids_max", str(config.pids), "--cgroup_pids_parent", cg]
        args += ["--cgroup_pids_mount", f"{root}/pids"]
        if config.cpu_ms_per_sec:
            args += ["--cgroup_cpu_ms_per_sec", str(config.cpu_ms_per_sec)]
            args += ["--cgroup_cpu_parent", cg, "--cgroup_cpu_mount", f"{root}/cpu"]
        return args

    def jail(self, init_pid: int) -> JailCounters | None:
        if self.mode == "rlimit-only":
            return None
        if self.mode == "v2":
            assert self.delegation is not None
            return cgroup_v2.JailCgroupsV2(self.delegation.jail_parent, init_pid)
        return JailCgroups(self.root, self.parent, init_pid)

    def describe(self) -> str:
        """One line for logs and readiness: the mode, where the jails' groups are, what
        is limited (rlimit-only: what is no longer guaranteed)."""
        ctl = " ".join(self.controllers)
        if self.mode == "v2":
            assert self.delegation is not None
            d = self.delegation
            moved = f"; service processes in {d.leaf}" if d.leaf else ""
            return (
                f"cgroup v2: per-jail {ctl} limits under {d.jail_parent}{moved}"
                f"{'; swap 0' if self.swap else ''}"
            )
        if self.mode == "v1":
            where = f"{self.root}/{{{','.join(self.controllers)}}}/{self.parent}"
            swap = "; swap 0 (memsw)" if self.swap else ""
            return f"cgroup v1: per-jail {ctl} limits under {where}{swap}"
        return (
            "rlimit-only (explicit): no per-jail memory/pids limits, no CPU throttle; memory is "
            "RLIMIT_AS per process, processes are RLIMIT_NPROC per user across all jails"
        )


_lock = threading.Lock()
_setups: dict[tuple[str, str, str, tuple[str, ...]], CgroupSetup] = {}


def controllers_for(config: SandboxConfig) -> tuple[str, ...]:
    return ("memory", "pids") + (("cpu",) if config.cpu_ms_per_sec else ())


def prepare(config: SandboxConfig) -> CgroupSetup:
    """Set the machine up for config.cgroup_mode (see the module docstring); SandboxSetupError
    when it cannot be. Idempotent: each call redoes the checks and removes stale groups."""
    mode = getattr(config, "cgroup_mode", "auto")
    if mode not in MODES:
        raise SandboxSetupError(f"cgroup_mode must be one of {', '.join(MODES)}, not {mode!r}")
    root, parent = config.cgroup_root, config.cgroup_parent
    controllers = controllers_for(config)
    if mode == "auto":
        found = detect(root)
        if found == "none":
            raise SandboxSetupError(
                f"no usable cgroup hierarchy at {root}: it is not a cgroup v1 hierarchy (no "
                f"{root}/memory/cgroup.procs) and not a cgroup v2 one (no "
                f"{root}/cgroup.controllers), so the sandbox cannot limit a jail's memory and "
                f"processes. {cgroup_v2.WAYS_OUT.format(parent=parent)}"
            )
        mode = found
    setup: CgroupSetup
    if mode == "rlimit-only":
        setup = CgroupSetup("rlimit-only", root, parent, ())
        log.warning(RLIMIT_ONLY_WARNING.format(memory_mb=config.memory_mb, pids=config.pids))
    elif mode == "v2":
        if detect(root) != "v2":
            raise SandboxSetupError(
                f"cgroup_mode=v2 but {root} is not a cgroup v2 mount (no cgroup.controllers; "
                f"it looks like {detect(root)}). {cgroup_v2.WAYS_OUT.format(parent=parent)}"
            )
        d = cgroup_v2.delegate(root, parent, controllers)
        setup = CgroupSetup("v2", root, parent, controllers, d.swap, d)
    else:
        ensure_parents(root, parent, controllers)
        memsw = Path(root) / "memory" / parent / "memory.memsw.limit_in_bytes"
        setup = CgroupSetup("v1", root, parent, controllers, memsw.exists())
    with _lock:
        _setups[_key(config)] = setup
    log.info("sandbox limits: %s", setup.describe())
    return setup


def _key(config: SandboxConfig) -> tuple[str, str, str, tuple[str, ...]]:
    mode = getattr(config, "cgroup_mode", "auto")
    return (config.cgroup_root, config.cgroup_parent, mode, controllers_for(config))


def current(config: SandboxConfig) -> CgroupSetup:
    """The setup `prepare` made for this config (made now when nothing did yet)."""
    with _lock:
        setup = _setups.get(_key(config))
    return setup if setup is not None else prepare(config)


def nsjail_args(config: SandboxConfig) -> list[str]:
    """The cgroup (or rlimit-only) options of nsjail's command line for `config`."""
    return current(config).nsjail_args(config)


def jail_cgroups(config: SandboxConfig, init_pid: int) -> JailCounters | None:
    """The counters of the jail whose init has host pid `init_pid` (None: rlimit-only)."""
    return current(config).jail(init_pid)


# --- cgroup v1 --------------------------------------------------------------------------


def ensure_parents(root: str, parent: str, controllers: tuple[str, ...] = CONTROLLERS) -> None:
    """Create `<root>/<controller>/<parent>` for each controller; clear error when impossible."""
    hint = FIX_HINT.format(root=root, parent=parent)
    for ctl in controllers:
        base = Path(root) / ctl
        if not (base / "cgroup.procs").exists():
            v2 = (Path(root) / "cgroup.controllers").exists()
            why = f"{base} is not a cgroup v1 hierarchy" + (
                " (this host uses cgroup v2: set cgroup_mode to auto or v2)" if v2 else ""
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
    cgroup_v2.remove_stale(parent_dir)


class JailCgroups:
    """The cgroup v1 groups nsjail created for one jail (named after the jailed init's pid)."""

    def __init__(self, root: str, parent: str, init_pid: int) -> None:
        name = f"NSJAIL.{init_pid}"
        self.dirs = {ctl: Path(root) / ctl / parent / name for ctl in CONTROLLERS}
        self._oom = str(self.dirs["memory"] / "memory.oom_control")
        self._pids_events = str(self.dirs["pids"] / "pids.events")
        self._procs = str(self.dirs["pids"] / "cgroup.procs")

    def oom_kills(self) -> int:
        return _read_kv(self._oom, "oom_kill")

    def pids_limit_hits(self) -> int:
        return _read_kv(self._pids_events, "max")

    def memory_usage(self) -> int:
        return _read_int(self.dirs["memory"] / "memory.usage_in_bytes")

    def memory_peak(self) -> int:
        return _read_int(self.dirs["memory"] / "memory.max_usage_in_bytes")

    def procs(self) -> list[int]:
        """Host pids of every process in the jail (zombies excluded)."""
        return read_pids(self._procs)

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
