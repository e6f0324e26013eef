"""How tools are described to the model: `ToolSpec` and the tool list of the system prompt.

A `ToolSpec` is what a tool provider (agent.tool_providers) lists for each of its tools:
its name (a Python identifier: the jailed code calls it as a plain function), a
description, the JSON schema of its keyword arguments and what it returns. The prompt
shows each tool as a Python signature; `spec_from_schema` renders it from the schema
(`web_search(query: str) -> str`), and a protocol profile can still replace any tool's
signature and description (agent/protocol.py, `tool_docs`).

Tool names, argument names and return layouts are part of the protocol: a student trained
on these descriptions breaks if they change. The texts of `web_search` and `final_answer`
below are what the shipped students were trained on and stay byte for byte as they are.
`final_answer` is built into every execution session.

A description from a tool server is untrusted text: `spec_from_schema` folds it onto one
line and caps its length, so it cannot lay out fake turns or headers inside the prompt.
"""

from __future__ import annotations

import json
import keyword
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FINAL_ANSWER = "final_answer"
WEB_SEARCH = "web_search"
TRAINED_TOOLS_FILE = "distillery_tools.json"
"""The tools a checkpoint was trained with (`distillery export` writes it beside the protocol
profile): `{"tools": [ToolSpec.to_json(), ...]}`."""
DESCRIPTION_MAX_CHARS = 1024
"""A listed description longer than this is cut (with '...') before it reaches the prompt."""


