"""The gateway over MCP tools, over real HTTP: GET /v1/tools, a per-request subset on
/v1/solve (`tools`), chat and responses (`server_tools`), unknown names a 400 naming them,
OpenAI's client-side `tools` a 400 that says where to look, tools in /readyz."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.gateway_server import GatewayServer
from tests.helpers.mcp_servers import python_module_command
from tests.helpers.scripted_server import ScriptedServer
from tests.service.conftest import index_dir, make_settings, one_valid, reply  # noqa: F401

ADD_THEN_ANSWER = reply("final_answer(add(a=40, b=2))")


@pytest.fixture(scope="module")
def gateway(
    scripted_server_session: ScriptedServer,
    index_dir: Path,  # noqa: F811
    tmp_path_factory: Any,
) -> Iterator[GatewayServer]:
    command, args, cwd = python_module_command()
    config = tmp_path_factory.mktemp("mcp") / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {
        "proj": {"command": command, "args": args, "cwd": cwd, "timeout": 3}}}))  # fmt: skip
    settings = make_settings(scripted_server_session, index_dir, mcp_config=config, samples=1)
    with GatewayServer(settings) as gw:
        yield gw


@pytest.fixture
def srv(scripted_server: ScriptedServer) -> ScriptedServer:
    scripted_server.handler = lambda body: one_valid(body, ADD_THEN_ANSWER)
    return scripted_server


def _system_prompt(srv: ScriptedServer) -> str:
    return str(srv.chat_requests[-1]["messages"][0]["content"])


def test_get_tools_lists_every_configured_tool(gateway: GatewayServer) -> None:
    body = httpx.get(f"{gateway.url}/v1/tools", timeout=30).json()
    tools = {t["name"]: t for t in body["data"]}
    assert body["object"] == "list" and list(tools)[0] == "web_search"
    assert tools["web_search"]["provider"] == "web_search"
    assert tools["add"]["signature"] == "add(a: int, b: int) -> int"
    assert tools["add"]["parameters"]["required"] == ["a", "b"]
    assert tools["city"]["returns"]["type"] == "object" and tools["add"]["provider"] == "mcp:proj"


def test_solve_with_a_subset(gateway: GatewayServer, srv: ScriptedServer) -> None:
    r = httpx.post(f"{gateway.url}/v1/solve", json={"question": "40 + 2?", "tools": ["add"]},
                   timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["answer"] == 42
    prompt = _system_prompt(srv)
    assert "- add(a: int, b: int) -> int" in prompt
    assert "web_search(" not in prompt and "city(" not in prompt
    r = httpx.post(f"{gateway.url}/v1/solve", json={"question": "40 + 2?"}, timeout=60)
    assert r.json()["answer"] == 42
    assert "web_search(query: str) -> str" in _system_prompt(srv)  # no subset: every tool


def test_unknown_tools_are_a_400_naming_them(gateway: GatewayServer, srv: ScriptedServer) -> None:
    ask = {"question": "q", "tools": ["add", "drop_table", "rm"]}
    r = httpx.post(f"{gateway.url}/v1/solve", json=ask, timeout=30)
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "drop_table, rm" in message and "add" not in message.split("(")[0]
    r = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=30, json={
        "model": "scripted-model", "server_tools": ["nope"],
        "messages": [{"role": "user", "content": "q"}]})  # fmt: skip
    assert r.status_code == 400 and "nope" in r.json()["error"]["message"]


def test_chat_and_responses_take_server_tools(gateway: GatewayServer, srv: ScriptedServer) -> None:
    r = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=60, json={
        "model": "scripted-model", "server_tools": ["add"],
        "messages": [{"role": "user", "content": "40 + 2?"}]})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "42"
    assert "city(" not in _system_prompt(srv)
    ask = {"model": "scripted-model", "server_tools": ["add", "city"], "input": "40 + 2?"}
    r = httpx.post(f"{gateway.url}/v1/responses", timeout=60, json=ask)
    assert r.status_code == 200, r.text
    assert "city(name: str) -> dict" in _system_prompt(srv)


def test_openai_tools_are_refused_pointing_at_server_tools(gateway: GatewayServer) -> None:
    fn = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    r = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=30, json={
        "model": "scripted-model", "tools": [fn],
        "messages": [{"role": "user", "content": "q"}]})  # fmt: skip
    assert r.status_code == 400 and "server_tools" in r.json()["error"]["message"]


def test_readyz_reports_the_tool_providers(gateway: GatewayServer) -> None:
    body = httpx.get(f"{gateway.url}/readyz", timeout=30).json()
    tools = body["checks"]["tools"]
    assert tools["ok"], tools
    assert tools["detail"]["mcp:proj"]["ok"] and "add" in tools["detail"]["mcp:proj"]["tools"]
