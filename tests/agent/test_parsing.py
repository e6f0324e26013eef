"""Action parsing on a corpus of realistic replies (tests/agent/data/replies.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.parsing import (
    FORMAT_REMINDER,
    ParseError,
    check_reserved_names,
    normalize_reply,
    parse_action,
)

CORPUS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "replies.json").read_text(encoding="utf-8")
)


@pytest.mark.parametrize("case", [c for c in CORPUS if c["ok"]], ids=lambda c: c["name"])
def test_parses(case: dict[str, Any]) -> None:
    action = parse_action(case["text"])
    assert action.code == case["code"]
    assert action.thought == case["thought"]
    assert action.text == case["stored"]
    assert action.text.endswith("```<end_code>")
    assert normalize_reply(case["text"]) == case["stored"]
    # parsing the stored form gives the same action (the transcript is stable)
    again = parse_action(action.text)
    assert (again.code, again.thought, again.text) == (action.code, action.thought, action.text)


@pytest.mark.parametrize("case", [c for c in CORPUS if not c["ok"]], ids=lambda c: c["name"])
def test_rejects_with_format_reminder(case: dict[str, Any]) -> None:
    with pytest.raises(ParseError) as ei:
        parse_action(case["text"])
    msg = str(ei.value)
    assert case["error"] in msg
    assert msg.endswith(FORMAT_REMINDER)
    assert "Thought: <your reasoning>\nCode:\n```py\n<python code>\n```<end_code>" in msg


def test_corpus_is_big_enough() -> None:
    assert sum(c["ok"] for c in CORPUS) >= 15 and sum(not c["ok"] for c in CORPUS) >= 8


def test_normalize_unparsable_keeps_text() -> None:
    assert normalize_reply("  The answer is 42. ") == "The answer is 42."
    assert (
        normalize_reply("Thought: x\n```bash\nls\n```") == "Thought: x\n```bash\nls\n```<end_code>"
    )


@pytest.mark.parametrize(
    "code",
    [
        "def final_answer(x):\n    return x",
        "final_answer = print",
        "from math import sqrt as web_search",
        "import json as final_answer",
        "for web_search in range(3):\n    pass",
        "class final_answer:\n    pass",
        "def f():\n    global web_search\n    web_search = 1",
        "(a, final_answer) = (1, 2)",
        "with open('x') as web_search:\n    pass",
    ],
)
def test_rebinding_a_tool_name_is_a_parse_error(code: str) -> None:
    with pytest.raises(ParseError) as e:
        check_reserved_names(code, {"final_answer", "web_search"})
    assert "already provided" in str(e.value) and "Thought:" in str(e.value)


@pytest.mark.parametrize(
    "code",
    [
        "final_answer(42)",
        "r = web_search('x')\nprint(r)",
        "answer = 3\nfinal_answer(answer)",
        "def helper(final):\n    return final",
        "x = (",  # does not compile: left to the executor
    ],
)
def test_using_tools_is_fine(code: str) -> None:
    check_reserved_names(code, {"final_answer", "web_search"})
