"""`distillery solve --mcp-config FILE` as a user runs it (a subprocess; real HTTP to the
scripted model server; the jailed sandbox): the MCP tools are in the prompt, the code calls
them, and the server process ends with the command. A bad file is a one-line config error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.mcp_servers import python_module_command
from tests.helpers.scripted_server import Reply, ScriptedServer
from tests.tools.conftest import server_processes

REPO = Path(__file__).resolve().parents[2]
STEP = "Thought: Use the tools.\nCode:\n```py\nc = city('Paris')\nfinal_answer(add(a=c['population'], b=1))\n```<end_code>"  # noqa: E501


def _solve(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
    return subprocess.run(
        [sys.executable, "-m", "distillery.cli", "solve", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def test_solve_calls_mcp_tools(scripted_server: ScriptedServer, tmp_path: Path) -> None:
    command, args, cwd = python_module_command()
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {
        "proj": {"command": command, "args": args, "cwd": cwd}}}))  # fmt: skip
    scripted_server.script(Reply(STEP))
    proc = _solve("How many people live in Paris, plus one?", "--model-url", scripted_server.url,
                  "--model", scripted_server.model, "--samples", "1", "--no-search",
                  "--mcp-config", str(config), "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    traj = json.loads(proc.stdout)
    assert traj["answer"] == 2_102_651, traj
    system = scripted_server.chat_requests[0]["messages"][0]["content"]
    assert "- city(name: str) -> dict" in system and "web_search(" not in system
    calls = traj["steps"][0]["candidates"][0]["execution"]["tool_calls"]
    assert [c["name"] for c in calls] == ["city", "add"]
    assert not server_processes()  # the command is gone, and so is its server


def test_bad_mcp_config_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "mcp.json"
    bad.write_text('{"mcpServers": {"x": {"command": "a", "url": "http://h"}}}')
    proc = _solve("q", "--model-url", "http://127.0.0.1:9/v1", "--model", "m", "--no-search",
                  "--mcp-config", str(bad))  # fmt: skip
    assert proc.returncode == 2
    assert "server 'x': give exactly one of `command` (stdio) or `url` (HTTP)" in proc.stderr
    assert "DISTILLERY_MCP_CONFIG" in proc.stderr
