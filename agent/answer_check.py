"""Host-side checks of a run's final answer (e.g. structured outputs: a JSON schema).

Contract: an `AnswerCheck` is an async callable that takes the value the model gave to
`final_answer(...)` and returns the value to keep (it may normalize it, e.g. parse a
JSON string), or raises `ValueError` whose message tells the model what is wrong.
`await apply_answer_check(check, result)` runs it on an execution that called final_answer: a
rejected answer turns that execution into a failed one (not final, `error` = the
message, kind "exception"), so the candidate is not valid, the observation shows the
model the message, and the loop goes on (the model retries). The check runs on the host,
never in the sandbox; it is awaited, so a costly check (a client's schema) can run off the
event loop and is cancelled with the run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from agent.executor import ExecutionResult

__all__ = ["AnswerCheck", "apply_answer_check"]

AnswerCheck = Callable[[Any], Awaitable[Any]]

REJECTED_PREFIX = "final_answer rejected: "


async def apply_answer_check(check: AnswerCheck | None, result: ExecutionResult | None) -> None:
    """Validate (and normalize) `result.final_answer` in place; see the module docstring."""
    if check is None or result is None or not result.is_final or not result.ok:
        return
    try:
        result.final_answer = await check(result.final_answer)
    except ValueError as e:
        result.is_final = False
        result.final_answer = None
        result.error = (
            f"{REJECTED_PREFIX}{e}\nCall final_answer again with a value that satisfies "
            "the required format."
        )
        result.error_kind = "exception"
