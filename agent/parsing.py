"""Extract the thought and the code of one model reply (the protocol's assistant turn).

    Thought: <reasoning>
    Code:
    ```py
    <python>
    ```<end_code>

Tolerant of what small models emit: ```python / ``` / ```py3 fences, a missing
`<end_code>` (the server stops on it and drops it), a partial stop string (`<end_co`),
a missing closing fence, stray text after the closing fence, a missing `Code:` or
`Thought:` label, leading whitespace. Strict about what is not code: no Python code
block, or an empty one, is a `ParseError` whose message tells the model the format.

The stored reply (`Action.text`) is normalized: the reply through the end of the first
code block's closing fence, then `<end_code>` (a missing closing fence is added; stray
text after it is dropped), so transcripts and training data stay in the protocol.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from dataclasses import dataclass

END_CODE = "<end_code>"

FORMAT_REMINDER = (
    "Reply with a thought and exactly one Python code block, in this format:\n"
    "Thought: <your reasoning>\n"
    "Code:\n"
    "```py\n"
    "<python code>\n"
    "```<end_code>\n"
    "To give your answer, call final_answer(answer) inside the code block."
)

PYTHON_LANGS = frozenset({"", "py", "python", "python3", "py3", "ipython"})

# An opening fence: ``` + optional language tag + newline; or ```[py ]code on the same line.
_OPEN_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[ \t]*(\r?\n)?")
_CLOSE_FENCE = re.compile(r"```")
_PARTIAL_END = re.compile(r"<(?:e(?:n(?:d(?:_(?:c(?:o(?:d(?:e)?)?)?)?)?)?)?)?>?\s*$")
# "Thought:", "**Thought:**", "**Thought**:" (and the same for "Code:")
_THOUGHT = re.compile(r"^\s*\**\s*thought\s*(?::\s*\**|\**\s*:)\s*", re.I)
_CODE_LABEL = re.compile(r"\**\s*code\s*(?::\s*\**|\**\s*:)\s*$", re.I)


class ParseError(ValueError):
    """The reply holds no usable code; str() is the message shown to the model."""


@dataclass(frozen=True)
class Action:
    thought: str
    code: str
    text: str
    """The normalized reply to store (ends with the closing fence + <end_code>)."""


def parse_action(reply: str) -> Action:
    """Thought and code of `reply`, or ParseError with a message that states the format."""
    text = reply.lstrip()
    if not text.strip():
        raise ParseError("Your reply was empty. " + FORMAT_REMINDER)
    other_lang: str | None = None
    pos = 0
    while True:
        m = _OPEN_FENCE.search(text, pos)
        if m is None:
            break
        lang, body_start = m.group(1).lower(), m.end()
        if m.group(2) is None:  # code on the fence's line: ```py x = 1``` or ```x = 1```
            same_line_lang = lang in PYTHON_LANGS and text[m.start() : m.end()][-1:].isspace()
            if not same_line_lang:
                lang, body_start = "", m.start() + 3
        close = _CLOSE_FENCE.search(text, body_start)
        if lang not in PYTHON_LANGS:
            other_lang = other_lang or m.group(1)
            if close is None:
                break
            pos = close.end()
            continue
        return _action(text, m.start(), body_start, close)
    if other_lang is not None:
        raise ParseError(
            f"Your code block is marked '{other_lang}', but only Python code runs here. "
            + FORMAT_REMINDER
        )
    raise ParseError("Your reply has no code block. " + FORMAT_REMINDER)


def _action(text: str, start: int, body_start: int, close: re.Match[str] | None) -> Action:
    if close is None:  # stopped or cut before the closing fence
        body = _strip_partial_end(text[body_start:])
        body = body.rstrip("`").rstrip()
        kept = text[:body_start] + body
        stored = kept.rstrip() + "\n```" + END_CODE
    else:
        body = text[body_start : close.start()]
        stored = text[: close.end()] + END_CODE
    code = _dedent_code(body)
    if not code.strip():
        raise ParseError("Your code block was empty. " + FORMAT_REMINDER)
    try:
        tree = ast.parse(code)
    except SyntaxError:
        tree = None  # the executor reports the syntax error with its line
    if tree is not None and not tree.body:
        raise ParseError("Your code block holds only comments, no code to run. " + FORMAT_REMINDER)
    return Action(thought=_thought(text[:start]), code=code, text=stored)


def _thought(pre: str) -> str:
    pre = _CODE_LABEL.sub("", pre.rstrip())
    return _THOUGHT.sub("", pre, count=1).strip()


def _strip_partial_end(s: str) -> str:
    """Drop a trailing (partial) `<end_code>` left by a cut-off generation."""
    return _PARTIAL_END.sub("", s) if s.rstrip().endswith(tuple("<>edco_n")) else s


def _dedent_code(body: str) -> str:
    lines = body.replace("\r\n", "\n").split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        return ""
    indents = [len(ln) - len(ln.lstrip()) for ln in lines if ln.strip()]
    cut = min(indents)
    return "\n".join(ln[cut:] for ln in lines)


def normalize_reply(reply: str) -> str:
    """The stored form of a reply: parsed replies get their normalized text; others are kept
    as they are, except that a reply ending with a closing fence gets `<end_code>`."""
    try:
        return parse_action(reply).text
    except ParseError:
        text = _strip_partial_end(reply.strip()) if "```" in reply else reply.strip()
        return text + END_CODE if text.endswith("```") else reply.strip()


def check_reserved_names(code: str, reserved: Iterable[str]) -> None:
    """ParseError when `code` rebinds a tool's name (def, class, assignment, import as...).

    A model that defines its own `final_answer` or `web_search` silently replaces the tool:
    the run would never end or never search. Code that does not compile is left to the
    executor, which reports the syntax error.
    """
    names = set(reserved)
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        bound: list[str] = []
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.append(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            bound.append(node.id)
        elif isinstance(node, ast.alias):
            bound.append(node.asname or node.name.split(".")[0])
        elif isinstance(node, ast.Global | ast.Nonlocal):
            bound.extend(node.names)
        for name in bound:
            if name in names:
                raise ParseError(
                    f"Your code redefines `{name}`, which is a tool that is already provided. "
                    f"Do not define or assign `{name}`; call it, e.g. `{name}(...)`. "
                    + FORMAT_REMINDER
                )
