"""The observation turn fed back to the model after each step (the protocol's user turn).

Success:
    Call id: call_<k>
    Observation:
    Execution logs:
    <captured prints>Last output from code snippet:
    <repr of the last expression's value, or None>

Error (parse or execution):
    Call id: call_<k>
    Error:
    <error>
    <RETRY_INSTRUCTION>

The texts are a protocol profile's `ObservationLayout` (agent/protocol.py); the layout
above is the default profile's. Prints that do not end with a newline get one, so
"Last output" starts its own line.
Long parts are cut in the middle with a visible marker so the total stays near
`max_chars`. A step that lost the session's state (the worker was restarted) says so.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.executor import ExecutionResult
from agent.protocol import (
    DEFAULT_OBSERVATION,
    RETRY_INSTRUCTION,
    STATE_LOST_NOTE,
    ObservationLayout,
)

__all__ = [
    "RETRY_INSTRUCTION",
    "STATE_LOST_NOTE",
    "render_error",
    "render_observation",
    "truncate",
    "truncation_marker",
]
DEFAULT_MAX_CHARS = 8000
MIN_PART_CHARS = 200


def truncation_marker(dropped: int) -> str:
    return DEFAULT_OBSERVATION.marker(dropped)


def truncate(
    text: str, max_chars: int, marker: Callable[[int], str] = truncation_marker
) -> str:
    """`text` if it fits, else its head and tail around a marker, within `max_chars`."""
    if len(text) <= max_chars:
        return text
    # the marker's own length depends on the count; two passes settle it
    keep = max(max_chars - len(marker(len(text))), 0)
    dropped = len(text) - keep
    head = keep - keep // 3
    tail = keep - head
    return text[:head] + marker(dropped) + (text[len(text) - tail :] if tail else "")


def render_observation(
    step: int,
    result: ExecutionResult,
    *,
    max_chars: int = DEFAULT_MAX_CHARS,
    layout: ObservationLayout = DEFAULT_OBSERVATION,
) -> str:
    """The observation for step `step` (1-based) from an execution result."""
    if not result.ok:
        return render_error(
            step,
            result.error or "unknown error",
            max_chars=max_chars,
            state_lost=result.state_lost,
            layout=layout,
        )
    if result.is_final:
        value = repr(result.final_answer)
    else:
        value = result.value_repr if result.value_repr is not None else "None"
    value = truncate(value, max(max_chars // 4, MIN_PART_CHARS), layout.marker)
    logs = truncate(result.stdout, max(max_chars - len(value), MIN_PART_CHARS), layout.marker)
    if logs and not logs.endswith("\n"):
        logs += "\n"
    return layout.render_success(step, logs, value, result.state_lost)


def render_error(
    step: int,
    error: str,
    *,
    max_chars: int = DEFAULT_MAX_CHARS,
    state_lost: bool = False,
    layout: ObservationLayout = DEFAULT_OBSERVATION,
) -> str:
    """The error observation (parse errors and execution errors alike)."""
    error = truncate(error.rstrip("\n"), max(max_chars, MIN_PART_CHARS), layout.marker)
    return layout.render_error(step, error, state_lost)
