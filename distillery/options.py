"""CLI flags generated from Settings fields, the exit codes, and the one-line failure format.

A command lists the Settings fields it uses; `add_settings_flags` makes one flag per field
(`sandbox_memory_mb` -> `--sandbox-memory-mb`; type, choices and help from the field), every
flag defaulting to "unset" so that an unset flag leaves the DISTILLERY_* variable, then the
field's default, in charge. `settings_from_args` builds the Settings; a value that does not
validate is a `UsageError` naming the flag.

Exit codes shared by every command: 0 done, 1 failed / no answer, 2 usage or configuration
error, 3 the model could not be reached or failed, 130 interrupted (rerun to resume).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr, ValidationError

from distillery.settings import Settings, set_in_environment

__all__ = [
    "AGENT_FIELDS",
    "ALIASES",
    "MODEL_FIELDS",
    "RETRIEVAL_FIELDS",
    "SANDBOX_FIELDS",
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_MODEL",
    "EXIT_OK",
    "UsageError",
    "add_dataclass_flags",
    "add_settings_flags",
    "dataclass_values",
    "emit",
    "fail",
    "flag_name",
    "settings_from_args",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_MODEL = 3
EXIT_INTERRUPTED = 130

# Settings fields by concern: a command lists the groups it uses (flags generated from them).
MODEL_FIELDS = ["model_url", "model", "model_path", "model_api_key", "engine_threads"]
AGENT_FIELDS = [
    "samples", "max_steps", "policy", "temperature", "top_p", "max_tokens", "seed", "prompt",
    "protocol", "observation_max_chars", "stuck_detection", "stream",
]
SANDBOX_FIELDS = [
    "executor", "sandbox_pool_size", "sandbox_reuse_idle", "sandbox_fork_width",
    "sandbox_spare_candidates",
    "sandbox_memory_mb", "sandbox_pids",
    "sandbox_step_timeout_s", "sandbox_cpu_s", "sandbox_file_size_mb", "sandbox_tmpfs_mb",
    "sandbox_output_max_bytes", "sandbox_allowed_imports", "sandbox_cgroup_mode",
    "sandbox_uid_base", "sandbox_uid_count", "sandbox_tool_args_max_bytes",
    "sandbox_tool_args_step_max_bytes", "sandbox_freeze_between_steps",
]
RETRIEVAL_FIELDS = ["es_url", "es_index", "es_api_key", "index_dir", "search_k", "search_timeout_s"]
# Conventional spellings kept from earlier releases.
ALIASES: dict[str, list[str]] = {
    "samples": ["--samples", "-n"],
    "engine_threads": ["--threads", "--engine-threads"],
}


class UsageError(Exception):
    """A flag or variable value that cannot work; the message names it and says why."""


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _unwrap_optional(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _argparse_kwargs(annotation: Any) -> dict[str, Any]:
    annotation = _unwrap_optional(annotation)
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return {"choices": list(typing.get_args(annotation))}
    if origin is list:
        (item,) = typing.get_args(annotation) or (str,)
        return {"action": "append", "type": _scalar(item), "metavar": "VALUE"}
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    return {"type": _scalar(annotation)}


def _scalar(annotation: Any) -> Any:
    if annotation in (int, float, Path):
        return annotation
    return str  # str, SecretStr: pydantic converts


def _help(name: str, extra: str | None = None) -> str:
    field = Settings.model_fields[name]
    text = (extra or field.description or name.replace("_", " ")).rstrip(".")
    default = field.get_default(call_default_factory=True)
    if isinstance(default, SecretStr) or "key" in name:
        shown = "unset" if not default else "set"
    elif default is None or default == []:
        shown = "unset"
    else:
        shown = str(default)
    return f"{text} [DISTILLERY_{name.upper()}; default: {shown}]".replace("%", "%%")


def add_settings_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    names: Iterable[str],
    *,
    flags: Mapping[str, list[str]] | None = None,
    helps: Mapping[str, str] | None = None,
) -> None:
    """One flag per Settings field in `names`; `flags` renames/aliases (e.g. `-n`)."""
    flags = flags or {}
    helps = helps or {}
    for name in names:
        if name not in Settings.model_fields:
            raise KeyError(f"Settings has no field {name!r}")
        option_strings = flags.get(name) or [flag_name(name)]
        kwargs = _argparse_kwargs(Settings.model_fields[name].annotation)
        parser.add_argument(
            *option_strings, dest=name, default=None, help=_help(name, helps.get(name)), **kwargs
        )


def add_dataclass_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    names: Iterable[str],
    *,
    flags: Mapping[str, list[str]] | None = None,
) -> None:
    """One flag per field of dataclass `cls` (type, choices and help from the field, its
    docstring and its default); every flag defaults to unset, so the dataclass keeps its
    default. Read them back with `dataclass_values(args, cls, names)`."""
    from distillery.settings import field_docs

    hints = _field_types(cls, names)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    docs = field_docs(cls)
    for name in names:
        option_strings = (flags or {}).get(name) or [flag_name(name)]
        default = defaults[name]
        shown = "unset" if default in (None, dataclasses.MISSING) else str(default)
        text = (docs.get(name) or name.replace("_", " ")).rstrip(".")
        parser.add_argument(
            *option_strings,
            dest=name,
            default=None,
            help=f"{text} [default: {shown}]".replace("%", "%%"),
            **_argparse_kwargs(hints[name]),
        )


def _field_types(cls: type, names: Iterable[str]) -> dict[str, Any]:
    """The evaluated annotations of `names` (others may name types imported only for mypy)."""
    import sys

    module_globals = vars(sys.modules[cls.__module__])
    types_by_name = {f.name: f.type for f in dataclasses.fields(cls)}
    out = {}
    for name in names:
        t = types_by_name[name]
        out[name] = eval(t, module_globals) if isinstance(t, str) else t  # noqa: S307
    return out


def dataclass_values(args: argparse.Namespace, cls: type, names: Iterable[str]) -> dict[str, Any]:
    """The fields of `cls` whose flags were given (for `cls(**values)`)."""
    del cls  # (the names are the dataclass's fields)
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def settings_from_args(
    args: argparse.Namespace,
    names: Iterable[str],
    *,
    command_defaults: Mapping[str, Any] | None = None,
    **values: Any,
) -> Settings:
    """Settings from the flags in `names` that were given, then DISTILLERY_*, then defaults.

    `command_defaults` apply only where neither a flag nor the variable sets the field (a
    command's own default, e.g. `generate` uses the teacher prompt); `values` always win.
    """
    chosen: dict[str, Any] = {}
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            chosen[name] = value
    for name, value in (command_defaults or {}).items():
        if name not in chosen and not set_in_environment(name):
            chosen[name] = value
    chosen.update({k: v for k, v in values.items() if v is not None})
    if chosen.get("model_url") and chosen.get("model_path"):
        raise UsageError("use either --model-url or --model-path, not both")
    try:
        return Settings(**chosen)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            field = ".".join(map(str, err["loc"]))
            top = str(err["loc"][0]) if err["loc"] else field
            where = f"{flag_name(top)} / DISTILLERY_{top.upper()}" if top else field
            problems.append(f"{field} ({where}): {err['msg']}")
        raise UsageError("invalid option: " + "; ".join(problems)) from None


def emit(summary: Mapping[str, Any]) -> None:
    """The JSON summary: always the last line on stdout."""
    print(json.dumps(dict(summary), ensure_ascii=False, default=str), flush=True)


def fail(message: str, code: int, *, json_line: bool = False, **extra: Any) -> int:
    """One line on stderr (`distillery: error: ...`); with `json_line`, the JSON summary too
    (`{"ok": false, "error", "exit_code", **extra}`)."""
    message = " ".join(str(message).split())
    print(f"distillery: error: {message}", file=sys.stderr, flush=True)
    if json_line:
        emit({"ok": False, "error": message, "exit_code": code, **extra})
    return code
