"""PID 1 of the cgroup v2 test VM, after the initramfs switched root to the host's files.

Contract: runs in the guest as PID 1 with the host's root filesystem (read-only 9p) as /,
guest tmpfs at /tmp and the harness's writable share at /tmp/out. It reads
/tmp/out/job.json ({"steps": [{"name", "scenario", "argv", "cwd", "env", "timeout_s"}]}),
runs each step as a child in the cgroup layout its scenario names, reaps every orphan
(it is init), writes /tmp/out/results.json ([{"name", "rc", "wall_s"}] plus guest facts)
and powers the VM off. Scenarios:
  root       the child stays in the guest's root cgroup (a host running the service as
             root at the top of the hierarchy);
  service    the child runs in /system.slice/distillery.service with memory/pids/cpu
             delegated (a systemd unit with Delegate=yes);
  container  the child runs in /kubepods/pod-a/ctr with the controllers delegated, in its own
             cgroup and mount namespace with cgroup2 mounted at /sys/fs/cgroup (what
             containerd gives a privileged container on a cgroup v2 node);
  container-ro  the same with /sys/fs/cgroup mounted read-only (what a container that is
             not privileged gets; the chart's capabilities mode).
Standard library only; nothing here runs on the host.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CG = Path("/sys/fs/cgroup")
OUT = Path("/tmp/out")
CONTROLLERS = "+memory +pids +cpu"

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
MNT_DETACH = 2
POWER_OFF = 0x4321FEDC

libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def make_path(rel: str) -> Path:
    """Create CG/rel with memory/pids/cpu enabled for children at every level above it."""
    group = CG
    for part in rel.strip("/").split("/"):
        (group / "cgroup.subtree_control").write_text(CONTROLLERS)
        group = group / part
        group.mkdir(exist_ok=True)
    return group


def enter_container(group: Path, read_only: bool = False) -> None:
    """In the child before exec: join `group`, then own cgroup + mount namespaces."""
    (group / "cgroup.procs").write_text("0")
    _check(libc.unshare(CLONE_NEWCGROUP | CLONE_NEWNS), "unshare")
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    _check(libc.umount2(b"/sys/fs/cgroup", MNT_DETACH), "umount /sys/fs/cgroup")
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC | (1 if read_only else 0)  # MS_RDONLY
    _check(libc.mount(b"cgroup2", b"/sys/fs/cgroup", b"cgroup2", flags, None), "mount cgroup2")


def run_step(step: dict[str, object]) -> dict[str, object]:
    scenario = str(step.get("scenario", "root"))
    preexec = None
    if scenario == "service":
        group = make_path("system.slice/distillery.service")

        def preexec() -> None:
            (group / "cgroup.procs").write_text("0")
    elif scenario in ("container", "container-ro"):
        ctr = make_path(f"kubepods/pod-a/{scenario}")

        def preexec() -> None:
            enter_container(ctr, read_only=scenario == "container-ro")
    elif scenario != "root":
        raise ValueError(f"unknown scenario {scenario!r}")
    env = {str(k): str(v) for k, v in dict(step.get("env") or {}).items()}  # type: ignore[call-overload]
    env["DISTILLERY_CGROUP2_VM"] = scenario
    argv = [str(a) for a in step["argv"]]  # type: ignore[attr-defined]
    timeout = float(step.get("timeout_s", 1800))  # type: ignore[arg-type]
    print(f"== cgroup2-vm step {step['name']} ({scenario}): {' '.join(argv)}", flush=True)
    t0 = time.monotonic()
    child = subprocess.Popen(
        argv, cwd=str(step.get("cwd", "/")), env=env, preexec_fn=preexec, start_new_session=True
    )
    rc: int | None = None
    while rc is None:
        if time.monotonic() - t0 > timeout:
            print(f"== step {step['name']} timed out after {timeout:.0f} s", flush=True)
            os.killpg(child.pid, signal.SIGKILL)
            timeout = float("inf")
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.05)
        elif pid == child.pid:
            rc = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    print(f"== cgroup2-vm step {step['name']} rc={rc} wall={wall:.1f}s", flush=True)
    return {"name": step["name"], "scenario": scenario, "rc": rc, "wall_s": round(wall, 1)}


def main() -> None:
    results: dict[str, object] = {
        "kernel": os.uname().release,
        "controllers": (CG / "cgroup.controllers").read_text().split(),
        "cpus": os.cpu_count(),
        "steps": [],
    }
    try:
        job = json.loads((OUT / "job.json").read_text())
        for step in job["steps"]:
            results["steps"].append(run_step(step))  # type: ignore[attr-defined]
            (OUT / "results.json").write_text(json.dumps(results, indent=1))
    except Exception as e:  # reported, then the VM still powers off
        results["error"] = repr(e)
        print(f"== cgroup2-vm guest error: {e!r}", file=sys.stderr, flush=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    os.sync()
    libc.reboot(POWER_OFF)


if __name__ == "__main__":
    main()
