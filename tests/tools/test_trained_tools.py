"""A checkpoint that records the tools it was trained with (distillery_tools.json, written
by `distillery export`), served by the real gateway with more tools configured: it stays
ready, and /readyz names the untrained tools as a warning (the start logs it too)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest

from agent import KNOWN_TOOLS, TRAINED_TOOLS_FILE
from agent.protocol import PROTOCOL_FILE, default_protocol
from tests.helpers.gateway_server import GatewayServer
from tests.helpers.mcp_servers import python_module_command
from tests.helpers.scripted_server import ScriptedServer
from tests.service.conftest import index_dir, make_settings  # noqa: F401


def _checkpoint(folder: Path, trained: list[str]) -> Path:
    folder.mkdir()
    (folder / PROTOCOL_FILE).write_text(default_protocol().to_json())
    specs = [{"name": n, "signature": f"{n}() -> str", "description": "d"} for n in trained]
    (folder / TRAINED_TOOLS_FILE).write_text(json.dumps({"tools": specs}))
    return folder


def test_readyz_warns_about_untrained_tools(
    scripted_server: ScriptedServer, index_dir: Path, tmp_path: Path,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    command, args, cwd = python_module_command()
    mcp = tmp_path / "mcp.json"
    mcp.write_text(json.dumps({"mcpServers": {"proj": {"command": command, "args": args,
                                                       "cwd": cwd}}}))  # fmt: skip
    ckpt = _checkpoint(tmp_path / "student", ["web_search", "add"])
    settings = make_settings(scripted_server, index_dir, mcp_config=mcp, protocol=str(ckpt))
    with caplog.at_level(logging.WARNING, logger="agent.runtime"), GatewayServer(settings) as gw:
        r = httpx.get(f"{gw.url}/readyz", timeout=30)
        tools = {s["name"] for s in httpx.get(f"{gw.url}/v1/tools", timeout=30).json()["data"]}
    body = r.json()
    assert r.status_code == 200 and body["status"] == "ready", body
    check = body["checks"]["tools"]
    untrained = sorted(tools - {"web_search", "add"})
    assert "city" in untrained and check["detail"]["untrained"] == untrained
    assert check["warning"].startswith(f"the model was not trained with the tools "
                                       f"{', '.join(untrained)} (trained with: add, web_search)")
    assert body["warnings"] == [f"tools: {check['warning']}"]
    assert any("not trained with the tools" in m for m in caplog.messages)


def test_no_warning_when_every_tool_was_trained(
    scripted_server: ScriptedServer, index_dir: Path, tmp_path: Path  # noqa: F811
) -> None:
    ckpt = _checkpoint(tmp_path / "student", list(KNOWN_TOOLS))
    with GatewayServer(make_settings(scripted_server, index_dir, protocol=str(ckpt))) as gw:
        body = httpx.get(f"{gw.url}/readyz", timeout=30).json()
    assert body["status"] == "ready" and body["warnings"] == []
    assert body["checks"]["tools"]["detail"]["untrained"] == []
    assert body["checks"]["tools"]["warning"] is None