@dataclass(frozen=True, eq=False)
class ToolSpec:
    name: str
    signature: str
    """Python-style signature shown to the model, e.g. `web_search(query: str) -> str`."""
    description: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    """JSON schema of the keyword arguments (an object schema; {} for none known)."""
    returns: Mapping[str, Any] | None = None
    """JSON schema of the structured result; None: the tool returns text (a str)."""
    provider: str = ""
    """The provider that serves the tool (e.g. `web_search`, `mcp:<server>`)."""

    def render(self) -> str:
        return f"- {self.signature}\n    {self.description}"

    def to_json(self) -> dict[str, Any]:
        """The spec as plain JSON (recorded with trajectories, listed by GET /v1/tools)."""
        return {
            "name": self.name,
            "signature": self.signature,
            "description": self.description,
            "parameters": dict(self.parameters),
            "returns": dict(self.returns) if self.returns is not None else None,
            "provider": self.provider,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ToolSpec:
        """The spec `to_json` wrote (a record's, a checkpoint's); ValueError when it is not one."""
        name, signature = doc.get("name"), doc.get("signature")
        if not isinstance(name, str) or not isinstance(signature, str):
            raise ValueError(f"not a tool spec (needs 'name' and 'signature' strings): {doc!r}")
        returns = doc.get("returns")
        return cls(
            name=name,
            signature=signature,
            description=str(doc.get("description") or ""),
            parameters=dict(doc.get("parameters") or {}),
            returns=dict(returns) if isinstance(returns, Mapping) else None,
            provider=str(doc.get("provider") or ""),
        )


_JSON_TYPES = {
    "string": "str",
    "integer": "int",
    "number": "float",
    "boolean": "bool",
    "object": "dict",
    "null": "None",
}


def python_type(schema: Any) -> str:
    """The Python annotation for a JSON schema (`any` where it says nothing usable)."""
    if not isinstance(schema, Mapping):
        return "any"
    for union in ("anyOf", "oneOf"):
        options = schema.get(union)
        if isinstance(options, list) and options:
            return " | ".join(dict.fromkeys(python_type(o) for o in options))
    kind = schema.get("type")
    if isinstance(kind, list) and kind:
        return " | ".join(dict.fromkeys(python_type({**schema, "type": k}) for k in kind))
    if kind == "array":
        items = schema.get("items")
        return f"list[{python_type(items)}]" if isinstance(items, Mapping) and items else "list"
    if "enum" in schema and kind is None:
        return "str"
    return _JSON_TYPES.get(kind, "any") if isinstance(kind, str) else "any"


def parameter_order(parameters: Mapping[str, Any]) -> list[str]:
    """Argument names in signature order: required ones first, each group as listed."""
    props = parameters.get("properties")
    if not isinstance(props, Mapping):
        return []
    required = parameters.get("required")
    req = [n for n in props if isinstance(required, list) and n in required]
    return req + [n for n in props if n not in req]


def render_signature(name: str, parameters: Mapping[str, Any], returns: str) -> str:
    """`name(a: str, b: int = 3) -> returns` from an object schema of the arguments."""
    props = parameters.get("properties")
    props = props if isinstance(props, Mapping) else {}
    required = parameters.get("required")
    required = required if isinstance(required, list) else []
    args = []
    for arg in parameter_order(parameters):
        schema = props[arg]
        text = f"{arg}: {python_type(schema)}"
        if arg not in required:
            default = schema.get("default") if isinstance(schema, Mapping) else None
            text += f" = {default!r}"
        args.append(text)
    return f"{name}({', '.join(args)}) -> {returns}"


def one_line(text: str, limit: int = DESCRIPTION_MAX_CHARS) -> str:
    """`text` with every run of whitespace (newlines included) made one space, cut at
    `limit` characters."""
    flat = re.sub(r"\s+", " ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 3].rstrip() + "..."


def python_name(name: str) -> str:
    """A tool name as a Python identifier: other characters become `_`, a leading digit or
    a keyword gets one more `_` (`read-query` -> `read_query`, `import` -> `import_`)."""
    ident = re.sub(r"\W", "_", name, flags=re.ASCII) or "_"
    if ident[0].isdigit():
        ident = "_" + ident
    return ident + "_" if keyword.iskeyword(ident) else ident


def spec_from_schema(
    name: str,
    description: str,
    parameters: Mapping[str, Any] | None,
    returns: Mapping[str, Any] | None = None,
    provider: str = "",
) -> ToolSpec:
    """A spec whose signature is rendered from the argument schema; a result schema makes
    the return annotation its Python type (`-> dict`), none makes it `-> str`."""
    params = dict(parameters or {})
    result = python_type(returns) if returns is not None else "str"
    return ToolSpec(
        name=name,
        signature=render_signature(name, params, result),
        description=one_line(description) or "(no description)",
        parameters=params,
        returns=dict(returns) if returns is not None else None,
        provider=provider,
    )


_QUERY_SCHEMA = {
    "type": "object",
    "properties": {"query": {"type": "string"}},
    "required": ["query"],
}

KNOWN_TOOLS: dict[str, ToolSpec] = {
    WEB_SEARCH: ToolSpec(
        name=WEB_SEARCH,
        signature="web_search(query: str) -> str",
        description=(
            "Searches a Wikipedia index and returns the most relevant passages as text: "
            "'Retrieved documents:' followed by blocks '===== Document i, similarity: s =====', "
            "each with the article title in quotes and a passage. Use short, specific queries "
            "(an entity, a fact); print() the result to read it."
        ),
        parameters=_QUERY_SCHEMA,
        provider=WEB_SEARCH,
    ),
    FINAL_ANSWER: ToolSpec(
        name=FINAL_ANSWER,
        signature="final_answer(answer: any) -> None",
        description=(
            "Gives the final answer to the task and ends the run. Pass just the answer "
            "(a number, a name, a short phrase), not a sentence about it."
        ),
        parameters={"type": "object", "properties": {"answer": {}}, "required": ["answer"]},
        returns={"type": "null"},
        provider="builtin",
    ),
}


def announced(tools: Mapping[str, Any]) -> list[str | ToolSpec]:
    """What the prompt lists for a run's tools mapping: each tool's own `spec` attribute
    where it carries one (a provider's tool), else its name (looked up in KNOWN_TOOLS)."""
    out: list[str | ToolSpec] = []
    for name, fn in tools.items():
        spec = getattr(fn, "spec", None)
        out.append(spec if isinstance(spec, ToolSpec) and spec.name == name else name)
    return out


def tool_specs(tools: Iterable[str | ToolSpec]) -> list[ToolSpec]:
    """Specs for the host tools given (names or specs), then final_answer (always
    available), in that order.

    A name this module does not know gets a generic description so it is at least listed.
    """
    specs: list[ToolSpec] = []
    seen: set[str] = set()
    for item in tools:
        name = item.name if isinstance(item, ToolSpec) else item
        if name == FINAL_ANSWER or name in seen:
            continue
        seen.add(name)
        if not name.isidentifier():
            raise ValueError(f"tool name {name!r} is not a Python identifier")
        if isinstance(item, ToolSpec):
            specs.append(item)
            continue
        specs.append(
            KNOWN_TOOLS.get(name)
            or ToolSpec(name, f"{name}(*args, **kwargs) -> str", "A host tool (no description).")
        )
    specs.append(KNOWN_TOOLS[FINAL_ANSWER])
    return specs


def render_tool_list(tools: Iterable[str | ToolSpec]) -> str:
    return "\n".join(spec.render() for spec in tool_specs(tools))


def host_tool_specs(tools: Mapping[str, Any]) -> list[ToolSpec]:
    """The specs the prompt lists for a run's tools mapping, final_answer left out."""
    return [s for s in tool_specs(announced(tools)) if s.name != FINAL_ANSWER]


def trained_tools_file(location: str | os.PathLike[str] | None) -> Path | None:
    """`distillery_tools.json` of a checkpoint: `location` is its folder or the protocol
    profile file inside it (what `Settings.protocol_spec()` resolves to); None when absent."""
    if location is None:
        return None
    from agent.protocol import PROTOCOL_FILE

    try:
        path = Path(location).expanduser()
        if path.is_dir():
            folder = path
        elif path.name == PROTOCOL_FILE and path.is_file():
            folder = path.parent
        else:  # a built-in profile name or a profile file of its own: no checkpoint
            return None
        candidate = folder / TRAINED_TOOLS_FILE
        return candidate if candidate.is_file() else None
    except (OSError, ValueError):
        return None


def read_trained_tools(location: str | os.PathLike[str] | None) -> list[ToolSpec] | None:
    """The tools the checkpoint at `location` was trained with; None when it records none
    (a base model, an export from before tools were recorded). ValueError on a bad file."""
    path = trained_tools_file(location)
    if path is None:
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return [ToolSpec.from_json(t) for t in doc["tools"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} is not a trained-tools file: {e}") from None
