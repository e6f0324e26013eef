"""What one execution of model-written code produced: the executor contract's records.

`ExecutionResult` (stdout, last value, error and its kind, final answer, tool calls) and
`ToolCallRecord` are what the sandbox returns and what the agent turns into observations;
`ToolFn` is the shape of a host-side tool, and `JsonText` the result of one whose caller in
the jail gets a JSON value rather than the text. They live here, in the package that produces
them, so that sandbox/ needs nothing from agent/; `agent.executor` re-exports them next to
the `Executor` / `ExecutionSession` interfaces.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["ErrorKind", "ExecutionResult", "JsonText", "ToolCallRecord", "ToolFn"]

ToolFn = Callable[..., Awaitable[str]]
"""A host-side tool: called with the keyword/positional arguments the code passed."""


class JsonText(str):
    """A tool result that is text for every record (trajectories, observations, the tool
    cache) while the code in the jail that called the tool gets `value`, a JSON value
    (dicts, lists, numbers...), instead of the string. The tool bounds both: the host sends
    `value` into the jail as it is."""

    value: Any

    def __new__(cls, text: str, value: Any = None) -> JsonText:
        obj = super().__new__(cls, text)
        obj.value = value
        return obj

    def __reduce__(self) -> tuple[Any, ...]:  # copies and pickles keep the value
        return (JsonText, (str(self), self.value))


ErrorKind = Literal[
    "exception",  # the code raised (traceback trimmed to the user's code)
    "syntax",  # the code does not compile
    "forbidden_import",  # import outside the allow-list
    "timeout",  # wall or CPU time limit
    "memory",  # memory limit
    "output",  # output size limit
    "pids",  # process limit
    "crash",  # the worker died for another reason
    "tool",  # a tool call failed in a way the code could not catch
]


@dataclass
class ToolCallRecord:
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    result: str | None = None
    error: str | None = None
    duration_s: float = 0.0
    cached: bool = False


@dataclass
class ExecutionResult:
    stdout: str = ""
    value_repr: str | None = None
    """repr() of the value of the last expression statement, None if there is none."""
    error: str | None = None
    error_kind: ErrorKind | None = None
    is_final: bool = False
    final_answer: Any = None
    """JSON-safe value given to final_answer (str() of it when not JSON-safe)."""
    duration_s: float = 0.0
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    state_lost: bool = False
    """The worker died and was replaced: variables of earlier steps are gone."""

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d
