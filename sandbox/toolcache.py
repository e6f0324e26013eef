"""Host-side tool calls of one step, shared by its candidates.

Identical calls (same tool, same JSON arguments) within a step run once: the first caller
starts the call, later callers - other candidates, or the accepted candidate of a step
whose rejected siblings asked first - await the same task and get `cached=True` records.
A candidate that times out stops waiting without cancelling a call others still await;
`close()` at the end of the step cancels whatever is still running.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

from sandbox.results import ToolCallRecord, ToolFn


class ToolCallError(Exception):
    """The tool raised; the message goes back into the jail as a ToolError."""


class ToolCache:
    def __init__(self, tools: Mapping[str, ToolFn]) -> None:
        self._tools = tools
        self._tasks: dict[str, asyncio.Task[str]] = {}

    async def call(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> ToolCallRecord:
        key = json.dumps([name, args, kwargs], sort_keys=True)
        task = self._tasks.get(key)
        cached = task is not None
        if task is None:
            task = asyncio.create_task(self._invoke(name, args, kwargs))
            self._tasks[key] = task
        record = ToolCallRecord(name=name, args=args, kwargs=kwargs, cached=cached)
        t0 = time.perf_counter()
        try:
            record.result = await asyncio.shield(task)
        except ToolCallError as e:
            record.error = str(e)
        finally:
            record.duration_s = time.perf_counter() - t0
        return record

    async def _invoke(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> str:
        fn = self._tools.get(name)
        if fn is None:
            raise ToolCallError(f"unknown tool {name!r}")
        try:
            result = await fn(*args, **kwargs)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            raise ToolCallError(f"{name}() failed: {type(e).__name__}: {e}") from e
        return result if isinstance(result, str) else str(result)

    def close(self) -> None:
        for task in self._tasks.values():
            if not task.done():
                task.cancel()
