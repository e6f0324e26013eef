"""LocalExecutor: runs the agent's code in a plain, UNJAILED Python subprocess.

DEVELOPMENT ONLY: the code can read and write your files, use the network and spend
your CPU and memory; nothing is isolated. Production uses sandbox.executor.SandboxExecutor
(nsjail). This executor exists so the agent loop runs and is tested without nsjail.

One worker process per session (agent/_local_worker.py, JSON lines over its
stdin/stdout). Variables persist across steps. `try_candidates` runs every code in
its own fork of the committed state (copy-on-write), so a rejected candidate leaves no
trace; `commit(i)` makes fork i the session's state. Tool calls inside the code are
proxied to the host's async tools; identical calls within one `try_candidates` are made
once. A candidate over the step timeout is killed alone (the state survives); if the
worker itself dies or stops answering, it is replaced and the results say `state_lost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.executor import ExecutionResult, ToolCallRecord, ToolFn

log = logging.getLogger(__name__)

WORKER = Path(__file__).with_name("_local_worker.py")
_WARNED = False


class ExecutorError(RuntimeError):
    """The executor itself failed (worker cannot start, protocol misuse)."""


class LocalExecutor:
    """See the module docstring. Implements `agent.executor.Executor`."""

    def __init__(
        self,
        step_timeout_s: float = 10.0,
        *,
        max_output_chars: int = 1_000_000,
        grace_s: float = 5.0,
        python: str | None = None,
    ) -> None:
        global _WARNED
        if step_timeout_s <= 0:
            raise ValueError("step_timeout_s must be > 0")
        self.step_timeout_s = step_timeout_s
        self.max_output_chars = max_output_chars
        self.grace_s = grace_s
        self.python = python or sys.executable
        self._sessions: set[LocalSession] = set()
        if not _WARNED:
            _WARNED = True
            log.warning(
                "LocalExecutor runs model-written code in a plain, UNJAILED subprocess with "
                "your user's rights: DEVELOPMENT ONLY, no isolation. Use the nsjail sandbox "
                "executor (DISTILLERY_EXECUTOR=sandbox) for anything else."
            )

    async def start(self) -> None:
        """Nothing to pre-start: each session spawns its own worker."""

    async def open_session(self, tools: Mapping[str, ToolFn]) -> LocalSession:
        session = LocalSession(self, dict(tools))
        await session.start()
        self._sessions.add(session)
        return session

    async def aclose(self) -> None:
        for session in list(self._sessions):
            await session.close()


class LocalSession:
    """One agent run's Python state. Implements `agent.executor.ExecutionSession`."""

    def __init__(self, executor: LocalExecutor, tools: dict[str, ToolFn]) -> None:
        for name in tools:
            if not name.isidentifier() or name == "final_answer":
                raise ValueError(f"invalid tool name {name!r}")
        self.executor = executor
        self.tools = tools
        self._proc: asyncio.subprocess.Process | None = None
        self._exit_task: asyncio.Future[int] | None = None
        self._workdir: str | None = None
        self._write_lock = asyncio.Lock()
        self._op_lock = asyncio.Lock()
        self._live: set[int] = set()
        """Candidates of the last try_candidates that can still be committed."""
        self._state_lost = False
        self._closed = False
        self.worker_pid: int | None = None
        """The pid of the current state process (changes at every commit)."""

    @property
    def pgid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        if self._workdir is None:
            self._workdir = tempfile.mkdtemp(prefix="distillery-local-")
        env = dict(os.environ)
        env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        stderr = open(os.path.join(self._workdir, ".worker.stderr"), "ab")  # noqa: SIM115
        try:
            self._proc = await asyncio.create_subprocess_exec(
                self.executor.python, "-I", "-u", str(WORKER),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                cwd=self._workdir,
                env=env,
                start_new_session=True,  # its own process group: close() kills every fork
                limit=1 << 26,
            )  # fmt: skip
        finally:
            stderr.close()
        self._exit_task = asyncio.ensure_future(self._proc.wait())
        self._live = set()
        await self._send(
            {
                "op": "init",
                "tools": sorted(self.tools),
                "step_timeout_s": self.executor.step_timeout_s,
                "max_output_chars": self.executor.max_output_chars,
            }
        )
        msg = await self._recv(timeout=30.0)
        if msg is None or msg.get("type") != "ready":
            await self._kill()
            raise ExecutorError(f"local executor: the worker did not start ({self._stderr_tail()})")
        self.worker_pid = int(msg["pid"])

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.executor._sessions.discard(self)
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(Exception):
                await self._send({"op": "close"})
                await asyncio.wait_for(asyncio.shield(self._exit()), timeout=2.0)
        await self._kill()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    # -- ExecutionSession -------------------------------------------------------------
    async def run(self, code: str) -> ExecutionResult:
        """Run `code` and keep its effects (also those before an exception)."""
        result = (await self.try_candidates([code]))[0]
        if 0 in self._live:
            await self.commit(0)
        else:
            await self.discard()
        return result

    async def try_candidates(self, codes: Sequence[str]) -> list[ExecutionResult]:
        if self._closed:
            raise ExecutorError("the session is closed")
        if not codes:
            return []
        async with self._op_lock:
            if self._live:
                await self._discard_locked()
            state_lost = self._state_lost
            if self._proc is None or self._proc.returncode is not None:
                await self._restart()
                state_lost = True
            self._state_lost = False
            results = await self._try(list(codes))
            if results is None:  # the worker died or hung: replace it
                await self._restart()
                results = [
                    ExecutionResult(
                        error="The Python worker stopped responding and was restarted; "
                        "this step's code did not finish.",
                        error_kind="crash",
                        state_lost=True,
                    )
                    for _ in codes
                ]
                return results
            for r in results:
                r.state_lost = r.state_lost or state_lost
            return results

    async def commit(self, index: int) -> None:
        async with self._op_lock:
            if index not in self._live:
                raise ExecutorError(
                    f"candidate {index} cannot be committed (live: {sorted(self._live)})"
                )
            self._live = set()
            await self._send({"op": "commit", "index": index})
            msg = await self._recv(timeout=self.executor.grace_s + 5)
            if msg is None or msg.get("type") != "committed":
                await self._restart()
                self._state_lost = True
                raise ExecutorError(f"commit failed: {msg!r}; the session state was lost")
            self.worker_pid = int(msg["pid"])

    async def discard(self) -> None:
        async with self._op_lock:
            await self._discard_locked()

    # -- internals --------------------------------------------------------------------
    async def _discard_locked(self) -> None:
        if not self._live:
            return
        self._live = set()
        await self._send({"op": "discard"})
        msg = await self._recv(timeout=self.executor.grace_s + 5)
        if msg is None or msg.get("type") != "discarded":
            await self._restart()
            self._state_lost = True

    async def _try(self, codes: list[str]) -> list[ExecutionResult] | None:
        cache: dict[str, asyncio.Future[tuple[str | None, str | None]]] = {}
        records: list[list[ToolCallRecord]] = [[] for _ in codes]
        tasks: set[asyncio.Task[None]] = set()
        # Without tool calls in flight the worker answers within the step timeout (it
        # kills slow candidates itself); past that plus a grace period it is hung.
        quiet = self.executor.step_timeout_s + self.executor.grace_s
        try:
            await self._send({"op": "try", "codes": codes})
            while True:
                msg = await self._recv(timeout=quiet)
                if msg is None:
                    alive = self._exit_task is not None and not self._exit_task.done()
                    if alive and any(not t.done() for t in tasks):
                        continue  # a slow tool, not a hung worker (its clock is paused)
                    return None
                kind = msg.get("type")
                if kind == "tool":
                    task = asyncio.ensure_future(self._tool_call(msg, cache, records))
                    tasks.add(task)
                elif kind == "results":
                    break
                else:
                    log.error("local executor: unexpected worker message %r", msg)
                    return None
        finally:
            for t in tasks:
                t.cancel()
            for fut in cache.values():
                fut.cancel()
        results = []
        for i, d in enumerate(msg["results"]):
            r = ExecutionResult(
                stdout=d.get("stdout") or "",
                value_repr=d.get("value_repr"),
                error=d.get("error"),
                error_kind=d.get("error_kind"),
                is_final=bool(d.get("is_final")),
                final_answer=d.get("final_answer"),
                duration_s=float(d.get("duration_s") or 0.0),
                tool_calls=records[i],
            )
            if r.error_kind not in ("timeout", "crash"):
                self._live.add(i)
            results.append(r)
        return results

    async def _tool_call(
        self,
        msg: dict[str, Any],
        cache: dict[str, asyncio.Future[tuple[str | None, str | None]]],
        records: list[list[ToolCallRecord]],
    ) -> None:
        name, args, kwargs = str(msg["name"]), list(msg["args"]), dict(msg["kwargs"])
        record = ToolCallRecord(name=name, args=args, kwargs=kwargs)
        records[int(msg["cand"])].append(record)
        key = json.dumps([name, args, kwargs], sort_keys=True, default=str)
        fut = cache.get(key)
        if fut is None:
            fut = cache[key] = asyncio.ensure_future(self._invoke(name, args, kwargs))
        else:
            record.cached = True
        t0 = time.perf_counter()
        result, error = await asyncio.shield(fut)
        record.duration_s = time.perf_counter() - t0
        record.result, record.error = result, error
        reply = {"op": "tool_result", "cand": msg["cand"], "call": msg["call"]}
        await self._send({**reply, "result": result, "error": error})

    async def _invoke(
        self, name: str, args: list[Any], kwargs: dict[str, Any]
    ) -> tuple[str | None, str | None]:
        fn = self.tools.get(name)
        if fn is None:
            return None, f"unknown tool {name!r}"
        try:
            out = await fn(*args, **kwargs)
        except asyncio.CancelledError:
            raise
        except TypeError as e:
            return None, f"{name}() was called with wrong arguments: {e}"
        except Exception as e:  # the code sees the failure as a ToolError it may catch
            return None, f"{name} failed: {type(e).__name__}: {e}"
        return (out if isinstance(out, str) else str(out)), None

    async def _send(self, msg: dict[str, Any]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise ExecutorError("local executor: no worker")
        data = (json.dumps(msg, default=str) + "\n").encode()
        async with self._write_lock:
            try:
                proc.stdin.write(data)
                await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the worker is gone; the next read sees it

    async def _recv(self, timeout: float | None) -> dict[str, Any] | None:
        """The next worker message; None if the worker exited or said nothing in time."""
        proc = self._proc
        if proc is None or proc.stdout is None or self._exit_task is None:
            return None
        read = asyncio.ensure_future(proc.stdout.readline())
        waiters: set[asyncio.Future[Any]] = {read, self._exit_task}
        try:
            done, _ = await asyncio.wait(
                waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            read.cancel()
            raise
        if read not in done:
            read.cancel()
            return None
        line = read.result()
        if not line:
            return None
        try:
            msg: dict[str, Any] = json.loads(line)
        except ValueError:
            log.error("local executor: bad worker line %r", line[:200])
            return None
        return msg

    async def _exit(self) -> int:
        assert self._exit_task is not None
        return await self._exit_task

    async def _restart(self) -> None:
        log.warning("local executor: restarting the worker (%s)", self._stderr_tail())
        await self._kill()
        await self.start()

    async def _kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        if self._exit_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._exit_task), timeout=5.0)
        if proc.stdin is not None:
            proc.stdin.close()
        self._proc = None
        self._exit_task = None
        self._live = set()

    def _stderr_tail(self) -> str:
        if self._workdir is None:
            return "no log"
        try:
            text = Path(self._workdir, ".worker.stderr").read_text(errors="replace")
        except OSError:
            return "no log"
        return text.strip()[-500:] or "no output on stderr"
