"""The executor interface: where the agent's code runs.

An `Executor` opens one `ExecutionSession` per agent run. A session keeps Python state
across steps. For self-consistent action generation (SAG) the agent runs the N
candidate codes of a step with `try_candidates` - each against the same committed
state, isolated from each other - then `commit`s the one it keeps (its state continues
the run) or `discard`s them all. The implementation is `sandbox.executor.SandboxExecutor`
(copy-on-write forks of a worker process): jailed by nsjail, or with
`SandboxConfig(unjailed=True)` a plain subprocess for development (`DISTILLERY_EXECUTOR=local`).

Tools (web_search, ...) are host-side async callables; code inside the session calls
them by name and the session proxies the call to the host. `final_answer(x)` is built
into every session: it stops the code and reports `is_final` with a JSON-safe value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from sandbox.results import ErrorKind, ExecutionResult, JsonText, ToolCallRecord, ToolFn

__all__ = [
    "ErrorKind",
    "ExecutionResult",
    "ExecutionSession",
    "Executor",
    "JsonText",
    "ToolCallRecord",
    "ToolFn",
]

class ExecutionSession(Protocol):
    async def run(self, code: str) -> ExecutionResult:
        """Run `code` against the session state and keep its effects."""
        ...

    async def try_candidates(self, codes: Sequence[str]) -> list[ExecutionResult]:
        """Run each code against the current state in isolation; keep nothing yet.

        Results are in the order of `codes`. Identical tool calls within one step are
        made once (cached). The caller must then `commit(i)` or `discard()`.
        """
        ...

    async def commit(self, index: int) -> None:
        """Adopt candidate `index`'s state from the last `try_candidates`; drop the rest."""
        ...

    async def discard(self) -> None:
        """Drop every candidate of the last `try_candidates`; the state stays as before."""
        ...

    async def close(self) -> None:
        """Kill every process of this session. Idempotent."""
        ...


class Executor(Protocol):
    async def start(self) -> None:
        """Pre-start what sessions need (e.g. a pool of workers); a no-op where nothing is."""
        ...

    async def open_session(self, tools: Mapping[str, ToolFn]) -> ExecutionSession: ...

    async def aclose(self) -> None: ...
