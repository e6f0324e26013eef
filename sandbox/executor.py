"""SandboxExecutor: the agent's Executor backed by jailed, forkable Python workers.

    executor = SandboxExecutor(SandboxConfig())
    await executor.start()                      # optional: fill the worker pool now
    session = await executor.open_session({"web_search": web_search})
    result = await session.run("x = 6 * 7\nx")  # result.value_repr == "42"
    await session.close(); await executor.aclose()

Use one executor from one event loop. Construction checks the machine (nsjail present,
cgroups creatable, interpreter layout) and raises SandboxSetupError saying how to fix it.
"""

from __future__ import annotations

import asyncio
import keyword
import logging
import time
from collections.abc import Mapping
from typing import Any

from sandbox.cgroups import CgroupSetup, ensure_parents, prepare
from sandbox.config import SandboxConfig
from sandbox.errors import SandboxError
from sandbox.freezer import v1_available
from sandbox.jail import locate_nsjail
from sandbox.pool import WorkerPool
from sandbox.probe import probe_interpreter
from sandbox.process import WorkerProcess
from sandbox.results import ToolFn
from sandbox.session import CandidateStats, SandboxSession
from sandbox.uids import UidAllocator, allocator_for

log = logging.getLogger(__name__)

UNJAILED_WARNING = (
    "SANDBOX IS UNJAILED (SandboxConfig.unjailed=True): model-written code runs as a plain "
    "subprocess with this service's user, files and network. Development only - never "
    "serve untrusted traffic like this."
)


class SandboxExecutor:
    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config if config is not None else SandboxConfig()
        self.config.validate()
        self._nsjail: str | None = None
        self.cgroups: CgroupSetup | None = None
        self.uids: UidAllocator | None = None
        self.candidates = CandidateStats()  # where every session's candidates ran
        if self.config.unjailed:
            log.warning(UNJAILED_WARNING)
        else:
            self._nsjail = locate_nsjail(self.config.nsjail)
            self.cgroups = prepare(self.config)  # cgroup v1/v2 set up, or explicit rlimit-only
            if self.config.freeze_between_steps and self.cgroups.mode == "v1" and v1_available(
                self.config.cgroup_root
            ):  # the freezer groups' parent (stale groups of dead jails removed)
                ensure_parents(self.config.cgroup_root, self.config.cgroup_parent, ("freezer",))
            # per-jail uids (root only: without root nsjail maps every jail to our own uid)
            self.uids = allocator_for(self.config.uid_base, self.config.uid_count)
        modules = tuple(dict.fromkeys([*self.config.allowed_imports, *self.config.preload]))
        self.layout = probe_interpreter(self.config.python, modules)
        if self.layout.missing:
            log.warning(
                "sandbox: allowed modules not installed for %s: %s",
                self.layout.executable,
                ", ".join(self.layout.missing),
            )
        self.pool = WorkerPool(
            self._start_worker, self.config.pool_size, self.config.reuse_idle
        )
        self._sessions: set[SandboxSession] = set()
        self._closed = False

    @property
    def jailed(self) -> bool:
        return self._nsjail is not None

    def describe(self) -> str:
        """How the jails are limited, one line (readiness detail: stats()["limits"])."""
        if self.cgroups is None:
            return "UNJAILED (development only): no jail, no limits"
        return self.cgroups.describe()

    async def _start_worker(self) -> WorkerProcess:
        if self.config.unjailed:
            log.warning("starting an UNJAILED sandbox worker (development only)")
        return await WorkerProcess.start(self.config, self.layout, self._nsjail, self.uids)

    async def start(self) -> None:
        """Fill the worker pool (otherwise the first session starts its own worker)."""
        await self.pool.fill()

    async def open_session(self, tools: Mapping[str, ToolFn]) -> SandboxSession:
        if self._closed:
            raise RuntimeError("the sandbox executor is closed")
        for name, fn in tools.items():
            if not name.isidentifier() or keyword.iskeyword(name) or name == "final_answer":
                raise ValueError(f"invalid tool name {name!r}")
            if not callable(fn):
                raise TypeError(f"tool {name!r} is not callable")
        session = SandboxSession(
            self.pool.acquire,
            self.config,
            tools,
            self._sessions.discard,
            self.candidates,
            release=self.pool.give_back,
        )
        self._sessions.add(session)
        try:
            await session.start()
        except BaseException:
            await session.close()
            raise
        return session

    async def selfcheck(self, timeout_s: float = 30.0) -> float:
        """Run `1 + 1` in a fresh session (readiness probes): seconds taken, or SandboxError."""
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                session = await self.open_session({})
                try:
                    result = await session.run("1 + 1")
                finally:
                    await session.close()
        except TimeoutError as e:
            raise SandboxError(f"the sandbox self-check took longer than {timeout_s} s") from e
        if result.value_repr != "2":
            raise SandboxError(f"the sandbox self-check failed: {result.error or result}")
        return time.perf_counter() - t0

    async def ping(self) -> dict[str, Any]:
        """Readiness, cheaply: a pooled worker answers a ping; without one, `selfcheck()`.

        Returns stats() plus what was checked; raises SandboxError when the sandbox fails.
        """
        t0 = time.perf_counter()
        worker = self.pool.peek()
        if worker is not None and await worker.ping(self.config.control_timeout_s):
            check = "a pooled worker answered"
        else:
            await self.selfcheck()
            check = "a fresh session ran `1 + 1`"
        return {**self.stats(), "check": check, "latency_ms": (time.perf_counter() - t0) * 1e3}

    async def aclose(self) -> None:
        self._closed = True
        await self.pool.close()  # first: the sessions' workers are closed, not recycled
        for session in list(self._sessions):
            await session.close()

    async def __aenter__(self) -> SandboxExecutor:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def stats(self) -> dict[str, Any]:
        s = self.pool.stats
        return {
            "jailed": self.jailed,
            "limits": self.describe(),
            "pool_size": self.pool.size,
            "pool_ready": self.pool.ready,
            "pool_hits": s.hits,
            "pool_misses": s.misses,
            "pool_hit_rate": s.hit_rate,
            "workers_started": s.started,
            "jails_recycled": s.recycled,
            "worker_start_failures": s.start_failures,
            "open_sessions": len(self._sessions),
            "candidates_on_spares": self.candidates.on_spares,
            "candidates_forked": self.candidates.forked,
            "jail_uids_in_use": self.uids.in_use if self.uids is not None else 0,
        }
