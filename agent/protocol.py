"""Protocol profiles: every string the model sees, chosen as one unit.

A student only works with the exact protocol it was trained on, so the texts around the
model live in one `Protocol` value instead of constants spread over the loop:

- `prompts`: the system prompt per role (`student`, `teacher`, or any role a profile names;
  `AgentConfig.prompt` picks one, a path to a prompt file still works),
- `tools`: how the tool list inside the system prompt is rendered, `tool_docs`: the
  signature and description shown for a tool,
- `task`: the text before and after the question in the first user turn,
- `final_answer.request`: the user turn of the extra call made when the steps run out,
- `observation`: the success and error turns (`ObservationLayout`),
- `web_search`: the tool's output layout (`retrieval.tool.SearchLayout`),
- `stop`: the generation stop strings.

The reply grammar (`Thought:` / `Code:` / a ```py fence / `<end_code>`) is parsed by
agent/parsing.py and is not part of a profile.

`load_protocol(spec)` accepts a built-in name (`default`: this project's protocol, byte for
byte what the code produced before profiles existed; `paper`: the conventions of the
paper's public code that are known facts, in this project's words), a profile file
(`.toml` or `.json`, format in docs/protocol.md), or an exported checkpoint folder holding
`distillery_protocol.json`. A profile file states only what differs from its base
(`extends`, default `default`). Bad files raise `ProtocolError` naming the file, the key
and, where it can be found, the line. Loaded profiles are cached per file (path, mtime,
size), so calling `load_protocol` once per run costs a stat.

`Protocol.to_dict()` is the self-contained form (every text inline, no `extends`, no file
references) that `train build-data` records beside its data and `export` writes into the
checkpoint; `load_protocol` reads it back to an equal `Protocol`. `sha256` fingerprints
what the model sees (name and description excluded); `turns_sha256` only the parts that
appear verbatim inside recorded transcripts (observation and web_search layouts), which
`build-data` compares between generation and training.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from agent.model_client import PROTOCOL_STOP
from retrieval.tool import SearchLayout

__all__ = [
    "BUILTIN_PROTOCOLS",
    "DEFAULT_OBSERVATION",
    "FINAL_ANSWER_REQUEST",
    "INSTRUCTION_SUFFIX",
    "ObservationLayout",
    "PROTOCOL_FILE",
    "Protocol",
    "ProtocolError",
    "RETRY_INSTRUCTION",
    "STATE_LOST_NOTE",
    "TASK_PREFIX",
    "ToolDoc",
    "checkpoint_protocol_file",
    "default_protocol",
    "fill",
    "load_protocol",
    "resolve_protocol_spec",
]

PROTOCOL_FILE = "distillery_protocol.json"
"""The profile inside an exported checkpoint folder (next to the model card)."""
FORMAT_VERSION = 1
BUILTIN_PROTOCOLS = ("default", "paper")
_BUILTIN_FILES = {"paper": "paper.protocol.toml"}
_BUILTIN_PROMPT_ROLES = ("student", "teacher")

# ---------------------------------------------------------------- the default texts
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

RETRY_INSTRUCTION = (
    "Fix the error and try again with corrected code; "
    "if the same approach keeps failing, try a different one."
)
STATE_LOST_NOTE = (
    "Note: the Python session was restarted, so variables, imports and functions "
    "from earlier steps are gone; define again what you need."
)
TOOL_ENTRY = "- {{signature}}\n    {{description}}"
TOOL_SEPARATOR = "\n"
TOOL_FALLBACK = "\n\nTools you can call as functions:\n{{tool_list}}\n"
"""Appended (after trailing newlines are stripped) to a prompt without {{tool_list}}."""

_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


class ProtocolError(ValueError):
    """A profile that cannot be used; the message names the file, the key and the fix."""


def fill(template: str, values: Mapping[str, str]) -> str:
    """Replace each `{{name}}` found in `values`, in one pass (values are not rescanned)."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


