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

Prints that do not end with a newline get one, so "Last output" starts its own line.
Long parts are cut in the middle with a visible marker so the total stays near
`max_chars`. A step that lost the session's state (the worker was restarted) says so.
"""

from __future__ import annotations

from agent.executor import ExecutionResult

RETRY_INSTRUCTION = (
    "Fix the error and try again with corrected code; "
    "if the same approach keeps failing, try a different one."
)
STATE_LOST_NOTE = (
    "Note: the Python session was restarted, so variables, imports and functions "
    "from earlier steps are gone; define again what you need."
)
DEFAULT_MAX_CHARS = 8000
MIN_PART_CHARS = 200


def truncation_marker(dropped: int) -> str:
    return f"\n[... {dropped} characters truncated ...]\n"


def truncate(text: str, max_chars: int) -> str:
    """`text` if it fits, else its head and tail around a marker, within `max_chars`."""
    if len(text) <= max_chars:
        return text
    # the marker's own length depends on the count; two passes settle it
    keep = max(max_chars - len(truncation_marker(len(text))), 0)
    dropped = len(text) - keep
    head = keep - keep // 3
    tail = keep - head
    return text[:head] + truncation_marker(dropped) + (text[len(text) - tail :] if tail else "")


def render_observation(
    step: int, result: ExecutionResult, *, max_chars: int = DEFAULT_MAX_CHARS
) -> str:
    """The observation for step `step` (1-based) from an execution result."""
    if not result.ok:
        return render_error(
            step, result.error or "unknown error", max_chars=max_chars, state_lost=result.state_lost
        )
    if result.is_final:
        value = repr(result.final_answer)
    else:
        value = result.value_repr if result.value_repr is not None else "None"
    value = truncate(value, max(max_chars // 4, MIN_PART_CHARS))
    logs = truncate(result.stdout, max(max_chars - len(value), MIN_PART_CHARS))
    if logs and not logs.endswith("\n"):
        logs += "\n"
    text = (
        f"Call id: call_{step}\nObservation:\nExecution logs:\n{logs}"
        f"Last output from code snippet:\n{value}"
    )
    if result.state_lost:
        text += "\n" + STATE_LOST_NOTE
    return text


def render_error(
    step: int, error: str, *, max_chars: int = DEFAULT_MAX_CHARS, state_lost: bool = False
) -> str:
    """The error observation (parse errors and execution errors alike)."""
    error = truncate(error.rstrip("\n"), max(max_chars, MIN_PART_CHARS))
    note = STATE_LOST_NOTE + "\n" if state_lost else ""
    return f"Call id: call_{step}\nError:\n{error}\n{note}{RETRY_INSTRUCTION}"
