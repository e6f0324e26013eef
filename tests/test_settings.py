"""One owner per default, and every command honours the DISTILLERY_* variables it uses.

Settings mirror AgentConfig and SandboxConfig (default and description from the dataclass);
a dataclass field without a mirror must be listed as internal with a reason. Each command
builds its Settings from its flags, then the variables, then the defaults: setting a
variable to a non-default value must reach the agent/sandbox configuration the command runs
with, and a flag must win over the variable.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

import pytest

from agent.agent import AgentConfig
from distillery.cli import build_parser
from distillery.components import sandbox_config
from distillery.options import AGENT_FIELDS, SANDBOX_FIELDS, flag_name
from distillery.settings import (
    INTERNAL_AGENT_FIELDS,
    INTERNAL_SANDBOX_FIELDS,
    Settings,
    field_docs,
)
from sandbox.config import SandboxConfig


def _dataclass_default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


@pytest.mark.parametrize(
    ("cls", "prefix", "internal"),
    [
        (AgentConfig, "", INTERNAL_AGENT_FIELDS),
        (SandboxConfig, "sandbox_", INTERNAL_SANDBOX_FIELDS),
    ],
)
def test_every_config_field_is_mirrored_with_its_default(
    cls: type, prefix: str, internal: dict[str, str]
) -> None:
    settings = Settings()
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        if f.name in internal:
            assert name not in Settings.model_fields, f"{name} is internal but also a setting"
            continue
        assert name in Settings.model_fields, (
            f"{cls.__name__}.{f.name} has no setting: add `{name}: ... = "
            f"{'_sandbox' if prefix else '_agent'}({f.name!r})` to distillery/settings.py or "
            f"list it in {'INTERNAL_SANDBOX_FIELDS' if prefix else 'INTERNAL_AGENT_FIELDS'}"
        )
        assert getattr(settings, name) == _dataclass_default(f), name
        if f.name in docs:
            assert Settings.model_fields[name].description == docs[f.name]


def test_field_docs_reads_attribute_docstrings() -> None:
    docs = field_docs(SandboxConfig)
    assert docs["memory_mb"].startswith("Memory of one run's jail")
    assert "pool_size" in docs


def _other_values(name: str) -> list[Any]:
    """Valid values of Settings field `name` that differ from its default (one or two)."""
    field = Settings.model_fields[name]
    default = field.get_default(call_default_factory=True)
    annotation = field.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is Literal:
        return [v for v in typing.get_args(annotation) if v != default][:2]
    if typing.get_origin(annotation) is list:
        return [["math", "re"], ["json"]]
    if annotation is bool:
        return [not default]
    if annotation is int:
        start = 7 if default is None else default + 1
        return [start, start + 1]
    if annotation is float:
        start = 0.5 if default is None else round(default * 0.9, 6)
        return [start, round(start * 0.9, 6)]
    if name == "prompt":
        return ["teacher" if default != "teacher" else "student"]
    return ["x-" + name, "y-" + name]


def _env_text(value: Any) -> str:
    if isinstance(value, list):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _flag_args(name: str, value: Any) -> list[str]:
    if isinstance(value, bool):
        return [flag_name(name) if value else "--no-" + flag_name(name)[2:]]
    out: list[str] = []
    for item in value if isinstance(value, list) else [value]:
        out += [flag_name(name), str(item)]
    return out


def _config_value(settings: Settings, name: str) -> Any:
    if name in {f.name for f in dataclasses.fields(AgentConfig)}:
        return getattr(settings.agent_config(), name)
    if name == "executor":
        return "local" if sandbox_config(settings).unjailed else "sandbox"
    return getattr(sandbox_config(settings), name.removeprefix("sandbox_"))


def _commands() -> list[tuple[str, list[str], Callable[[Any], Settings]]]:
    from distillery.commands import serve, solve, training

    found = [
        ("solve", ["solve", "a question"], solve.settings_for),
        ("serve", ["serve"], serve.settings_for),
        ("generate", ["generate", "--questions", "q.json", "--out", "o.jsonl"],
         training.settings_for_generate),
    ]
    try:
        from distillery.commands import eval as eval_cmd  # added with `distillery eval`
    except ImportError:
        return found
    settings_for = getattr(eval_cmd, "settings_for", None)
    if settings_for is not None:
        found.append(("eval", ["eval", "run", "--questions", "q.json", "--out", "d"],
                      settings_for))
    return found


def _uses(argv: list[str], name: str) -> bool:
    parser = build_parser()
    args = parser.parse_args(argv)
    return hasattr(args, name)


CASES = [
    (cmd, argv, fn, name)
    for cmd, argv, fn in _commands()
    for name in [*AGENT_FIELDS, *SANDBOX_FIELDS]
]


@pytest.mark.parametrize(
    ("cmd", "argv", "settings_for", "name"), CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES]
)
def test_each_command_honours_each_variable_it_uses(
    cmd: str, argv: list[str], settings_for: Callable[[Any], Settings], name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not _uses(argv, name):
        pytest.skip(f"{cmd} does not take {name}")
    values = _other_values(name)
    monkeypatch.setenv(f"DISTILLERY_{name.upper()}", _env_text(values[0]))
    settings = settings_for(build_parser().parse_args(argv))
    assert _config_value(settings, name) == values[0], f"{cmd} ignored DISTILLERY_{name.upper()}"
    if len(values) > 1:  # a flag wins over the variable
        args = build_parser().parse_args([*argv[:1], *_flag_args(name, values[1]), *argv[1:]])
        assert _config_value(settings_for(args), name) == values[1], f"{cmd}: the flag lost"


def test_generate_keeps_its_own_defaults_only_where_nothing_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from distillery.commands import training

    argv = ["generate", "--questions", "q.json", "--out", "o.jsonl"]
    monkeypatch.delenv("DISTILLERY_SAMPLES", raising=False)
    monkeypatch.delenv("DISTILLERY_PROMPT", raising=False)
    cfg = training.settings_for_generate(build_parser().parse_args(argv)).agent_config()
    assert (cfg.samples, cfg.prompt) == (1, "teacher")
    monkeypatch.setenv("DISTILLERY_SAMPLES", "3")
    cfg = training.settings_for_generate(build_parser().parse_args(argv)).agent_config()
    assert (cfg.samples, cfg.prompt) == (3, "teacher")


def test_a_bad_variable_is_a_usage_error_naming_flag_and_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from distillery.commands import solve
    from distillery.options import UsageError

    monkeypatch.setenv("DISTILLERY_SAMPLES", "0")
    with pytest.raises(UsageError, match=r"--samples / DISTILLERY_SAMPLES"):
        solve.settings_for(build_parser().parse_args(["solve", "q"]))