# ---------------------------------------------------------------- the value types
@dataclass(frozen=True)
class ObservationLayout:
    """The user turn after each step. Steps count from 1; `{{logs}}` ends in a newline
    when not empty; long parts are cut in the middle around `truncation_marker`."""

    success: str = (
        "Call id: call_{{step}}\nObservation:\nExecution logs:\n{{logs}}"
        "Last output from code snippet:\n{{value}}{{state_lost}}"
    )
    """Placeholders {{step}}, {{logs}}, {{value}} (repr of the last value), {{state_lost}}."""
    error: str = "Call id: call_{{step}}\nError:\n{{error}}\n{{state_lost}}{{retry}}"
    """Parse and execution errors; placeholders {{step}}, {{error}}, {{state_lost}}, {{retry}}."""
    retry: str = RETRY_INSTRUCTION
    """What {{retry}} becomes: the instruction to try again."""
    state_lost_success: str = "\n" + STATE_LOST_NOTE
    """What {{state_lost}} becomes in `success` when the worker was restarted (else empty)."""
    state_lost_error: str = STATE_LOST_NOTE + "\n"
    """What {{state_lost}} becomes in `error` when the worker was restarted (else empty)."""
    truncation_marker: str = "\n[... {{dropped}} characters truncated ...]\n"
    """Stands for the cut middle of a long part; placeholder {{dropped}} (a count)."""

    def marker(self, dropped: int) -> str:
        return fill(self.truncation_marker, {"dropped": str(dropped)})

    def render_success(self, step: int, logs: str, value: str, state_lost: bool) -> str:
        return fill(
            self.success,
            {
                "step": str(step),
                "logs": logs,
                "value": value,
                "state_lost": self.state_lost_success if state_lost else "",
            },
        )

    def render_error(self, step: int, error: str, state_lost: bool) -> str:
        return fill(
            self.error,
            {
                "step": str(step),
                "error": error,
                "state_lost": self.state_lost_error if state_lost else "",
                "retry": self.retry,
            },
        )


DEFAULT_OBSERVATION = ObservationLayout()


