"""The final-answer call's reply read per the protocol (agent.final_answer.extract_answer)."""

from __future__ import annotations

import pytest

from agent.executor import ExecutionResult
from agent.final_answer import extract_answer
from agent.parsing import ParseError, parse_action


def read(text: str, execution: ExecutionResult | None = None) -> tuple[object, str]:
    try:
        code: str | None = parse_action(text).code
    except ParseError:
        code = None
    return extract_answer(text, code, execution)


def test_a_final_answer_call_that_ran_gives_its_value() -> None:
    text = "Thought: done.\nCode:\n```py\nfinal_answer(total * 2)\n```<end_code>"
    ran = ExecutionResult(is_final=True, final_answer=30)
    assert read(text, ran) == (30, "final_answer")


def test_a_literal_final_answer_that_did_not_run_is_still_the_answer() -> None:
    text = "Thought: x.\nCode:\n```py\nundefined_name\nfinal_answer('Paris')\n```<end_code>"
    failed = ExecutionResult(error="NameError: undefined_name", error_kind="exception")
    assert read(text, failed) == ("Paris", "final_answer_literal")


def test_protocol_text_is_never_the_answer() -> None:
    # seen on HotpotQA: the reply is another exploratory action, nothing stated
    text = (
        "Thought: The stadium at which the team plays must be found.\nCode:\n```py\n"
        "print(web_search('stadium'))\n```<end_code>"
    )
    failed = ExecutionResult(error="NameError: web_search", error_kind="exception")
    answer, source = read(text, failed)
    assert (answer, source) == (None, "none")


def test_the_answer_the_text_states() -> None:
    text = "Thought: So the final answer is 13138980.\nCode:\n```py\nprint(x)\n```<end_code>"
    assert read(text, ExecutionResult(stdout="13138980\n")) == ("13138980", "stated")
    assert read("The answer is 12.") == ("12", "stated")
    assert read("**Final Answer:** Lionel Messi") == ("Lionel Messi", "stated")
    assert read("Answer: $\\boxed{42}$") == ("42", "stated")


def test_the_printed_result_when_nothing_is_stated() -> None:
    text = "Thought: print it.\nCode:\n```py\nprint(6 * 7)\n```<end_code>"
    assert read(text, ExecutionResult(stdout="42\n")) == ("42", "code_output")
    many = ExecutionResult(stdout="a\nb\n")
    assert read(text, many) == (None, "none")  # several lines: no single answer


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Thought: Paris", "Paris"),
        ("  It is Paris, France.  ", "It is Paris, France."),
    ],
)
def test_plain_prose_without_a_code_block_is_the_answer(text: str, expected: str) -> None:
    assert read(text) == (expected, "text")
