"""Helpers of the sandbox suite (configs with short limits, leak tracking, health checks)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from sandbox.config import SandboxConfig
from sandbox.process import WorkerProcess
from sandbox.procs import is_alive
from sandbox.session import SandboxSession

# Attack tests open the allow-list up: it is a policy that determined code can bypass
# (test_allowlist_is_not_the_boundary shows how), so the jail must hold without it.
ATTACK_IMPORTS = [
    "os", "sys", "socket", "ctypes", "signal", "subprocess", "resource", "time", "struct",
    "threading", "errno", "stat", "pathlib", "shutil", "array",
]


def fast_config(**overrides: object) -> SandboxConfig:
    base = SandboxConfig(
        memory_mb=256,
        pids=24,
        step_timeout_s=3.0,
        cpu_s=2,
        file_size_mb=4,
        tmpfs_mb=16,
        output_max_bytes=64_000,
        pool_size=0,
        reuse_idle=0,  # a closed session's jail must be gone (leak checks); test_reuse reuses
        fork_width=4,
        start_timeout_s=60.0,
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def attack_config(**overrides: object) -> SandboxConfig:
    cfg = fast_config(**overrides)
    cfg.allowed_imports = [*cfg.allowed_imports, *ATTACK_IMPORTS]
    return cfg


class Tracker:
    """Remembers every host pid and cgroup a session's workers had, to prove they are gone."""

    def __init__(self) -> None:
        self.pids: set[int] = set()
        self.cgroup_dirs: set[Path] = set()

    def watch(self, session: SandboxSession) -> None:
        w = session.worker
        if w is None:
            return
        self.pids.add(w.popen.pid)
        self.pids.update(w.process_ids())
        if w.cgroups is not None:
            self.cgroup_dirs.update(w.cgroups.dirs.values())

    def leftovers(self) -> list[str]:
        alive = [f"pid {p}" for p in sorted(self.pids) if is_alive(p)]
        dirs = [str(d) for d in sorted(self.cgroup_dirs) if d.exists()]
        return alive + dirs



async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(0.02)
    return cond()


def at_rest(worker: WorkerProcess) -> bool:
    """Only init, the state process and the parked spares (the next step's candidates,
    announced by the state, see WorkerProcess.take_spares) are left in the jail."""
    pids = set(worker.process_ids())
    spares = {f.host_pid for f in worker.spare_forks()}
    return len(pids) == 2 + len(spares) and spares <= pids


async def idle_cpu_s(worker: WorkerProcess, seconds: float = 1.5) -> float:
    """CPU seconds the jail uses while this waits `seconds` (clock ticks of 0.01 s)."""
    cpu0 = worker.cpu_seconds()
    await asyncio.sleep(seconds)
    return worker.cpu_seconds() - cpu0


async def assert_healthy(session: SandboxSession, tracker: Tracker | None = None) -> None:
    """The next step works and only init + the state process (+ its parked spares) are
    left in the jail."""
    if tracker is not None:
        tracker.watch(session)
    r = await session.run("__probe = 40 + 2\n__probe")
    assert r.error is None, r.error
    assert r.value_repr == "42"
    worker = session.worker
    assert worker is not None and not worker.dead
    ok = await wait_until(lambda: at_rest(worker))
    assert ok, f"processes left in the jail: {worker.process_ids()}"