@dataclass(frozen=True)
class ToolDoc:
    """How one tool is shown in the system prompt; None keeps the built-in text."""

    name: str
    signature: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class Protocol:
    """Every model-visible string of one protocol (see the module docstring)."""

    name: str = "default"
    description: str = ""
    prompts: tuple[tuple[str, str], ...] = ()
    """(role, template) pairs; templates may use {{tool_list}} and {{authorized_imports}}."""
    tool_entry: str = TOOL_ENTRY
    tool_separator: str = TOOL_SEPARATOR
    tool_fallback: str = TOOL_FALLBACK
    tool_docs: tuple[ToolDoc, ...] = ()
    task_prefix: str = TASK_PREFIX
    task_suffix: str = INSTRUCTION_SUFFIX
    final_answer_request: str = FINAL_ANSWER_REQUEST
    observation: ObservationLayout = field(default_factory=ObservationLayout)
    web_search: SearchLayout = field(default_factory=SearchLayout)
    stop: tuple[str, ...] = tuple(PROTOCOL_STOP)

    # -- lookups -------------------------------------------------------------------
    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(role for role, _ in self.prompts)

    def prompt(self, role: str) -> str | None:
        """The system prompt template of `role`, None when the profile has no such role."""
        for r, text in self.prompts:
            if r == role:
                return text
        return None

    def tool_doc(self, name: str) -> ToolDoc | None:
        for doc in self.tool_docs:
            if doc.name == name:
                return doc
        return None

    def with_prompt(self, role: str, template: str) -> Protocol:
        """The same profile with `role`'s system prompt replaced (or added)."""
        prompts = dict(self.prompts)
        prompts[role] = template
        return replace(self, prompts=tuple(prompts.items()))

    # -- the self-contained form -----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every text inline; `load_protocol` / `protocol_from_dict` read it back."""
        docs: dict[str, dict[str, str]] = {}
        for d in self.tool_docs:
            entry = {}
            if d.signature is not None:
                entry["signature"] = d.signature
            if d.description is not None:
                entry["description"] = d.description
            docs[d.name] = entry
        return {
            "version": FORMAT_VERSION,
            "name": self.name,
            "description": self.description,
            "prompts": dict(self.prompts),
            "tools": {
                "entry": self.tool_entry,
                "separator": self.tool_separator,
                "fallback": self.tool_fallback,
            },
            "tool_docs": docs,
            "task": {"prefix": self.task_prefix, "suffix": self.task_suffix},
            "final_answer": {"request": self.final_answer_request},
            "observation": _fields(self.observation),
            "web_search": _fields(self.web_search),
            "stop": list(self.stop),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @functools.cached_property
    def sha256(self) -> str:
        """Fingerprint of what the model sees (name and description do not count)."""
        d = self.to_dict()
        for key in ("version", "name", "description"):
            d.pop(key)
        return _digest(d)

    @functools.cached_property
    def turns_sha256(self) -> str:
        """Fingerprint of the layouts recorded verbatim inside transcripts."""
        d = self.to_dict()
        return _digest({"observation": d["observation"], "web_search": d["web_search"]})

    def fingerprint(self) -> dict[str, str]:
        return {"name": self.name, "sha256": self.sha256, "turns_sha256": self.turns_sha256}


def _fields(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- the file schema
_STR, _INT, _STRLIST, _PROMPT = "a string", "an integer", "a list of strings", "prompt"
_SECTIONS: dict[str, dict[str, str]] = {
    "tools": {"entry": _STR, "separator": _STR, "fallback": _STR},
    "task": {"prefix": _STR, "suffix": _STR},
    "final_answer": {"request": _STR},
    "observation": {f.name: _STR for f in fields(ObservationLayout)},
    "web_search": {
        "header": _STR, "document": _STR, "number_start": _INT, "score_decimals": _INT,
        "no_results": _STR,
    },  # fmt: skip
}
_TOP: dict[str, str] = {
    "version": _INT, "name": _STR, "description": _STR, "extends": _STR, "stop": _STRLIST,
}  # fmt: skip
_TABLES = ("prompts", "tool_docs", *_SECTIONS)
_PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "tools.entry": ("name", "signature", "description"),
    "tools.fallback": ("tool_list",),
    "observation.success": ("step", "logs", "value", "state_lost"),
    "observation.error": ("step", "error", "state_lost", "retry"),
    "observation.truncation_marker": ("dropped",),
    "web_search.document": ("number", "score", "title", "text"),
    "web_search.no_results": ("header", "query"),
}
_REQUIRED_PLACEHOLDERS: dict[str, tuple[str, ...]] = {"tools.fallback": ("tool_list",)}


class _Source:
    """Where a profile came from, for error messages (file name and line lookup)."""

    def __init__(self, label: str, text: str | None = None, base_dir: Path | None = None):
        self.label = label
        self.text = text
        self.base_dir = base_dir

    def error(self, key: str | None, message: str) -> ProtocolError:
        where = f"protocol {self.label}"
        if key:
            line = self.line_of(key)
            where += f": key '{key}'" + (f" (line {line})" if line else "")
        return ProtocolError(f"{where}: {message}")

    def line_of(self, key: str) -> int | None:
        """Best effort: the line that sets `key`, finding each part of the dotted key (a
        TOML `name =` / `[table]` or a JSON `"name":`) at or after the previous part."""
        if not self.text:
            return None
        lines = self.text.splitlines()
        start = 0
        for part in key.split("."):
            word = re.escape(part)
            pattern = re.compile(rf'^\s*("{word}"\s*:|{word}\s*=|\[+[^\]]*\b{word}\b[^\]]*\]+)')
            for i in range(start, len(lines)):
                if pattern.search(lines[i]):
                    start = i
                    break
            else:
                return None
        return start + 1


def _check_type(src: _Source, key: str, value: Any, kind: str) -> None:
    ok = {
        _STR: isinstance(value, str),
        _INT: isinstance(value, int) and not isinstance(value, bool),
        _STRLIST: isinstance(value, list) and all(isinstance(v, str) for v in value),
    }[kind]
    if not ok:
        raise src.error(key, f"must be {kind}, not {_describe(value)}")


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"[:80]


def _unknown(src: _Source, key: str, allowed: list[str]) -> ProtocolError:
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, allowed, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return src.error(key, f"is not a protocol key{hint}; known here: {', '.join(allowed)}")


def _check_placeholders(src: _Source, key: str, text: str) -> None:
    allowed = _PLACEHOLDERS.get(key)
    if allowed is None:
        return
    used = set(_PLACEHOLDER.findall(text))
    unknown = sorted(used - set(allowed))
    if unknown:
        raise src.error(
            key,
            f"unknown placeholder {{{{{unknown[0]}}}}}; this text may use "
            + ", ".join(f"{{{{{a}}}}}" for a in allowed),
        )
    for need in _REQUIRED_PLACEHOLDERS.get(key, ()):
        if need not in used:
            raise src.error(key, f"must contain {{{{{need}}}}}")


def _read_prompt(src: _Source, key: str, value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, dict) and set(value) == {"file"} and isinstance(value["file"], str):
        path = Path(value["file"]).expanduser()
        if not path.is_absolute():
            if src.base_dir is None:
                raise src.error(key, "a relative prompt file needs a profile read from a file")
            path = src.base_dir / path
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise src.error(key, f"cannot read prompt file {path}: {e.strerror or e}") from None
    else:
        raise src.error(key, 'must be the prompt text or a table {file = "PATH"}')
    if not text.strip():
        raise src.error(key, "the prompt is empty")
    return text


_FLAT = {
    ("tools", "entry"): "tool_entry",
    ("tools", "separator"): "tool_separator",
    ("tools", "fallback"): "tool_fallback",
    ("task", "prefix"): "task_prefix",
    ("task", "suffix"): "task_suffix",
    ("final_answer", "request"): "final_answer_request",
}
"""Section keys that set a plain text field of Protocol."""


def _apply(base: Protocol, data: Mapping[str, Any], src: _Source) -> Protocol:
    """`base` with the keys of a parsed profile applied (every key checked)."""
    _check_top(data, src)
    changes: dict[str, Any] = {k: data[k] for k in ("name", "description") if k in data}
    if "stop" in data:
        if not data["stop"] or any(not s for s in data["stop"]):
            raise src.error("stop", "must list at least one non-empty stop string")
        changes["stop"] = tuple(data["stop"])
    if "prompts" in data:
        changes["prompts"] = _merge_prompts(base, data["prompts"], src)
    if "tool_docs" in data:
        changes["tool_docs"] = _merge_tool_docs(base, data["tool_docs"], src)
    sections = {name: _checked_section(name, data.get(name, {}), src) for name in _SECTIONS}
    for (section, sub), attr in _FLAT.items():
        if sub in sections[section]:
            changes[attr] = sections[section][sub]
    if sections["observation"]:
        changes["observation"] = replace(base.observation, **sections["observation"])
    if sections["web_search"]:
        try:
            changes["web_search"] = replace(base.web_search, **sections["web_search"])
        except ValueError as e:  # the layout's own range checks
            bad = next((k for k in sections["web_search"] if k in str(e)), None)
            raise src.error(f"web_search.{bad}" if bad else "web_search", str(e)) from None
    return replace(base, **changes)


def _check_top(data: Mapping[str, Any], src: _Source) -> None:
    for key, value in data.items():
        if key in _TOP:
            _check_type(src, key, value, _TOP[key])
        elif key in _TABLES:
            if not isinstance(value, dict):
                raise src.error(key, f"must be a table, not {_describe(value)}")
        else:
            raise _unknown(src, key, [*_TOP, *_TABLES])
    if "version" in data and data["version"] != FORMAT_VERSION:
        raise src.error("version", f"this release reads version {FORMAT_VERSION} profiles")


def _checked_section(section: str, values: Mapping[str, Any], src: _Source) -> dict[str, Any]:
    schema = _SECTIONS[section]
    for sub, value in values.items():
        key = f"{section}.{sub}"
        if sub not in schema:
            raise _unknown(src, key, list(schema))
        _check_type(src, key, value, schema[sub])
        if schema[sub] == _STR:
            _check_placeholders(src, key, value)
    return dict(values)


def _merge_prompts(
    base: Protocol, table: Mapping[str, Any], src: _Source
) -> tuple[tuple[str, str], ...]:
    prompts = dict(base.prompts)
    for role, value in table.items():
        if not role.isidentifier():
            raise src.error(f"prompts.{role}", "a role name must be an identifier")
        prompts[role] = _read_prompt(src, f"prompts.{role}", value)
    return tuple(prompts.items())


def _merge_tool_docs(
    base: Protocol, table: Mapping[str, Any], src: _Source
) -> tuple[ToolDoc, ...]:
    docs = {d.name: d for d in base.tool_docs}
    for name, value in table.items():
        key = f"tool_docs.{name}"
        if not name.isidentifier():
            raise src.error(key, "a tool name must be a Python identifier")
        if not isinstance(value, dict):
            raise src.error(key, "must be a table with signature and/or description")
        for sub, text in value.items():
            if sub not in ("signature", "description"):
                raise _unknown(src, f"{key}.{sub}", ["signature", "description"])
            _check_type(src, f"{key}.{sub}", text, _STR)
        old = docs.get(name, ToolDoc(name))
        docs[name] = ToolDoc(
            name, value.get("signature", old.signature), value.get("description", old.description)
        )
    return tuple(docs.values())


# ---------------------------------------------------------------- loading
def _builtin_prompt(role: str) -> str:
    return (resources.files("agent.prompt_files") / f"{role}.md").read_text(encoding="utf-8")


@functools.cache
def default_protocol() -> Protocol:
    """This project's protocol: the built-in student and teacher prompts and the texts above."""
    return Protocol(
        name="default",
        description="distillery's own protocol (documents numbered from 1, scores with 3 "
        "decimals)",
        prompts=tuple((role, _builtin_prompt(role)) for role in _BUILTIN_PROMPT_ROLES),
    )


def protocol_from_dict(
    data: Mapping[str, Any], *, label: str = "<dict>", base_dir: Path | None = None,
    text: str | None = None, _seen: frozenset[str] = frozenset(),
) -> Protocol:  # fmt: skip
    """A profile from its parsed form (a file's tables, or `Protocol.to_dict()`)."""
    src = _Source(label, text, base_dir)
    if not isinstance(data, Mapping):
        raise src.error(None, "a profile is a table of keys (see docs/protocol.md)")
    extends = data.get("extends", "default")
    if not isinstance(extends, str):
        raise src.error("extends", f"must be a string, not {_describe(extends)}")
    if extends == "default":
        base = default_protocol()
    elif extends in BUILTIN_PROTOCOLS:
        base = load_protocol(extends)
    else:
        path = Path(extends).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        key = str(path.resolve())
        if key in _seen:
            raise src.error("extends", f"{path} extends itself (a cycle)")
        try:
            base = _load_file(path, _seen | {key})
        except ProtocolError as e:
            raise src.error("extends", str(e)) from None
    out = _apply(base, data, src)
    if "name" not in data and base_dir is not None and label.endswith((".toml", ".json")):
        out = replace(out, name=Path(label).stem.removesuffix(".protocol"))
    return out


def _parse(path: Path, text: str) -> dict[str, Any]:
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ProtocolError(f"protocol {path}: not valid TOML: {e}") from None
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ProtocolError(
                f"protocol {path}: not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})"
            ) from None
        if not isinstance(data, dict):
            raise ProtocolError(f"protocol {path}: the top level must be a JSON object")
        return data
    raise ProtocolError(
        f"protocol {path}: unknown file type {path.suffix or '(none)'!r}; "
        "write the profile as .toml or .json"
    )


def _load_file(path: Path, seen: frozenset[str] = frozenset()) -> Protocol:
    try:
        st = path.stat()
    except OSError:
        raise ProtocolError(
            f"protocol {path} does not exist: give a built-in name "
            f"({', '.join(BUILTIN_PROTOCOLS)}), a .toml/.json profile or an exported checkpoint "
            f"folder holding {PROTOCOL_FILE}"
        ) from None
    return _load_file_cached(str(path), st.st_mtime_ns, st.st_size, seen)


@functools.lru_cache(maxsize=64)
def _load_file_cached(path_s: str, _mtime: int, _size: int, seen: frozenset[str]) -> Protocol:
    path = Path(path_s).resolve()
    path_s = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ProtocolError(f"protocol {path}: cannot read it: {e}") from None
    data = _parse(path, text)
    return protocol_from_dict(
        data, label=str(path), base_dir=path.parent, text=text, _seen=seen | {path_s}
    )


def load_protocol(spec: str | os.PathLike[str] | None = None) -> Protocol:
    """A built-in name, a profile file or a checkpoint folder -> the Protocol (None: default)."""
    if spec is None or spec == "" or spec == "default":
        return default_protocol()
    if isinstance(spec, str) and spec in _BUILTIN_FILES:
        return _load_builtin(spec)
    path = Path(spec).expanduser()
    if os.path.isdir(path):
        inner = path / PROTOCOL_FILE
        if not inner.is_file():
            raise ProtocolError(
                f"protocol folder {path} has no {PROTOCOL_FILE} (not a checkpoint exported by "
                "`distillery export`?): pass the profile file itself or a built-in name "
                f"({', '.join(BUILTIN_PROTOCOLS)})"
            )
        path = inner
    return _load_file(path)


@functools.cache
def _load_builtin(name: str) -> Protocol:
    text = (resources.files("agent.prompt_files") / _BUILTIN_FILES[name]).read_text("utf-8")
    data = tomllib.loads(text)
    return protocol_from_dict(data, label=f"built-in '{name}'", text=text)


def checkpoint_protocol_file(folder: str | os.PathLike[str] | None) -> Path | None:
    """`folder/distillery_protocol.json` when `folder` is a local folder that has one."""
    if folder is None:
        return None
    try:
        path = Path(folder).expanduser()
        candidate = path / PROTOCOL_FILE
        return candidate if path.is_dir() and candidate.is_file() else None
    except (OSError, ValueError):
        return None


def resolve_protocol_spec(
    explicit: str | None, *model_locations: str | os.PathLike[str] | None
) -> str | None:
    """The profile in force: `explicit` when set; else the profile exported with the model
    (the first of `model_locations` that is a checkpoint folder holding one); else None
    (the default profile)."""
    if explicit:
        return explicit
    for location in model_locations:
        found = checkpoint_protocol_file(location)
        if found is not None:
            return str(found.parent.resolve())
    return None
