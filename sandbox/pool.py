"""Jails ready for a run: started ahead of time, or scrubbed after an earlier run.

`acquire()` hands out a ready worker (a hit) or starts one (a miss) and tops the pool up
to `size` in the background. `give_back()` takes a finished run's worker: while fewer
than `size + keep` are ready it is recycled (`WorkerProcess.recycle`: every process of
the run killed, /tmp emptied, a fresh state process forked from the jail's init, which
never ran model code) and handed to a later run, recycled ones first; otherwise, or when
it cannot be recycled (dead, caught breaking the protocol, unjailed), it is closed. So
no run ever sees another's processes, files or memory, and at saturation most runs skip
the jail start (nsjail, the interpreter, the preloaded modules).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sandbox.process import WorkerProcess

log = logging.getLogger(__name__)


@dataclass
class PoolStats:
    hits: int = 0
    misses: int = 0
    started: int = 0
    start_failures: int = 0
    discarded_dead: int = 0
    recycled: int = 0
    """Workers of finished runs scrubbed and kept for another run."""
    closed_after_run: int = 0
    """Workers of finished runs closed (no room, not reusable, or the scrub failed)."""

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class WorkerPool:
    def __init__(
        self, start: Callable[[], Awaitable[WorkerProcess]], size: int, keep: int = 0
    ) -> None:
        self._start = start
        self.size = size
        self.keep = keep
        self._recycling = 0
        self._ready: deque[WorkerProcess] = deque()
        self._filling: set[asyncio.Task[None]] = set()
        self._closed = False
        self.stats = PoolStats()
        self.start_times: list[float] = []

    @property
    def ready(self) -> int:
        return len(self._ready)

    def peek(self) -> WorkerProcess | None:
        """A ready worker, left in the pool (for health checks)."""
        return next((w for w in self._ready if not w.dead), None)

    async def acquire(self) -> WorkerProcess:
        if self._closed:
            raise RuntimeError("the sandbox executor is closed")
        while self._ready:
            worker = self._ready.popleft()
            if not worker.dead:
                self.stats.hits += 1
                self._refill()
                return worker
            self.stats.discarded_dead += 1
            await worker.close()
        self.stats.misses += 1
        self._refill()
        return await self._start_counted()

    async def _start_counted(self) -> WorkerProcess:
        try:
            worker = await self._start()
        except Exception:
            self.stats.start_failures += 1
            raise
        self.stats.started += 1
        self.start_times.append(worker.started_s)
        return worker

    async def give_back(self, worker: WorkerProcess) -> None:
        """A finished run's worker: recycled into the pool when there is room, else closed."""
        room = len(self._ready) + self._recycling < self.size + self.keep
        if self._closed or self.keep <= 0 or not room or not worker.reusable:
            self.stats.closed_after_run += 1
            await worker.close()
            return
        self._recycling += 1
        try:
            ok = await worker.recycle()
        finally:
            self._recycling -= 1
        if not ok or self._closed:
            self.stats.closed_after_run += 1
            await worker.close()
            return
        self.stats.recycled += 1
        self._ready.appendleft(worker)  # taken first: it is warm, the fresh ones can wait

    def _refill(self) -> None:
        while not self._closed and len(self._ready) + len(self._filling) < self.size:
            task = asyncio.create_task(self._fill_one())
            self._filling.add(task)
            task.add_done_callback(self._filling.discard)

    async def _fill_one(self) -> None:
        try:
            worker = await self._start_counted()
        except Exception as e:  # logged; the next acquire() starts one itself
            log.warning("sandbox pool: starting a worker failed: %s", e)
            return
        if self._closed:
            await worker.close()
        else:
            self._ready.append(worker)

    async def fill(self) -> None:
        """Start workers until the pool holds `size` ready ones (or a start failed)."""
        self._refill()
        while self._filling:
            await asyncio.gather(*self._filling, return_exceptions=True)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._filling):
            task.cancel()
        await asyncio.gather(*self._filling, return_exceptions=True)
        while self._ready:
            await self._ready.popleft().close()
