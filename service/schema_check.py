"""`AnswerValidator`: checks answers against JSON schemas in killable child processes.

Contract:
- `await validator.validate(schema, key, value)` -> `(ok, parsed, error)`: whether `value`
  (or, for a string holding JSON, the parsed string: `parsed` True) satisfies `schema`
  (None: any JSON object); `error` says why not, in words the model can act on.
- The check never runs on the event loop: it runs in one of at most `workers` child
  processes (service/schema_worker.py, started on first use, kept for later checks). A check
  that takes longer than `timeout_s`, or whose caller is cancelled (the request's
  deadline, a client that went away, shutdown), kills its process; the next check starts
  a fresh one. A timed-out check is reported as not ok, with a message saying so.
- `aclose()` ends every process (the app's lifespan calls it); a process whose gateway
  died exits when its stdin closes.
Waiting for a free process is bounded only by the caller's own deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["AnswerValidator", "CheckTimeout"]

log = logging.getLogger("distillery.service")

WORKER = Path(__file__).with_name("schema_worker.py")
REPLY_LIMIT = 1 << 20


class CheckTimeout(Exception):
    """A check did not finish within the validator's time limit."""


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", str(WORKER),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, limit=REPLY_LIMIT,
        )
        return cls(proc)

    async def ask(self, line: bytes) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line)
        await self.proc.stdin.drain()
        reply = await self.proc.stdout.readline()
        if not reply:
            raise ConnectionError("the answer-validation process exited")
        doc = json.loads(reply)
        if not isinstance(doc, dict):
            raise ConnectionError("the answer-validation process sent a malformed reply")
        return doc

    def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    async def reap(self) -> None:
        self.kill()
        with contextlib.suppress(Exception):
            await self.proc.wait()


class AnswerValidator:
    """See the module docstring."""

    def __init__(
        self, *, workers: int, timeout_s: float,
        on_outcome: Callable[[str], None] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.timeout_s = timeout_s
        self.on_outcome = on_outcome or (lambda _outcome: None)
        """Told each check's outcome: ok, rejected, timeout, cancelled or error."""
        self._slots = asyncio.Semaphore(workers)
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self.started = 0
        """Processes started so far (a killed one is replaced by a new start)."""
        self.discarded = 0
        """Processes killed because a check timed out or was cancelled, or that failed."""

    async def validate(self, schema: Any, key: str, value: Any) -> tuple[bool, bool, str | None]:
        try:
            line = (json.dumps({"key": key, "schema": schema, "value": value},
                               ensure_ascii=False, allow_nan=False) + "\n").encode()
        except (TypeError, ValueError, RecursionError):
            return False, False, "the answer is not a JSON value (str, number, bool, list, dict)"
        async with self._slots:
            worker = self._idle.pop() if self._idle else await self._start()
            try:
                async with asyncio.timeout(self.timeout_s):
                    reply = await worker.ask(line)
            except BaseException as e:
                await self._discard(worker)
                if isinstance(e, TimeoutError):
                    self.on_outcome("timeout")
                    raise CheckTimeout(
                        f"checking the answer took longer than {self.timeout_s:g} s") from None
                if isinstance(e, (ConnectionError, ValueError, OSError)):
                    log.warning("answer validation failed: %s", e)
                    self.on_outcome("error")
                    return False, False, "the answer could not be checked; try a smaller one"
                self.on_outcome("cancelled")
                raise
            self._idle.append(worker)
        ok = bool(reply.get("ok"))
        self.on_outcome("ok" if ok else "rejected")
        error = reply.get("error")
        return ok, bool(reply.get("parsed")), None if ok else str(error or "invalid answer")

    async def _start(self) -> _Worker:
        worker = await _Worker.start()
        self._all.add(worker)
        self.started += 1
        return worker

    async def _discard(self, worker: _Worker) -> None:
        self._all.discard(worker)
        self.discarded += 1
        await asyncio.shield(worker.reap())

    async def aclose(self) -> None:
        workers, self._all, self._idle = list(self._all), set(), []
        for worker in workers:
            if worker.proc.stdin is not None:
                worker.proc.stdin.close()
            await worker.reap()

    @property
    def processes(self) -> int:
        """Child processes alive now."""
        return sum(1 for w in self._all if w.proc.returncode is None)
