"""Prompts: the system prompt (a data file rendered with the tool list), the task message,
and the final-answer request used when the steps run out.

Built-in prompt files live in agent/prompt_files/: `teacher` (rules and worked examples)
and `student` (short). A user prompt file is any text file; these placeholders are
replaced: `{{tool_list}}` (one entry per tool, final_answer included) and
`{{authorized_imports}}`. A file without `{{tool_list}}` gets the tool list appended.

Every text comes from a protocol profile (agent/protocol.py); without one, the default
profile, whose texts are the constants re-exported here. A prompt name is first looked up
among the profile's roles (`student`, `teacher`, or any role it defines), then as a
built-in prompt, then as a file.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

from agent.model_client import Message
from agent.protocol import (
    FINAL_ANSWER_REQUEST,
    INSTRUCTION_SUFFIX,
    TASK_PREFIX,
    Protocol,
    default_protocol,
    fill,
)
from agent.tools import ToolSpec, tool_specs

__all__ = [
    "AUTHORIZED_IMPORTS",
    "BUILTIN_PROMPTS",
    "DEFAULT_AUTHORIZED_IMPORTS",
    "FINAL_ANSWER_REQUEST",
    "INSTRUCTION_SUFFIX",
    "PromptError",
    "TASK_PREFIX",
    "TOOL_LIST",
    "initial_messages",
    "load_prompt_template",
    "render_system_prompt",
    "render_tools",
    "system_prompt",
    "system_prompt_template",
    "task_message",
]

BUILTIN_PROMPTS = ("student", "teacher")

TOOL_LIST = "{{tool_list}}"
AUTHORIZED_IMPORTS = "{{authorized_imports}}"

DEFAULT_AUTHORIZED_IMPORTS = (
    "math", "statistics", "itertools", "collections", "re", "datetime", "fractions",
    "decimal", "json", "random", "numpy", "sympy",
)  # fmt: skip


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


def render_tools(tool_names: Iterable[str | ToolSpec], protocol: Protocol | None = None) -> str:
    """The tool list of the system prompt: host tools (names or their providers' specs) then
    final_answer, each rendered with the profile's entry template and its
    signature/description overrides."""
    protocol = protocol or default_protocol()
    entries = []
    for spec in tool_specs(tool_names):
        doc = protocol.tool_doc(spec.name)
        values = {
            "name": spec.name,
            "signature": doc.signature if doc and doc.signature is not None else spec.signature,
            "description": (
                doc.description if doc and doc.description is not None else spec.description
            ),
        }
        entries.append(fill(protocol.tool_entry, values))
    return protocol.tool_separator.join(entries)


def render_system_prompt(
    template: str,
    tool_names: Iterable[str | ToolSpec],
    authorized_imports: Sequence[str] = DEFAULT_AUTHORIZED_IMPORTS,
    protocol: Protocol | None = None,
) -> str:
    protocol = protocol or default_protocol()
    tools = render_tools(tool_names, protocol)
    if TOOL_LIST in template:
        text = template.replace(TOOL_LIST, tools)
    else:
        text = template.rstrip("\n") + fill(protocol.tool_fallback, {"tool_list": tools})
    return text.replace(AUTHORIZED_IMPORTS, ", ".join(authorized_imports))


def system_prompt_template(prompt: str, protocol: Protocol | None = None) -> str:
    """The template of `prompt`: a role of the profile, else a built-in prompt or a file."""
    protocol = protocol or default_protocol()
    text = protocol.prompt(prompt)
    if text is not None:
        return text
    try:
        return load_prompt_template(prompt)
    except PromptError as e:
        extra = [r for r in protocol.roles if r not in BUILTIN_PROMPTS]
        if not extra:
            raise
        raise PromptError(
            f"{e}, nor a role of protocol {protocol.name!r} ({', '.join(extra)})"
        ) from None


def system_prompt(
    prompt: str,
    tool_names: Iterable[str | ToolSpec],
    authorized_imports: Sequence[str] = DEFAULT_AUTHORIZED_IMPORTS,
    protocol: Protocol | None = None,
) -> str:
    return render_system_prompt(
        system_prompt_template(prompt, protocol), tool_names, authorized_imports, protocol
    )


def task_message(
    question: str, suffix: str | None = None, *, protocol: Protocol | None = None
) -> str:
    """The first user turn; `suffix` None: the profile's instruction suffix."""
    protocol = protocol or default_protocol()
    if suffix is None:
        suffix = protocol.task_suffix
    return f"{protocol.task_prefix}{question.strip()}{suffix}"


def initial_messages(
    question: str,
    *,
    prompt: str = "student",
    tool_names: Iterable[str | ToolSpec] = (),
    authorized_imports: Sequence[str] = DEFAULT_AUTHORIZED_IMPORTS,
    protocol: Protocol | None = None,
) -> list[Message]:
    """The system prompt and the task: the start of every transcript."""
    return [
        {
            "role": "system",
            "content": system_prompt(prompt, tool_names, authorized_imports, protocol),
        },
        {"role": "user", "content": task_message(question, protocol=protocol)},
    ]
