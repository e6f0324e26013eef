"""Prompts: the system prompt (a data file rendered with the tool list), the task message,
and the final-answer request used when the steps run out.

Built-in prompt files live in agent/prompt_files/: `teacher` (rules and worked examples)
and `student` (short). A user prompt file is any text file; these placeholders are
replaced: `{{tool_list}}` (one entry per tool, final_answer included) and
`{{authorized_imports}}`. A file without `{{tool_list}}` gets the tool list appended.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

from agent.model_client import Message
from agent.tools import render_tool_list

BUILTIN_PROMPTS = ("student", "teacher")

TOOL_LIST = "{{tool_list}}"
AUTHORIZED_IMPORTS = "{{authorized_imports}}"

DEFAULT_AUTHORIZED_IMPORTS = (
    "math", "statistics", "itertools", "collections", "re", "datetime", "fractions",
    "decimal", "json", "random", "numpy", "sympy",
)  # fmt: skip

TASK_PREFIX = "New task:\n"
INSTRUCTION_SUFFIX = (
    "\n\nSolve it step by step: each reply is a 'Thought:' and a 'Code:' block ending in "
    "<end_code>. Call final_answer(answer) with just the answer when you know it."
)
"""Appended to every question (part of the protocol the students are trained on)."""

FINAL_ANSWER_REQUEST = (
    "You have used all your steps. Based on everything above, give your final answer now, "
    "in this format:\n"
    "Thought: <one sentence>\n"
    "Code:\n"
    "```py\n"
    "final_answer(<your answer>)\n"
    "```<end_code>"
)
"""The user turn of the extra model call made at max_steps."""


class PromptError(ValueError):
    """A prompt name or file that cannot be used; the message says what is accepted."""


def load_prompt_template(prompt: str) -> str:
    """'student' | 'teacher' | a path to a prompt file -> the template text."""
    if prompt in BUILTIN_PROMPTS:
        return (resources.files("agent.prompt_files") / f"{prompt}.md").read_text(encoding="utf-8")
    path = Path(prompt).expanduser()
    if not path.is_file():
        raise PromptError(
            f"prompt {prompt!r} is neither a built-in prompt ({', '.join(BUILTIN_PROMPTS)}) "
            "nor an existing file"
        )
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise PromptError(f"prompt file {path} is empty")
    return text


def render_system_prompt(
    template: str,
    tool_names: Iterable[str],
    authorized_imports: Sequence[str] = DEFAULT_AUTHORIZED_IMPORTS,
) -> str:
    tools = render_tool_list(tool_names)
    if TOOL_LIST in template:
        text = template.replace(TOOL_LIST, tools)
    else:
        text = template.rstrip("\n") + "\n\nTools you can call as functions:\n" + tools + "\n"
    return text.replace(AUTHORIZED_IMPORTS, ", ".join(authorized_imports))


def system_prompt(
    prompt: str,
    tool_names: Iterable[str],
    authorized_imports: Sequence[str] = DEFAULT_AUTHORIZED_IMPORTS,
) -> str:
    return render_system_prompt(load_prompt_template(prompt), tool_names, authorized_imports)


def task_message(question: str, suffix: str = INSTRUCTION_SUFFIX) -> str:
    return f"{TASK_PREFIX}{question.strip()}{suffix}"


def initial_messages(
    question: str,
    *,
    prompt: str = "student",
    tool_names: Iterable[str] = (),
    authorized_imports: Sequence[str] = DEFAULT_AUTHORIZED_IMPORTS,
) -> list[Message]:
    """The system prompt and the task: the start of every transcript."""
    return [
        {"role": "system", "content": system_prompt(prompt, tool_names, authorized_imports)},
        {"role": "user", "content": task_message(question)},
    ]
