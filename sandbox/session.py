"""One agent run's execution session on a jailed worker (implements ExecutionSession).

Every execution runs in a fresh copy-on-write fork of the state process: `run` keeps the
fork (promotes it) unless it was killed, so a step that hits a limit leaves the state as
it was before the step; `try_candidates` runs N forks, up to `fork_width` at a time, and
`commit(i)` promotes fork i (the others die). When the state process itself dies the
worker is replaced and the next result says so (`state_lost`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, get_args

from sandbox.config import SandboxConfig
from sandbox.errors import WorkerDied
from sandbox.fork import Fork
from sandbox.process import SpawnFailed, WorkerProcess
from sandbox.protocol import (
    FINAL_JSON_MAX_BYTES,
    TEXT_CHUNK_CHARS,
    TEXT_FIELDS,
    Message,
    ProtocolError,
    json_depth,
    strict_loads,
)
from sandbox.results import ErrorKind, ExecutionResult, JsonText, ToolCallRecord, ToolFn
from sandbox.toolcache import ToolCache

log = logging.getLogger(__name__)

ERROR_KINDS = frozenset(get_args(ErrorKind))
EXIT_WAIT_S = 1.0


@dataclass
class CandidateStats:
    """Where candidates ran, across sessions (the executor's readiness statistics)."""

    on_spares: int = 0
    """Handed to a spare forked while the model generated."""
    forked: int = 0
    """Forked when the step started (no spare: the first step, no model time, a step
    wider than the last, spares off or no freezer)."""


class SandboxSession:
    def __init__(
        self,
        acquire: Callable[[], Awaitable[WorkerProcess]],
        config: SandboxConfig,
        tools: Mapping[str, ToolFn],
        on_close: Callable[[SandboxSession], None] | None = None,
        stats: CandidateStats | None = None,
        release: Callable[[WorkerProcess], Awaitable[None]] | None = None,
    ) -> None:
        self._acquire = acquire
        self._release = release
        """Takes the worker back when the session closes (the pool may recycle it);
        None: it is closed."""
        self.stats = stats if stats is not None else CandidateStats()
        self.config = config
        self.tools = dict(tools)
        self._on_close = on_close
        self._worker: WorkerProcess | None = None
        self._pending: list[Fork | None] | None = None
        self._lock = asyncio.Lock()
        self._has_state = False  # something was committed on the current worker
        self._lost_notice = False  # the next results must say the state was lost
        self._closed = False
        self._width = 0  # candidates of the last step: as many spares are forked for the next
        self._finals: list[bool] = []  # which of them gave a final answer (no next step)
        self.workers_started = 0

    # --- plumbing ---------------------------------------------------------------------

    @property
    def worker(self) -> WorkerProcess | None:
        return self._worker

    async def start(self) -> None:
        await self._ensure_worker()

    async def _ensure_worker(self) -> WorkerProcess:
        if self._closed:
            raise RuntimeError("the execution session is closed")
        if self._worker is not None and not self._worker.dead:
            return self._worker
        if self._worker is not None:
            log.warning("sandbox worker died; replacing it (the run's state is lost)")
            await self._worker.close()
            self._worker = None
            if self._has_state:
                self._lost_notice = True
        worker = await self._acquire()
        if self._closed:  # closed while we waited for a worker
            await worker.close()
            raise RuntimeError("the execution session is closed")
        self._worker = worker
        self.workers_started += 1
        self._has_state = False
        if self.tools:
            await worker.set_tools(sorted(self.tools))
        return worker

    def _apply_lost_notice(self, results: list[ExecutionResult]) -> None:
        if not self._lost_notice:
            return
        self._lost_notice = False
        for r in results:
            _mark_lost(r)

    # --- ExecutionSession --------------------------------------------------------------

    async def run(self, code: str) -> ExecutionResult:
        result = (await self.try_candidates([code]))[0]
        async with self._lock:
            pending = self._pending
            fork = pending[0] if pending else None
            if fork is not None and fork.usable:
                await self._commit_locked(0)
            else:
                await self._discard_locked()
                worker = self._worker
                if worker is not None and worker.dead and self._has_state:
                    # this step killed the state process: say so now, not on the next step
                    _mark_lost(result)
                    self._has_state = False
        return result

    async def try_candidates(self, codes: Sequence[str]) -> list[ExecutionResult]:
        codes = list(codes)
        for c in codes:
            if not isinstance(c, str):
                raise TypeError(f"code must be str, not {type(c).__name__}")
        if len(codes) + 2 > self.config.pids:
            raise ValueError(
                f"{len(codes)} candidates need more than the sandbox's pids limit "
                f"({self.config.pids}); raise SandboxConfig.pids (DISTILLERY_SANDBOX_PIDS)"
            )
        async with self._lock:
            if self._pending is not None:
                log.warning("try_candidates() before commit()/discard(): discarding the last ones")
                await self._discard_locked()
            if not codes:
                return []
            worker = await self._ensure_worker()
            worker.resume()
            pairs = await self._run_round(worker, codes)
            if all(r is _NOT_STARTED for r, _ in pairs):
                # the worker died before any code ran (e.g. between steps): nothing was
                # executed, so run the step again on a fresh worker
                worker = await self._ensure_worker()
                worker.resume()
                pairs = await self._run_round(worker, codes)
            died = _worker_died(worker.death_reason)
            pairs = [(died if r is _NOT_STARTED else r, f) for r, f in pairs]
            self._pending = [fork for _, fork in pairs]
            results = [r for r, _ in pairs]
            self._finals = [r.is_final for r in results]
            if worker.dead and not any(f is not None and f.usable for f in self._pending):
                # nothing can carry the state on: it is gone
                if self._has_state:
                    for r in results:
                        _mark_lost(r)
                    self._has_state = False
            self._apply_lost_notice(results)
            return results

    async def _run_round(
        self, worker: WorkerProcess, codes: list[str]
    ) -> list[tuple[ExecutionResult, Fork | None]]:
        cache = ToolCache(self.tools)
        width = asyncio.Semaphore(self.config.fork_width)
        self._width = len(codes)
        spares = await worker.spares.take(len(codes))  # forked while the model generated
        # the jail's limit counters before the round: a rise explains a failure
        counters = worker.oom_kills(), worker.pids_limit_hits()

        async def one(code: str, spare: Fork | None) -> tuple[ExecutionResult, Fork | None]:
            async with width:
                return await self._run_candidate(worker, code, cache, counters, spare)

        picks: list[Fork | None] = [*spares, *[None] * (len(codes) - len(spares))]
        try:
            return await asyncio.gather(*(one(c, f) for c, f in zip(codes, picks, strict=True)))
        finally:
            cache.close()

    async def commit(self, index: int) -> None:
        async with self._lock:
            await self._commit_locked(index)

    async def discard(self) -> None:
        async with self._lock:
            await self._discard_locked()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        pending, self._pending = self._pending, None
        for fork in pending or []:
            if fork is not None:
                fork.channel.close()
        worker = self._worker  # kept for inspection; a recycled jail serves another run
        if worker is not None:
            # a step still in progress (closed from another task) may yet touch the
            # worker: it is closed then, never handed to another run
            if self._release is not None and not worker.dead and not self._lock.locked():
                await self._release(worker)
            else:
                await worker.close()
        if self._on_close is not None:
            self._on_close(self)

    # --- commit / discard --------------------------------------------------------------

    async def _commit_locked(self, index: int) -> None:
        pending = self._pending
        if pending is None:
            raise RuntimeError("commit() without a preceding try_candidates()")
        if not 0 <= index < len(pending):
            raise IndexError(f"candidate index {index} out of range 0..{len(pending) - 1}")
        chosen = pending[index]
        if chosen is None or not chosen.usable or self._worker is None:
            # it died (limit, crash): nothing to adopt, the state stays as before the step
            if chosen is not None:
                # it had a result, then died or broke the protocol while parked: the caller
                # believes its changes were kept - the next result says they were not
                log.warning("sandbox: the chosen candidate died after its result")
                self._lost_notice = True
            await self._discard_locked()
            return
        self._pending = None
        for fork in pending:
            if fork is not None and fork is not chosen:
                fork.channel.close()  # parked forks exit on end-of-file (and get swept)
        try:
            await self._worker.promote(chosen)
            self._has_state = True
        except (OSError, TimeoutError, WorkerDied) as e:
            log.warning("sandbox: promoting candidate %d failed: %s", index, e)
            chosen.channel.close()
            await self._worker.close()
        else:
            # after a final answer the run is over: no spares for a step that will not come
            final = index < len(self._finals) and self._finals[index]
            self._worker.quiesce(0 if final else self._worker.spares.wanted(self._width))

    async def _discard_locked(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        for fork in pending:
            if fork is not None:
                fork.channel.close()
        worker = self._worker
        if worker is not None and not worker.dead:
            with contextlib.suppress(WorkerDied):
                await worker.discard()
            worker.quiesce(worker.spares.wanted(self._width))

    # --- one candidate -----------------------------------------------------------------

    async def _run_candidate(
        self,
        worker: WorkerProcess,
        code: str,
        cache: ToolCache,
        counters: tuple[int, int],
        spare: Fork | None = None,
    ) -> tuple[ExecutionResult, Fork | None]:
        t0 = time.perf_counter()
        oom0, pids0 = counters
        # on a spare first (forked while the model generated); on a fresh fork when there
        # is none or it died before it took the code
        for attempt in (spare, None) if spare is not None else (None,):
            try:
                fork = await self._start(worker, code, attempt)
            except SpawnFailed as e:
                kind: ErrorKind = "pids" if e.errno == errno.EAGAIN else "crash"
                return _failure(f"The sandbox could not start the code: {e}", kind, t0), None
            except WorkerDied:
                return _NOT_STARTED, None
            records: list[ToolCallRecord] = []
            result = await self._serve_candidate(worker, fork, cache, records, t0)
            if result is not _NOT_TAKEN:
                break
            fork.dead = True
            fork.channel.close()
        if result is None:  # the process died without a result
            fork.dead = True
            fork.channel.close()
            result = await self._explain_death(worker, fork, oom0, pids0, t0)
        else:
            if fork.dead:
                worker.kill(fork)
            if result.error_kind == "exception" and worker.pids_limit_hits() > pids0:
                result.error_kind = "pids"
                result.error = (
                    f"{result.error}\n(the sandbox's limit of {self.config.pids} processes and "
                    "threads was reached)"
                )
        result.duration_s = time.perf_counter() - t0
        result.tool_calls = records
        return result, (None if fork.dead else fork)

    async def _start(self, worker: WorkerProcess, code: str, spare: Fork | None) -> Fork:
        if spare is not None and await worker.spares.run(spare, code):
            self.stats.on_spares += 1
            return spare
        fork = await worker.spawn(code)
        self.stats.forked += 1
        return fork

    async def _serve_candidate(
        self,
        worker: WorkerProcess,
        fork: Fork,
        cache: ToolCache,
        records: list[ToolCallRecord],
        t0: float,
    ) -> ExecutionResult | None:
        """The candidate's result, a failure the host judged (limits, protocol), None when
        it died without a result, or _NOT_TAKEN (a spare that died before its code)."""
        try:
            async with asyncio.timeout(self.config.step_timeout_s):
                return await self._converse(fork, cache, records)
        except TimeoutError:
            worker.kill(fork)
            return _failure(
                f"Timeout: the code ran longer than {self.config.step_timeout_s:g} s "
                "(wall-clock limit) and was stopped.",
                "timeout",
                t0,
            )
        except OutputCapExceeded as e:
            worker.kill(fork)
            result = _failure(
                f"Output limit exceeded: the code printed more than "
                f"{self.config.output_max_bytes} bytes (counted on the host; the process "
                "was killed).",
                "output",
                t0,
            )
            result.stdout = e.stdout
            return result
        except ProtocolError as e:
            worker.kill(fork)
            return _failure(
                f"The sandbox process broke the protocol and was killed: {e}", "crash", t0
            )
        except BaseException:
            worker.kill(fork)
            raise

    async def _converse(
        self, fork: Fork, cache: ToolCache, records: list[ToolCallRecord]
    ) -> ExecutionResult | None:
        """Serve the candidate's tool calls until its result (None: it died).

        Every bound is checked here, on the host, whatever the worker claims: the size of
        each text field (stdout in UTF-8 bytes against output_max_bytes), tool-call
        arguments per call and per execution, the JSON and depth of a final answer.
        """
        cfg = self.config
        texts = TextFields(cfg.output_max_bytes)
        args_total = 0
        while True:
            msg = await fork.channel.recv_msg()
            if msg is None:
                return None if fork.started else _NOT_TAKEN
            op = msg["op"]
            if op == "started" and not fork.started:  # a spare took its code
                fork.started = True
                continue
            if op == "text":
                texts.add(msg)
                continue
            if op == "result":
                result = parse_result(msg, texts, cfg.json_depth_max)
                if msg.get("keep") is False:  # it cannot carry the state on
                    fork.dead = True
                fork.channel.silence()  # parked: it must send nothing more
                return result
            if op != "tool":
                raise ProtocolError(f"unexpected frame {op!r} from a candidate")
            call_id, name, args, kwargs = parse_tool_call(msg)
            size = _json_size([args, kwargs])
            if size > cfg.tool_args_max_bytes:
                raise ProtocolError(
                    f"tool call arguments of {size} bytes exceed the limit of "
                    f"{cfg.tool_args_max_bytes}"
                )
            args_total += size
            if args_total > cfg.tool_args_step_max_bytes:
                raise ProtocolError(
                    f"tool call arguments of this execution exceed {cfg.tool_args_step_max_bytes}"
                    " bytes in all"
                )
            if json_depth([args, kwargs], cfg.json_depth_max + 1) > cfg.json_depth_max + 1:
                raise ProtocolError(f"tool call arguments nested deeper than {cfg.json_depth_max}")
            if len(records) >= self.config.max_tool_calls:
                reply: Message = {
                    "op": "tool_error",
                    "id": call_id,
                    "error": f"too many tool calls (the limit is {self.config.max_tool_calls})",
                }
            else:
                record = await cache.call(name, args, kwargs)
                records.append(record)
                if record.error is None:
                    reply = {"op": "tool_result", "id": call_id, "result": record.result}
                    if isinstance(record.result, JsonText):  # the caller gets the value
                        reply["value"] = record.result.value
                else:
                    reply = {"op": "tool_error", "id": call_id, "error": record.error}
            await fork.channel.send(reply)

    async def _explain_death(
        self, worker: WorkerProcess, fork: Fork, oom0: int, pids0: int, t0: float
    ) -> ExecutionResult:
        # the state process reports the exit; on a busy machine that can take a while
        status = await worker.exit_status(fork.pid, max(EXIT_WAIT_S, self.config.control_timeout_s))
        sig = status.signal if status else None
        cfg = self.config
        if sig == signal.SIGXCPU:
            return _failure(
                f"Timeout: the code used more than {cfg.cpu_s} s of CPU time and was stopped.",
                "timeout",
                t0,
            )
        if worker.oom_kills() > oom0:
            return _failure(
                f"Memory limit exceeded: the code needed more than {cfg.memory_mb} MB and was "
                "killed.",
                "memory",
                t0,
            )
        if worker.pids_limit_hits() > pids0:
            return _failure(
                f"Process limit exceeded: the code started more than {cfg.pids} processes or "
                "threads and was killed.",
                "pids",
                t0,
            )
        if sig is not None:
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else sig
            detail = f"was killed by signal {name}"
        elif status is not None and status.code is not None:
            detail = f"exited with status {status.code}"
        else:
            detail = "died"
        if worker.dead:
            detail += f" ({worker.death_reason or 'the sandbox worker died with it'})"
        return _failure(f"The sandbox process {detail} before finishing the code.", "crash", t0)


# --- validation of what the jail sends --------------------------------------------------


class OutputCapExceeded(ProtocolError):
    """The jail sent more output than output_max_bytes (its own cap was lifted)."""

    def __init__(self, stdout: str, limit: int) -> None:
        super().__init__(f"more than {limit} bytes of output")
        self.stdout = stdout


class TextFields:
    """The `text` frames of one result, counted against the host's own caps.

    stdout: at most `limit` UTF-8 bytes (the worker's cap; more means the code lifted it:
    OutputCapExceeded, with the first `limit` bytes kept). value_repr, error: at most
    `limit` characters plus room for the truncation marker and notes. final_answer: the
    same (a structured answer's JSON is smaller still, see parse_result).
    """

    SLACK = 1024

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: dict[str, list[str]] = {}
        self.chars: dict[str, int] = {}
        self.stdout_bytes = 0

    def add(self, msg: Message) -> None:
        name, data = msg.get("field"), msg.get("data")
        if name not in TEXT_FIELDS or not isinstance(data, str):
            raise ProtocolError("a text frame needs a known 'field' and a string 'data'")
        if len(data) > TEXT_CHUNK_CHARS:
            raise ProtocolError(f"a text frame carries more than {TEXT_CHUNK_CHARS} characters")
        if name == "stdout":
            n = len(data.encode("utf-8", "replace"))
            if self.stdout_bytes + n > self.limit:
                room = self.limit - self.stdout_bytes
                head = data.encode("utf-8", "replace")[:room].decode("utf-8", "ignore")
                raise OutputCapExceeded(self.get("stdout") + head, self.limit)
            self.stdout_bytes += n
        else:
            total = self.chars.get(name, 0) + len(data)
            if total > self.limit + self.SLACK:
                raise ProtocolError(f"the result's {name} exceeds {self.limit} characters")
            self.chars[name] = total
        self.parts.setdefault(name, []).append(data)

    def get(self, name: str) -> str:
        return "".join(self.parts.get(name, ()))

    def has(self, name: str) -> bool:
        return name in self.parts


def _json_size(value: Any) -> int:
    try:
        return len(json.dumps(value, ensure_ascii=False).encode("utf-8", "replace"))
    except (TypeError, ValueError, RecursionError) as e:  # cannot happen for decoded JSON
        raise ProtocolError(f"tool call arguments are not JSON: {e}") from None


def parse_result(
    msg: Message, texts: TextFields | None = None, depth_max: int = 32
) -> ExecutionResult:
    texts = texts if texts is not None else TextFields(1 << 30)
    present = msg.get("texts", [])
    if not isinstance(present, list) or any(n not in TEXT_FIELDS for n in present):
        raise ProtocolError("result field 'texts' must list text fields")
    if set(texts.parts) - set(present):
        raise ProtocolError("text frames for a field the result does not list")
    kind = msg.get("error_kind")
    if kind is not None and kind not in ERROR_KINDS:
        raise ProtocolError(f"unknown error kind {kind!r}")
    is_final = msg.get("is_final")
    if not isinstance(is_final, bool):
        raise ProtocolError("result field 'is_final' must be a boolean")
    final_json = msg.get("final_json", False)
    if not isinstance(final_json, bool):
        raise ProtocolError("result field 'final_json' must be a boolean")

    def opt(name: str) -> str | None:
        return texts.get(name) if name in present else None

    error = opt("error")
    if (error is None) != (kind is None):
        raise ProtocolError("result fields 'error' and 'error_kind' must come together")
    final: Any = None
    if is_final:
        text = opt("final_answer")
        if text is None:
            raise ProtocolError("a final result without its final_answer")
        if final_json:
            if len(text) > FINAL_JSON_MAX_BYTES:
                raise ProtocolError(
                    f"a structured final answer larger than {FINAL_JSON_MAX_BYTES} bytes"
                )
            try:
                final = strict_loads(text, depth_max)
            except ValueError as e:
                raise ProtocolError(f"the final answer is not strict JSON: {e}") from None
        else:
            final = text
    return ExecutionResult(
        stdout=texts.get("stdout"),
        value_repr=opt("value_repr"),
        error=error,
        error_kind=kind,
        is_final=is_final,
        final_answer=final,
    )


def parse_tool_call(msg: Message) -> tuple[int, str, list[Any], dict[str, Any]]:
    call_id, name = msg.get("id"), msg.get("name")
    args, kwargs = msg.get("args"), msg.get("kwargs")
    if not isinstance(call_id, int) or not isinstance(name, str):
        raise ProtocolError("tool call needs an integer 'id' and a string 'name'")
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ProtocolError("tool call needs a list 'args' and an object 'kwargs'")
    return call_id, name, args, kwargs


_NOT_STARTED = ExecutionResult(error="not started", error_kind="crash")
_NOT_TAKEN = ExecutionResult(error="a spare died before it took the code", error_kind="crash")


def _worker_died(reason: str | None = None) -> ExecutionResult:
    why = f" ({reason})" if reason else ""
    return ExecutionResult(
        error=f"The sandbox worker died before it could run the code{why}.", error_kind="crash"
    )


def _failure(error: str, kind: ErrorKind, t0: float) -> ExecutionResult:
    return ExecutionResult(error=error, error_kind=kind, duration_s=time.perf_counter() - t0)


def _mark_lost(result: ExecutionResult) -> None:
    # the agent's observation states the loss (agent.observation renders `state_lost`)
    result.state_lost = True
