"""Spares: the next step's candidates, forked while the model generates.

When a step ends the worker asks its state process for as many forks as the step had
candidates (`SandboxConfig.spare_candidates` at most, only into memory the jail can
spare); each passes its gate, warms itself up and waits, frozen with the jail, for its
code. The next step hands its code to them (`run`) instead of forking then. Whenever the
state they were forked from changes or goes (a promotion, a discard, new tools, a
scrubbed jail), they are dropped: killed as soon as they are announced.

The worker owns the processes (`spawn`, `kill`) and the jail's memory figures; this
module owns which forks are spares and their bookkeeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from sandbox.config import SandboxConfig
from sandbox.fork import Fork
from sandbox.freezer import Freezer

SPARE_DELAY_S = 0.002
"""Spares are forked when no next step came this long after a step (a model generates for
far longer; a caller that steps back to back gets none)."""
SPARE_BYTES = 4 << 20
"""Memory budgeted per spare (its warm-up copies 1-2 MiB of the state's pages): spares are
forked only into room the jail has beyond an eighth of its limit, so that they never push
a run near its memory limit into the OOM killer between steps."""


class SpareHost(Protocol):
    """What spares need of their worker (sandbox.process.WorkerProcess)."""

    config: SandboxConfig
    freezer: Freezer | None
    init_host_pid: int | None
    state_host_pid: int | None

    @property
    def dead(self) -> bool: ...

    async def spawn(self, code: str | None) -> Fork: ...

    def kill(self, fork: Fork) -> None: ...

    def memory_bytes(self) -> tuple[int, int]: ...


class Spares:
    """The parked spares of one worker (spawn tasks, announced or not)."""

    def __init__(self, worker: SpareHost) -> None:
        self.worker = worker
        self.tasks: list[asyncio.Task[Fork]] = []

    @property
    def forking(self) -> bool:
        """A spare is being forked (not announced yet): it is no stray."""
        return not all(t.done() for t in self.tasks)

    def wanted(self, n: int) -> int:
        """How many spares to fork for a step of `n` candidates: none without a freezer
        (a spare must not run between steps), never more than the config allows nor than
        the pids limit leaves room for (init, the state and one more process)."""
        w = self.worker
        if w.freezer is None or w.dead:
            return 0
        return max(0, min(n, w.config.spare_candidates, w.config.pids - 3))

    def room(self) -> int:
        """How many spares fit in the jail's memory (see SPARE_BYTES)."""
        limit = self.worker.config.memory_mb << 20
        free = limit - limit // 8 - self.worker.memory_bytes()[0]
        return max(0, free // SPARE_BYTES)

    def request(self, n: int) -> None:
        for _ in range(n):
            task = asyncio.ensure_future(self.worker.spawn(None))
            task.add_done_callback(ignore_result)
            self.tasks.append(task)

    async def take(self, n: int) -> list[Fork]:
        """Up to `n` live spares for a step's candidates; the others are killed (they
        would only hold pids). Waits for spares still being forked (a step that follows
        the last one at once)."""
        tasks, self.tasks = self.tasks, []
        if not tasks:
            return []
        if not all(t.done() for t in tasks):
            await asyncio.wait(tasks)
        forks = [f for f in map(spawned, tasks) if f is not None]
        live = [f for f in forks if f.usable]
        for fork in forks:
            if fork not in live[:n]:
                self.worker.kill(fork)
        return live[:n]

    async def run(self, fork: Fork, code: str) -> bool:
        """Hand a spare its code; False if it cannot take it (then fork a candidate)."""
        if not fork.usable:
            return False
        fork.spare, fork.started = False, False
        fork.channel.unsilence()
        try:
            await fork.channel.send({"op": "run", "code": code})
        except OSError:
            self.worker.kill(fork)
            return False
        return True

    def drop(self) -> None:
        """The state they were forked from is gone or changed: they must not run."""
        tasks, self.tasks = self.tasks, []
        for task in tasks:
            task.add_done_callback(self._kill)

    def clear(self) -> None:
        """Forget them (the worker is closing: they die with the jail)."""
        self.tasks.clear()

    def _kill(self, task: asyncio.Future[Fork]) -> None:
        fork = spawned(task)
        if fork is not None:
            self.worker.kill(fork)

    def forks(self) -> list[Fork]:
        """The spares forked and announced so far (parked, waiting for a step)."""
        forks = (spawned(t) for t in self.tasks if t.done())
        return [f for f in forks if f is not None and f.usable]

    def host_pids(self, pids: list[int], ns_pid: Callable[[int], int | None]) -> list[int]:
        """Host pids of the parked spares among `pids` (the jail's processes); `ns_pid`
        maps a host pid to its pid inside the jail (looked up once per spare)."""
        w = self.worker
        spares = {f.pid: f for f in self.forks()}
        out = [f.host_pid for f in spares.values() if f.host_pid in pids]
        missing = {ns for ns, f in spares.items() if f.host_pid not in pids}
        if missing:
            for pid in pids:
                if pid in out or pid == w.init_host_pid or pid == w.state_host_pid:
                    continue
                ns = ns_pid(pid)
                if ns in missing:
                    spares[ns].host_pid = pid
                    out.append(pid)
        return [p for p in out if p is not None]


def spawned(task: asyncio.Future[Fork]) -> Fork | None:
    """The fork a finished spawn task made (None: it failed or was cancelled)."""
    if task.cancelled() or task.exception() is not None:
        return None
    return task.result()


def ignore_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
