"""cgroup v2 plumbing for nsjail: a delegated subtree for the jails, and one jail's counters.

Contract:
- `own_cgroup(root)` is the directory of this process's cgroup under the cgroup2 mount
  `root` (from /proc/self/cgroup's `0::<path>` line). In a container with its own cgroup
  namespace that is `root` itself; on a host it is e.g. `root/system.slice/x.service`.
- `delegate(root, parent, controllers)` prepares, and only ever writes inside, that cgroup:

      <own>/                      subtree_control += memory pids [cpu]
        <leaf>/                   every process that was in <own> (this service) moves here,
                                  because a non-root cgroup with processes cannot enable
                                  controllers for children ("no internal processes" rule)
        <parent>/                 subtree_control += the same; nsjail's --cgroupv2_mount
          NSJAIL.<pid>/           one per jail, created, limited and removed by nsjail

  The root cgroup of a hierarchy (no cgroup.type file) is exempt from the rule, so nothing
  moves there. Stale jail groups (their process is gone) are removed. Every failure is a
  SandboxSetupError naming what is missing and the ways out; nothing is left half-done
  silently, and it never writes above <own> (that belongs to the host/container runtime).
- nsjail itself then finds the controllers already enabled in <parent>/cgroup.subtree_control
  and neither writes there nor moves itself (which it would otherwise try).
- `JailCgroupsV2` reads one jail's counters: memory.events `oom_kill`, pids.events `max`,
  memory.current / memory.peak, cgroup.procs; `cleanup()` kills what is left (cgroup.kill
  when the kernel has it) and removes the group. `freezer()` is the jail's between-steps
  freezer (sandbox.freezer's interface): `cgroup.freeze` of the jail's own group, which
  already holds every process of the jail.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from sandbox.errors import SandboxSetupError

log = logging.getLogger(__name__)

SERVICE_LEAF = "distillery-service"
"""Leaf cgroup (next to the jails' parent) that this service's processes move into."""
PROC_SELF_CGROUP = "/proc/self/cgroup"
INIT_CGROUP_NS_INO = 0xEFFFFFFB
"""Inode of the initial cgroup namespace (the kernel's PROC_CGROUP_INIT_INO): the host's."""


def in_container_cgroup_ns() -> bool:
    """True in a cgroup namespace other than the host's (a container's own)."""
    try:
        return os.stat("/proc/self/ns/cgroup").st_ino != INIT_CGROUP_NS_INO
    except OSError:
        return False

WAYS_OUT = (
    "Ways out: (1) cgroup v2: run the service as root in a cgroup of its own whose parent "
    "delegates the controllers - a container with its own cgroup namespace and a writable "
    "/sys/fs/cgroup (Kubernetes: a privileged container, or the chart's capabilities mode "
    "with SYS_ADMIN; containerd/CRI-O create the pod's cgroup namespace on v2 nodes), or a "
    "systemd unit with Delegate=yes; (2) cgroup v1: writable memory/pids/cpu hierarchies "
    "(`mkdir -p /sys/fs/cgroup/{{memory,pids,cpu}}/{parent}`); (3) explicitly accept weaker "
    "limits with SandboxConfig.cgroup_mode='rlimit-only' (DISTILLERY_SANDBOX_CGROUP_MODE="
    "rlimit-only: per-process rlimits, no per-jail memory/pids limits)."
)


def self_cgroup_path(proc_file: str | None = None) -> str:
    """This process's cgroup v2 path (`/` in a container's own cgroup namespace)."""
    proc_file = proc_file or PROC_SELF_CGROUP
    try:
        text = Path(proc_file).read_text()
    except OSError as e:
        raise SandboxSetupError(f"cannot read {proc_file}: {e}") from e
    for line in text.splitlines():
        hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hier == "0" and controllers == "":
            return path or "/"
    raise SandboxSetupError(
        f"{proc_file} has no cgroup v2 entry (`0::<path>`): the kernel does not put this "
        "process in a cgroup v2 hierarchy"
    )


def own_cgroup(root: Path, proc_file: str | None = None) -> Path:
    """This process's cgroup directory; once moved into the service leaf, its parent (the
    cgroup delegated to the service), so that preparing twice does not nest leaves."""
    rel = self_cgroup_path(proc_file)
    parts = [p for p in rel.split("/") if p]
    if ".." in parts:
        raise SandboxSetupError(
            f"this process's cgroup ({rel}) lies outside its cgroup namespace, so it cannot "
            "be managed from here. Start the service inside the container's cgroup namespace."
        )
    if parts and parts[-1] == SERVICE_LEAF:
        parts.pop()
    own = root.joinpath(*parts)
    if not (own / "cgroup.procs").exists():
        raise SandboxSetupError(
            f"this process's cgroup {rel} is not visible under {root}: the cgroup2 mount "
            "belongs to another cgroup namespace. Use the container's own /sys/fs/cgroup "
            "(containerd/CRI-O give each container its own cgroup namespace on cgroup v2 "
            f"nodes; Docker: --cgroupns=private). {WAYS_OUT.format(parent='NSJAIL')}"
        )
    return own


def check_view(root: Path, proc_file: str | None = None) -> None:
    """This process must be listed where /proc/self/cgroup says it is: otherwise `root` shows
    another cgroup namespace (a hostPath of the node's hierarchy) and jails made there would
    escape this container's cgroup."""
    parts = [p for p in self_cgroup_path(proc_file).split("/") if p]
    mine = root.joinpath(*parts)
    if os.getpid() not in _pids(mine):
        raise SandboxSetupError(
            f"this process is not listed in {mine}/cgroup.procs: the cgroup2 mount at {root} "
            "is not this process's view of its cgroup namespace (e.g. the node's "
            "/sys/fs/cgroup mounted into the container as a hostPath: jails made there would "
            "escape the pod's cgroup). Use the container's own /sys/fs/cgroup (chart: "
            "sandbox.hostCgroupfs=false on cgroup v2 nodes). " + WAYS_OUT.format(parent="NSJAIL")
        )


def mount_own_view(root: Path) -> bool:
    """Mount this cgroup namespace's cgroup2 view read-write over a read-only `root`.

    A container that is not privileged gets /sys/fs/cgroup read-only; with CAP_SYS_ADMIN (the
    chart's capabilities mode) it may mount a fresh cgroup2 there, which shows its own
    cgroup namespace. True when mounted; False when `root` was writable already. Raises
    SandboxSetupError when the mount is refused (no SYS_ADMIN, an AppArmor/seccomp profile).
    """
    if not os.statvfs(root).f_flag & os.ST_RDONLY:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    target = str(root).encode()
    flags = 2 | 4 | 8  # MS_NOSUID | MS_NODEV | MS_NOEXEC
    # the same superblock cannot be mounted twice on one mount point (EBUSY): make this mount
    # read-write (MS_REMOUNT | MS_BIND changes only its per-mount flags) ...
    ok = libc.mount(None, target, None, 32 | 4096 | flags, None) == 0
    err = ctypes.get_errno()
    if not ok:  # ... or replace it by a fresh mount of this namespace's view
        ok = (libc.umount2(target, 2) == 0  # MNT_DETACH
              and libc.mount(b"cgroup2", target, b"cgroup2", flags, None) == 0)
        err = ctypes.get_errno()
    if not ok:
        raise SandboxSetupError(
            f"{root} is a read-only cgroup2 mount and making this container's own cgroup2 view "
            f"writable failed: {os.strerror(err)} (needs CAP_SYS_ADMIN and a seccomp/"
            "AppArmor profile that allows mount; the chart's capabilities mode sets both). "
            + WAYS_OUT.format(parent="NSJAIL")
        )
    log.info("sandbox: made this container's cgroup2 view at %s read-write", root)
    return True


def _words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _pids(path: Path) -> list[int]:
    return read_pids(path / "cgroup.procs")


@dataclass(frozen=True)
class Delegation:
    """What `delegate` set up."""

    own: Path
    """This process's cgroup at setup time (the top of what the sandbox manages)."""
    jail_parent: Path
    """Parent of the jails' groups: nsjail's --cgroupv2_mount."""
    leaf: Path | None
    """Where this service's processes were moved (None at a hierarchy's root cgroup)."""
    controllers: tuple[str, ...]
    swap: bool
    """memory.swap.max exists (swap accounting on): jails get memory.swap.max=0."""


def delegate(
    root: str,
    parent: str,
    controllers: tuple[str, ...],
    proc_file: str | None = None,
) -> Delegation:
    base = Path(root)
    hint = WAYS_OUT.format(parent=parent)
    if "/" in parent or parent in ("", ".", "..") or parent == SERVICE_LEAF:
        raise SandboxSetupError(f"cgroup_parent {parent!r} must be one plain directory name")
    own = own_cgroup(base, proc_file)
    at_ns_root = own == base and self_cgroup_path(proc_file) in ("/", f"/{SERVICE_LEAF}")
    if at_ns_root and in_container_cgroup_ns():
        mount_own_view(base)  # a container's own view: make it writable (never the host's)
    available = _words(own / "cgroup.controllers")
    missing = [c for c in controllers if c not in available]
    if missing:
        raise SandboxSetupError(
            f"cgroup v2 is half-configured for the sandbox: the controller(s) "
            f"{' '.join(missing)} are not delegated to this process's cgroup {own} (its "
            f"cgroup.controllers lists: {' '.join(available) or 'nothing'}). The parent "
            "cgroup must enable them in its cgroup.subtree_control (the container runtime "
            f"or systemd does that; systemd: Delegate=yes). {hint}"
        )
    check_view(base, proc_file)
    subtree = own / "cgroup.subtree_control"
    if not os.access(subtree, os.W_OK) or not os.access(own, os.W_OK):
        raise SandboxSetupError(
            f"cgroup v2 at {own} is not writable by this process (uid {os.geteuid()}; a "
            "container gets /sys/fs/cgroup read-only unless it is privileged or has "
            f"SYS_ADMIN with a writable cgroupfs). {hint}"
        )
    is_root = not (own / "cgroup.type").exists()
    leaf: Path | None = None
    if not is_root:
        leaf = own / SERVICE_LEAF
        _mkdir(leaf, hint)
        moved = _move_all(own, leaf)
        if moved:
            log.info("sandbox: moved %d process(es) of %s into %s (cgroup v2 requires it to "
                     "delegate controllers to the jails)", len(moved), own, leaf)
    _enable(own, controllers, hint)
    jail_parent = own / parent
    _mkdir(jail_parent, hint)
    if _pids(jail_parent):
        raise SandboxSetupError(
            f"{jail_parent} has processes of its own ({_pids(jail_parent)}), so it cannot hold "
            f"the jails' groups; pick another SandboxConfig.cgroup_parent. {hint}"
        )
    _enable(jail_parent, controllers, hint)
    remove_stale(jail_parent)
    swap = (jail_parent / "memory.swap.max").exists()
    return Delegation(own, jail_parent, leaf, tuple(controllers), swap)


def _mkdir(path: Path, hint: str) -> None:
    try:
        path.mkdir(exist_ok=True)
    except OSError as e:
        raise SandboxSetupError(f"cannot create cgroup {path}: {e.strerror or e}. {hint}") from e


def _move_all(own: Path, leaf: Path) -> list[int]:
    """Move every process of `own` into `leaf` (they may fork meanwhile: a few rounds)."""
    moved: list[int] = []
    for _ in range(10):
        pids = _pids(own)
        if not pids:
            return moved
        for pid in pids:
            try:
                _write(leaf / "cgroup.procs", str(pid))
                moved.append(pid)
            except OSError as e:
                if e.errno == errno.ESRCH:  # exited meanwhile
                    continue
                raise SandboxSetupError(
                    f"cannot move process {pid} from {own} into {leaf}: {e.strerror or e}. "
                    + WAYS_OUT.format(parent="NSJAIL")
                ) from e
    left = _pids(own)
    if left:
        raise SandboxSetupError(f"processes keep appearing in {own} ({left}); cannot empty it")
    return moved


def _enable(group: Path, controllers: tuple[str, ...], hint: str) -> None:
    enabled = _words(group / "cgroup.subtree_control")
    todo = [c for c in controllers if c not in enabled]
    if not todo:
        return
    try:
        for attempt in range(20):
            try:
                _write(group / "cgroup.subtree_control", " ".join(f"+{c}" for c in todo))
                break
            except OSError as e:
                # right after moving processes out the kernel may still say EBUSY for a
                # moment (crun retries too); processes really left in it are reported below
                if e.errno != errno.EBUSY or _pids(group) or attempt == 19:
                    raise
                time.sleep(0.05)
    except OSError as e:
        if e.errno == errno.EBUSY:
            why = (
                f"{group} still has processes ({_pids(group)}) and cgroup v2 forbids "
                "enabling controllers for children of a cgroup with processes"
            )
        elif e.errno in (errno.ENOENT, errno.EINVAL):
            why = f"{group} cannot enable {' '.join(todo)} (not available to it)"
        else:
            why = f"writing {group}/cgroup.subtree_control failed: {e.strerror or e}"
        raise SandboxSetupError(f"cgroup v2 delegation failed: {why}. {hint}") from e
    now = _words(group / "cgroup.subtree_control")
    still = [c for c in todo if c not in now]
    if still:
        raise SandboxSetupError(
            f"cgroup v2 delegation failed: {group}/cgroup.subtree_control does not list "
            f"{' '.join(still)} after enabling them. {hint}"
        )


def remove_stale(parent_dir: Path) -> None:
    """rmdir the groups of jails whose process is gone (NSJAIL.<pid>, and NSJAIL_SELF.<pid>
    which nsjail makes when it has to move itself)."""
    for group in [*parent_dir.glob("NSJAIL.*"), *parent_dir.glob("NSJAIL_SELF.*")]:
        pid = group.name.partition(".")[2]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            with contextlib.suppress(OSError):  # not empty, or raced: leave it
                group.rmdir()


def read_small(path: str | Path) -> bytes:
    """A small cgroup/proc file in one read (these are read on every step: no file object,
    no decoding)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 65536)
    finally:
        os.close(fd)


def _read_kv(path: str | Path, key: str) -> int:
    want = key.encode()
    try:
        for line in read_small(path).splitlines():
            k, _, v = line.partition(b" ")
            if k == want:
                return int(v)
    except (OSError, ValueError):
        pass
    return 0


def _read_int(path: str | Path) -> int:
    try:
        return int(read_small(path).split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def read_pids(path: str | Path) -> list[int]:
    """The pids in a cgroup.procs file ([] when it is gone)."""
    try:
        return [int(w) for w in read_small(path).split()]
    except (OSError, ValueError):
        return []


class JailCgroupsV2:
    """The one cgroup v2 group nsjail made for a jail (named after the jailed init's pid)."""

    def __init__(self, jail_parent: Path, init_pid: int) -> None:
        self.dir = jail_parent / f"NSJAIL.{init_pid}"
        # one directory serves every controller (the v1 class has one per controller)
        self.dirs = {"memory": self.dir, "pids": self.dir, "cpu": self.dir}
        self._oom = str(self.dir / "memory.events")
        self._pids_events = str(self.dir / "pids.events")
        self._procs = str(self.dir / "cgroup.procs")

    def oom_kills(self) -> int:
        return _read_kv(self._oom, "oom_kill")

    def pids_limit_hits(self) -> int:
        return _read_kv(self._pids_events, "max")

    def memory_usage(self) -> int:
        return _read_int(self.dir / "memory.current")

    def memory_peak(self) -> int:
        # memory.peak exists since Linux 5.19; before, the current usage is the best known
        peak = self.dir / "memory.peak"
        return _read_int(peak) if peak.exists() else self.memory_usage()

    def procs(self) -> list[int]:
        """Host pids of every process in the jail (zombies excluded)."""
        return read_pids(self._procs)

    def freezer(self) -> CgroupV2Freezer | None:
        """The jail's freezer (None on a kernel without cgroup.freeze, before Linux 5.2)."""
        return CgroupV2Freezer(self.dir) if (self.dir / "cgroup.freeze").exists() else None

    def cleanup(self) -> bool:
        """Kill anything left (nsjail normally does) and remove the group; True when gone."""
        if not self.dir.exists():
            return True
        kill = self.dir / "cgroup.kill"
        if kill.exists():
            with contextlib.suppress(OSError):
                _write(kill, "1")
        for pid in self.procs():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self.dir.rmdir()
        return not self.dir.exists()


class CgroupV2Freezer:
    """Freezes one jail through its group's cgroup.freeze (sandbox.freezer.Freezer)."""

    def __init__(self, group: Path) -> None:
        self.dir = group
        self.frozen = False

    def attach(self, pids: object) -> None:
        """Nothing to do: nsjail put the jail's processes in this group already."""

    def freeze(self) -> None:
        if not self.frozen:
            with contextlib.suppress(OSError):
                _write(self.dir / "cgroup.freeze", "1")
                self.frozen = True

    def thaw(self) -> None:
        if self.frozen:
            with contextlib.suppress(OSError):
                _write(self.dir / "cgroup.freeze", "0")
            self.frozen = False

    def remove(self) -> None:
        """Thaw (the group itself goes with the jail: nsjail or cleanup() removes it)."""
        self.frozen = True  # force the write
        self.thaw()

    def is_frozen(self) -> bool:
        """The kernel finished freezing every process of the group (cgroup.events)."""
        return _read_kv(self.dir / "cgroup.events", "frozen") == 1
