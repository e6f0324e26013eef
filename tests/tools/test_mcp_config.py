"""The mcpServers file: the layouts users already have, and errors that say what to fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.mcp_config import McpConfigError, load_mcp_config, parse_mcp_config
from distillery.components import ConfigError, build_tools
from distillery.settings import Settings


def _settings(**values: Any) -> Settings:
    return Settings(**values)  # (a dict: mypy without the pydantic plugin wants every field)


def test_claude_desktop_and_vscode_layouts(tmp_path: Path) -> None:
    claude = {
        "mcpServers": {
            "time": {"command": "uvx", "args": ["mcp-server-time"], "env": {"TZ": "UTC"}},
            "docs": {
                "url": "https://x.example/mcp",
                "headers": {"Authorization": "Bearer k"},
                "timeout": 3,
            },
            "off": {"command": "nothing", "disabled": True},
        }
    }
    path = tmp_path / "claude_desktop_config.json"
    path.write_text(json.dumps(claude))
    servers = load_mcp_config(path)
    assert [(s.name, s.transport) for s in servers] == [("time", "stdio"), ("docs", "http")]
    assert servers[0].args == ("mcp-server-time",) and servers[0].env == {"TZ": "UTC"}
    assert servers[1].headers == {"Authorization": "Bearer k"} and servers[1].call_timeout_s == 3
    vscode = {
        "servers": {
            "t": {"type": "stdio", "command": "x"},
            "h": {"type": "http", "url": "http://h/mcp"},
        }
    }
    assert [s.transport for s in parse_mcp_config(vscode)] == ["stdio", "http"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"command": "x", "url": "http://h"}, "exactly one of `command`"),
        ({"args": ["x"]}, "exactly one of `command`"),
        ({"command": "x", "argz": []}, "unknown keys \\['argz'\\]"),
        ({"command": ""}, "`command` must be a non-empty string"),
        ({"command": "x", "args": "a b"}, "must be a list"),
        ({"command": "x", "env": {"A": 1}}, "`env` must be an object of strings"),
        ({"url": "ftp://h"}, "must start with http"),
        ({"type": "sse", "url": "http://h/sse"}, "SSE servers are not supported"),
        ({"command": "x", "timeout": 0}, "`timeout` must be a number of seconds"),
    ],
)
def test_bad_entries_name_the_server_and_key(entry: dict[str, object], message: str) -> None:
    with pytest.raises(McpConfigError, match=message) as e:
        parse_mcp_config({"mcpServers": {"srv": entry}}, "f.json")
    assert "server 'srv'" in str(e.value)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(McpConfigError, match="cannot read"):
        load_mcp_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(McpConfigError, match="is not JSON"):
        load_mcp_config(bad)
    bad.write_text('{"tools": {}}')
    with pytest.raises(McpConfigError, match="`mcpServers` object"):
        load_mcp_config(bad)
    # the composition root says which setting to fix
    with pytest.raises(ConfigError, match="DISTILLERY_MCP_CONFIG"):
        build_tools(_settings(mcp_config=bad), None)


def test_build_tools_orders_web_search_then_servers(tmp_path: Path) -> None:
    path = tmp_path / "mcp.json"
    path.write_text(
        json.dumps({"mcpServers": {"a": {"command": "x"}, "b": {"url": "http://h/mcp"}}})
    )
    tools = build_tools(_settings(mcp_config=path), None)
    assert [p.name for p in tools.providers] == ["mcp:a", "mcp:b"]
