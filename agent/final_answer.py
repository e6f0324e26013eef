"""The answer of the final-answer call (max steps, or a stuck run), read per the protocol.

The call asks for `Thought: ... Code: ```py final_answer(x)```<end_code>`; small models
reply with anything from that to prose or another exploratory action. `extract_answer`
decides, in this order, and says which rule applied (`AnswerSource`):

1. "final_answer": the reply's code called final_answer and ran (in the run's state);
   the answer is the value it gave.
2. "final_answer_literal": the code calls final_answer with a literal argument but did
   not run to it (an earlier line failed): that literal.
3. "stated": the text states an answer - "final answer: X", "the answer is X",
   "answer: X" (the last such statement, in the thought or in prose).
4. "code_output": the code ran without error and printed exactly one non-empty line
   (or its last expression had a value): that output, as text.
5. "text": a reply with no code block and no statement: its prose, with the protocol's
   labels (`Thought:`) removed.
6. "none": nothing usable (e.g. a code block that failed and states nothing); the
   answer is None rather than protocol text.

Never returns protocol text (a `Code:` block, `<end_code>`) as an answer.
"""

from __future__ import annotations

import ast
import re
from typing import Any, Literal

from agent.executor import ExecutionResult

AnswerSource = Literal[
    "final_answer", "final_answer_literal", "stated", "code_output", "text", "none"
]

_STATED = re.compile(
    r"(?:final\s+answer|the\s+answer|answer)\s*(?:is|:|=)\s*[:\-]?\s*(?P<ans>[^\n]+)", re.I
)
_THOUGHT_LABEL = re.compile(r"^\s*\**\s*thought\s*\**\s*:\s*\**\s*", re.I | re.M)
_FENCE = re.compile(r"```.*?(?:```|$)", re.S)


def extract_answer(
    text: str, code: str | None, execution: ExecutionResult | None
) -> tuple[Any, AnswerSource]:
    """The answer of a final-answer reply and how it was obtained (module docstring)."""
    if execution is not None and execution.ok and execution.is_final:
        return execution.final_answer, "final_answer"
    literal = _final_answer_literal(code)
    if literal is not _MISSING:
        return literal, "final_answer_literal"
    prose = _prose(text)
    stated = _stated(prose)
    if stated is not None:
        return stated, "stated"
    if execution is not None and execution.ok:
        lines = [ln for ln in execution.stdout.strip().splitlines() if ln.strip()]
        if len(lines) == 1:
            return lines[0].strip(), "code_output"
        if not lines and execution.value_repr not in (None, "None"):
            return execution.value_repr, "code_output"
    if code is None and prose:
        return prose, "text"
    return None, "none"


_MISSING: Any = object()


def _final_answer_literal(code: str | None) -> Any:
    if not code:
        return _MISSING
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return _MISSING
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "final_answer"
            and node.args
        ):
            try:
                return ast.literal_eval(node.args[0])
            except (ValueError, SyntaxError, TypeError):
                return _MISSING  # an expression that did not run: its text is no answer
    return _MISSING


def _prose(text: str) -> str:
    """The reply without code blocks, `Code:` labels, `<end_code>` and `Thought:` labels."""
    t = text.replace("<end_code>", "")
    t = _FENCE.sub("", t)
    t = re.sub(r"^\s*\**\s*code\s*\**\s*:\s*\**\s*$", "", t, flags=re.I | re.M)
    t = _THOUGHT_LABEL.sub("", t)
    return t.strip()


def _stated(prose: str) -> str | None:
    found = None
    for m in _STATED.finditer(prose):
        found = m.group("ans")
    if found is None:
        return None
    ans = found.strip().strip("*").strip()
    ans = re.sub(r"^\$?\\boxed\{(.*)\}\$?$", r"\1", ans)
    ans = ans.rstrip(".").strip().strip("\"'`").strip()
    return ans or None
