"""Prompt files render with the tool list; the task message and final-answer request."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.parsing import parse_action
from agent.prompts import (
    FINAL_ANSWER_REQUEST,
    PromptError,
    initial_messages,
    load_prompt_template,
    system_prompt,
    task_message,
)
from agent.tools import render_tool_list, tool_specs


@pytest.mark.parametrize("name", ["student", "teacher"])
def test_builtin_prompts_render_tools_and_imports(name: str) -> None:
    text = system_prompt(name, ["web_search"], authorized_imports=["math", "sympy"])
    assert "{{" not in text
    assert "web_search(query: str) -> str" in text
    assert "final_answer(answer: any) -> None" in text
    assert "You may import: math, sympy." in text
    assert "```<end_code>" in text
    without = system_prompt(name, [])
    assert "web_search(query: str)" not in without.split("Tools")[-1] or name == "teacher"


def test_teacher_examples_follow_the_protocol() -> None:
    text = load_prompt_template("teacher")
    examples = text.split("\n---\n")[1:]
    assert len(examples) >= 3
    joined = "\n".join(examples)
    assert "web_search(" in joined and "final_answer(" in joined and "Error:\n" in joined
    # every assistant turn in the examples parses as an action
    turns = re.findall(r"(Thought: .*?```<end_code>)", joined, flags=re.S)
    assert len(turns) >= 7
    for turn in turns:
        action = parse_action(turn)
        assert action.code and action.thought, turn
    # the observation turns look exactly like the rendered ones
    assert "Call id: call_2\nObservation:\nExecution logs:\n" in joined
    assert "\nLast output from code snippet:\n1170\n" in joined


def test_task_message_and_initial_messages() -> None:
    assert task_message("  What is 2+2? \n").startswith("New task:\nWhat is 2+2?\n\n")
    msgs = initial_messages("Q?", prompt="student", tool_names=["web_search"])
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert msgs[1]["content"].startswith("New task:\nQ?")
    assert "final_answer(<your answer>)" in FINAL_ANSWER_REQUEST


def test_user_prompt_file(tmp_path: Path) -> None:
    p = tmp_path / "mine.txt"
    p.write_text("Be brief.\nTools:\n{{tool_list}}\n")
    text = system_prompt(str(p), ["web_search", "calc"])
    assert text.startswith("Be brief.\nTools:\n- web_search(query: str) -> str")
    assert "- calc(*args, **kwargs) -> str" in text
    p.write_text("No placeholder here.")
    assert "final_answer(answer: any)" in system_prompt(str(p), [])
    with pytest.raises(PromptError, match="student, teacher"):
        system_prompt(str(tmp_path / "missing.md"), [])
    p.write_text("  \n")
    with pytest.raises(PromptError, match="empty"):
        system_prompt(str(p), [])


def test_tool_specs() -> None:
    names = [s.name for s in tool_specs(["final_answer", "web_search", "web_search"])]
    assert names == ["web_search", "final_answer"]
    assert render_tool_list([]).startswith("- final_answer(")
    with pytest.raises(ValueError, match="identifier"):
        tool_specs(["not a name"])


def test_teacher_search_observations_match_the_real_tool_format() -> None:
    """The worked examples show web_search output exactly as retrieval.tool formats it."""
    from retrieval.retriever import Passage
    from retrieval.tool import format_documents

    text = load_prompt_template("teacher")
    docs = [
        Passage(
            "1",
            "Gerlachovský štít",
            "Gerlachovský štít is the highest peak in the High Tatras, in Slovakia, and in the "
            "whole Carpathian range, at 2,655 metres above sea level.",
            0.861,
        ),
        Passage(
            "2",
            "Tatra Mountains",
            "The Tatra Mountains are a mountain range that forms a natural border between "
            "Slovakia and Poland.",
            0.804,
        ),
    ]
    printed = format_documents(docs) + "\n"  # print() adds the newline
    assert f"Execution logs:\n{printed}Last output from code snippet:\nNone" in text
