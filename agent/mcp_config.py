"""The MCP servers file: the `mcpServers` layout of Claude Desktop, Cursor and VS Code.

    {"mcpServers": {
        "time": {"command": "mcp-server-time", "args": ["--local-timezone", "UTC"],
                 "env": {"KEY": "value"}},
        "docs": {"url": "https://tools.example.com/mcp", "headers": {"Authorization": "..."}}
    }}

A server with `command` is spawned over stdio (`args`, `env` merged over a minimal
default environment, optional `cwd`); one with `url` is reached over streamable HTTP
(`headers`). VS Code's top-level `servers` key and its `type` (`stdio`, `http`) are
accepted too; `sse` is refused (use streamable HTTP). Extensions of this project, all
optional: `timeout` (seconds one tool call may take, default 8: keep it under the
sandbox's step time limit), `startTimeout` (seconds to connect and list the tools,
default 30), `disabled` (true: skipped, as in Claude Desktop). Any other key is an error,
so a typo does not silently change what runs. Variables such as `${env:X}` are not
expanded: the file holds the values.

`load_mcp_config(path)` returns the servers in file order; a file that cannot be used
raises `McpConfigError` saying which server and key are wrong.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["McpConfigError", "McpServerConfig", "load_mcp_config", "parse_mcp_config"]

DEFAULT_CALL_TIMEOUT_S = 8.0
DEFAULT_START_TIMEOUT_S = 30.0
_STDIO_KEYS = {"command", "args", "env", "cwd", "type"}
_HTTP_KEYS = {"url", "headers", "type"}
_OWN_KEYS = {"timeout", "startTimeout", "disabled"}


class McpConfigError(ValueError):
    """The MCP servers file is not usable; the message says where and how to fix it."""


@dataclass(frozen=True)
class McpServerConfig:
    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S

    @property
    def transport(self) -> str:
        return "stdio" if self.command is not None else "http"


def load_mcp_config(path: Path) -> list[McpServerConfig]:
    try:
        text = path.expanduser().read_text(encoding="utf-8")
    except OSError as e:
        raise McpConfigError(
            f"cannot read the MCP servers file {path}: {e.strerror or e}"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise McpConfigError(f"the MCP servers file {path} is not JSON: {e}") from None
    return parse_mcp_config(data, str(path))


def parse_mcp_config(data: Any, source: str = "the MCP servers file") -> list[McpServerConfig]:
    if not isinstance(data, dict):
        raise McpConfigError(f"{source}: expected a JSON object with an `mcpServers` object")
    servers = data.get("mcpServers", data.get("servers"))
    if not isinstance(servers, dict):
        raise McpConfigError(
            f"{source}: expected an `mcpServers` object mapping server names to "
            '{"command": ..., "args": [...]} or {"url": ...}'
        )
    out = []
    for name, entry in servers.items():
        server = _server(str(name), entry, f"{source}: server {name!r}")
        if server is not None:
            out.append(server)
    return out


def _server(name: str, entry: Any, where: str) -> McpServerConfig | None:
    if not isinstance(entry, dict):
        raise McpConfigError(f"{where}: expected an object")
    if entry.get("disabled") is True:
        return None
    kind = entry.get("type")
    if kind == "sse":
        raise McpConfigError(f"{where}: SSE servers are not supported; use streamable HTTP (`url`)")
    has_command, has_url = "command" in entry, "url" in entry
    if has_command == has_url:
        raise McpConfigError(f"{where}: give exactly one of `command` (stdio) or `url` (HTTP)")
    allowed = (_STDIO_KEYS if has_command else _HTTP_KEYS) | _OWN_KEYS
    extra = sorted(set(entry) - allowed)
    if extra:
        raise McpConfigError(f"{where}: unknown keys {extra} (allowed: {sorted(allowed)})")
    if kind not in (None, "stdio", "http", "streamable-http", "streamableHttp"):
        raise McpConfigError(f"{where}: unknown type {kind!r} (stdio or http)")
    call_timeout_s = _seconds(entry, "timeout", DEFAULT_CALL_TIMEOUT_S, where)
    start_timeout_s = _seconds(entry, "startTimeout", DEFAULT_START_TIMEOUT_S, where)
    if has_command:
        return McpServerConfig(
            name=name,
            command=_text(entry["command"], f"{where}: `command`"),
            args=tuple(_text(a, f"{where}: `args`") for a in _list(entry.get("args"), where)),
            env=_strings(entry.get("env"), f"{where}: `env`"),
            cwd=_text(entry["cwd"], f"{where}: `cwd`") if "cwd" in entry else None,
            call_timeout_s=call_timeout_s,
            start_timeout_s=start_timeout_s,
        )
    url = _text(entry["url"], f"{where}: `url`")
    if not url.startswith(("http://", "https://")):
        raise McpConfigError(f"{where}: `url` must start with http:// or https://")
    return McpServerConfig(
        name=name,
        url=url,
        headers=_strings(entry.get("headers"), f"{where}: `headers`"),
        call_timeout_s=call_timeout_s,
        start_timeout_s=start_timeout_s,
    )


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise McpConfigError(f"{where} must be a non-empty string")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise McpConfigError(f"{where}: `args` must be a list of strings")
    return value


def _strings(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise McpConfigError(f"{where} must be an object of strings")
    return dict(value)


def _seconds(entry: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
        raise McpConfigError(f"{where}: `{key}` must be a number of seconds in (0, 3600]")
    return float(value)
