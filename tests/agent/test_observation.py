"""Observation rendering, byte-exact (the protocol's user turn)."""

from __future__ import annotations

from agent.executor import ExecutionResult
from agent.observation import (
    RETRY_INSTRUCTION,
    STATE_LOST_NOTE,
    render_error,
    render_observation,
    truncate,
    truncation_marker,
)


def test_success_exact() -> None:
    r = ExecutionResult(stdout="391\nok\n", value_repr="'done'")
    assert render_observation(3, r) == (
        "Call id: call_3\nObservation:\nExecution logs:\n391\nok\n"
        "Last output from code snippet:\n'done'"
    )


def test_success_without_prints_or_value() -> None:
    assert render_observation(1, ExecutionResult()) == (
        "Call id: call_1\nObservation:\nExecution logs:\nLast output from code snippet:\nNone"
    )
    # prints without a final newline still leave "Last output" on its own line
    r = ExecutionResult(stdout="no newline", value_repr="3")
    assert render_observation(2, r) == (
        "Call id: call_2\nObservation:\nExecution logs:\nno newline\n"
        "Last output from code snippet:\n3"
    )


def test_final_answer_value() -> None:
    r = ExecutionResult(is_final=True, final_answer="Paris", stdout="")
    assert render_observation(4, r).endswith("Last output from code snippet:\n'Paris'")


def test_error_exact() -> None:
    r = ExecutionResult(
        error='Traceback (most recent call last):\n  File "<code>", line 1, in <module>\n'
        "ZeroDivisionError: division by zero\n",
        error_kind="exception",
    )
    assert render_observation(2, r) == (
        "Call id: call_2\nError:\nTraceback (most recent call last):\n"
        '  File "<code>", line 1, in <module>\nZeroDivisionError: division by zero\n'
        "Fix the error and try again with corrected code; "
        "if the same approach keeps failing, try a different one."
    )
    assert render_error(5, "Your reply has no code block.") == (
        f"Call id: call_5\nError:\nYour reply has no code block.\n{RETRY_INSTRUCTION}"
    )


def test_state_lost_is_mentioned() -> None:
    r = ExecutionResult(error="step timed out after 10 s", error_kind="timeout", state_lost=True)
    assert render_observation(1, r) == (
        "Call id: call_1\nError:\nstep timed out after 10 s\n"
        f"{STATE_LOST_NOTE}\n{RETRY_INSTRUCTION}"
    )
    ok = ExecutionResult(stdout="1\n", value_repr="None", state_lost=True)
    assert render_observation(1, ok).endswith(
        "Last output from code snippet:\nNone\n" + STATE_LOST_NOTE
    )


def test_truncation_has_marker_and_bounds() -> None:
    text = "".join(f"line {i}\n" for i in range(5000))
    out = truncate(text, 1000)
    assert len(out) <= 1000
    assert "characters truncated ..." in out
    assert out.startswith("line 0\n") and out.endswith("line 4999\n")
    dropped = int(out.split("[... ")[1].split(" ")[0])
    assert len(out) - len(truncation_marker(dropped)) + dropped == len(text)  # nothing else lost
    assert truncate("short", 1000) == "short"
    r = ExecutionResult(stdout=text, value_repr="x" * 50_000)
    obs = render_observation(1, r, max_chars=2000)
    assert len(obs) < 2000 + 200
    assert obs.count("characters truncated") == 2
    assert "Last output from code snippet:\nxxx" in obs
