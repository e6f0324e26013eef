"""`TaskSpec`: what a question is graded with and which tools its runs get.

A task is a record, not a kind: `name`, `grader` (a key of training.grading.GRADERS:
`math`, `factual`, `exact`, `numeric`, `f1`, `contains`) and `tools`:

- `None`: every tool the job offers (web_search when search is on, each MCP server's);
- `()`: none (the code runs with Python only, as the paper's math questions do);
- names: exactly those, each of which the job must serve (`--mcp-config`).

`task_from_json` reads a task a question file defines itself: a registered name
(`"shop"`), or an object `{"name", "grader", "tools"?, "description"?}`; an object whose
name is registered inherits that task's fields it does not set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from training.grading import GRADERS

__all__ = ["TaskError", "TaskSpec", "task_from_json"]


class TaskError(ValueError):
    """A task definition cannot be used; the message says what is wrong."""


@dataclass(frozen=True)
class TaskSpec:
    name: str
    grader: str
    """A key of training.grading.GRADERS."""
    tools: tuple[str, ...] | None = None
    """None: every tool the job offers; (): none; names: exactly those."""
    description: str = ""

    def validate(self) -> TaskSpec:
        if not self.name or not isinstance(self.name, str):
            raise TaskError("a task needs a non-empty 'name'")
        if self.grader not in GRADERS:
            raise TaskError(
                f"task {self.name!r}: unknown grader {self.grader!r}; use one of "
                f"{', '.join(GRADERS)}"
            )
        if self.tools is not None and not all(isinstance(t, str) and t for t in self.tools):
            raise TaskError(f"task {self.name!r}: 'tools' must be a list of tool names")
        return self

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "grader": self.grader,
            "tools": None if self.tools is None else list(self.tools),
            "description": self.description,
        }


_FIELDS = {"name", "grader", "tools", "description"}


def task_from_json(value: Any, registry: Mapping[str, TaskSpec]) -> TaskSpec:
    """A task named (`"shop"`) or defined (`{"name": ..., "grader": ...}`) in a question
    file; TaskError says what is wrong."""
    if isinstance(value, str):
        if value not in registry:
            raise TaskError(
                f"task must be a registered task ({', '.join(registry)}) or an object "
                f"{{'name', 'grader', 'tools'?}}; {value!r} is neither"
            )
        return registry[value]
    if not isinstance(value, Mapping):
        raise TaskError(f"task must be a name or an object, not {type(value).__name__}")
    unknown = set(value) - _FIELDS
    if unknown:
        raise TaskError(f"task: unknown field(s) {sorted(unknown)}; use {sorted(_FIELDS)}")
    name = value.get("name")
    if not isinstance(name, str):
        raise TaskError("task must have a 'name' string")
    base = registry.get(name)
    if base is None and "grader" not in value:
        raise TaskError(
            f"task {name!r} is not registered, so it needs a 'grader' "
            f"({', '.join(GRADERS)})"
        )
    tools = value.get("tools", base.tools if base else None)
    if tools is not None and not isinstance(tools, list | tuple):
        raise TaskError(f"task {name!r}: 'tools' must be a list of tool names or null")
    spec = TaskSpec(
        name=name,
        grader=str(value.get("grader", base.grader if base else "")),
        tools=None if tools is None else tuple(tools),
        description=str(value.get("description", base.description if base else "")),
    )
    return spec.validate()
