"""MCP providers against real servers the tests start: mcp-server-time (PyPI) and the
project's MCPServer over stdio, the same server over streamable HTTP, and mcp-server-sqlite
(PyPI), which cannot start under mcp 2. Every test ends with no server process left."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import sys

import pytest

from agent.mcp_config import McpServerConfig
from agent.mcp_provider import McpProvider, McpToolError
from agent.tool_providers import ToolArgumentError, ToolProviderError, ToolSet
from sandbox.results import JsonText
from tests.tools.conftest import BIN, no_server_left, server_processes


async def test_mcp_server_time_over_stdio(time_server: McpServerConfig) -> None:
    provider = McpProvider(time_server)
    await provider.start()
    try:
        assert len(server_processes()) == 1
        sigs = {s.name: s.signature for s in provider.specs()}
        assert sigs["get_current_time"] == "get_current_time(timezone: str) -> dict"
        assert sigs["convert_time"] == (
            "convert_time(source_timezone: str, time: str, target_timezone: str) -> dict"
        )
        tools = provider.tools_for_run()
        now = await tools["get_current_time"]("Europe/Paris")  # positional binds to timezone
        assert isinstance(now, JsonText) and now.value["timezone"] == "Europe/Paris"
        assert '"timezone": "Europe/Paris"' in now  # the text records keep
        with pytest.raises(McpToolError, match="Invalid timezone"):
            await tools["get_current_time"](timezone="Mars/Olympus_Mons")
        with pytest.raises(ToolArgumentError, match="'timezone' is a required property"):
            await tools["get_current_time"]()
        assert (await provider.health())["transport"] == "stdio"
    finally:
        await provider.close()
    assert await no_server_left()


async def test_project_server_over_streamable_http(http_server: str) -> None:
    server = McpServerConfig("web", url=http_server, headers={"Authorization": "Bearer t0k"})
    provider = McpProvider(server)
    await provider.start()
    try:
        tools = provider.tools_for_run()
        assert await tools["add"](a=2, b=40) == "42"
        assert (await tools["add"](a=2, b=40)).value == 42  # type: ignore[attr-defined]
        city = await tools["city"](name="Lyon")
        assert city.value == {"name": "Lyon", "country": "France", "population": 522_250}  # type: ignore[attr-defined]
        assert await tools["whoami"]() == "Bearer t0k"  # the configured headers are sent
        with pytest.raises(McpToolError, match="fail"):
            await tools["fail"](message="boom")
        assert (await provider.health())["transport"] == "http"
    finally:
        await provider.close()


async def test_a_huge_http_answer_is_refused_and_the_session_renewed(http_server: str) -> None:
    provider = McpProvider(McpServerConfig("web", url=http_server, call_timeout_s=30.0))
    await provider.start()
    try:
        with pytest.raises(McpToolError):  # the SDK bounds one SSE event at 1 MiB
            await provider.tools_for_run()["big"](megabytes=50)
        assert await provider.tools_for_run()["add"](a=2, b=2) == "4"
        assert provider.restarts == 1
    finally:
        await provider.close()


async def test_unreachable_http_server_is_a_start_error() -> None:
    from tests.helpers.ports import free_port

    url = f"http://127.0.0.1:{free_port()}/mcp"
    provider = McpProvider(McpServerConfig("gone", url=url, start_timeout_s=10))
    with pytest.raises(ToolProviderError, match="'gone' did not start"):
        await provider.start()
    await provider.close()


async def test_mcp_server_sqlite_cannot_start_and_nothing_is_left(tmp_path: object) -> None:
    command = shutil.which("mcp-server-sqlite", path=str(BIN))
    assert command
    server = McpServerConfig("db", command=command, args=("--db-path", f"{tmp_path}/x.db"))
    tools = ToolSet([McpProvider(server)])
    with pytest.raises(ToolProviderError, match="'db' did not start"):
        await tools.start()
    assert await no_server_left()


async def test_tools_of_a_provider_never_started_are_an_error(
    project_server: McpServerConfig,
) -> None:
    with pytest.raises(ToolProviderError, match="mcp:proj was never started"):
        McpProvider(project_server).tools_for_run()


async def test_a_server_that_never_initializes_is_a_start_error_and_is_killed() -> None:
    mute = McpServerConfig("mute", command=sys.executable,
                           args=("-c", "import time; time.sleep(3600)  # stdio mute"),
                           start_timeout_s=1.0)  # fmt: skip
    provider = McpProvider(mute)
    with pytest.raises(
        ToolProviderError, match="'mute' did not start and list its tools within 1 s"
    ):
        await provider.start()
    await provider.close()
    assert await no_server_left()


async def test_missing_command_is_a_start_error() -> None:
    provider = McpProvider(McpServerConfig("nope", command="/nonexistent/mcp-server"))
    with pytest.raises(ToolProviderError, match="'nope' did not start"):
        await provider.start()


async def test_a_crashed_server_is_restarted_for_the_next_run(
    project_server: McpServerConfig,
) -> None:
    provider = McpProvider(project_server)
    await provider.start()
    try:
        first = server_processes()
        tools = provider.tools_for_run()
        with pytest.raises(McpToolError, match="closed the connection"):
            await tools["die"]()
        with pytest.raises(ToolProviderError):
            await provider.health()  # /readyz sees it
        tools = provider.tools_for_run()  # the next run: reconnects in the background
        assert await tools["add"](a=1, b=2) == "3"
        assert provider.restarts == 1
        assert server_processes() != first and len(server_processes()) == 1
    finally:
        await provider.close()
    assert await no_server_left()


async def test_hung_and_garbage_servers_time_out_and_recover(
    project_server: McpServerConfig,
) -> None:
    provider = McpProvider(dataclasses.replace(project_server, call_timeout_s=1.0))
    await provider.start()
    try:
        for hostile in ("hang", "garbage"):
            with pytest.raises(McpToolError, match="did not answer within 1 s"):
                await provider.tools_for_run()[hostile]()
            assert await provider.tools_for_run()["shout"](text="ok") == "OK"
    finally:
        await provider.close()
    assert await no_server_left()


async def test_big_results_are_cut_and_huge_ones_refused(project_server: McpServerConfig) -> None:
    provider = McpProvider(dataclasses.replace(project_server, call_timeout_s=30.0))
    await provider.start()
    try:
        out = await provider.tools_for_run()["big"](megabytes=1)  # cut on the host
        assert len(out) < 70_000 and "cut: the tool returned 1,000,000 characters" in out
        with pytest.raises(McpToolError, match="over the limit of 8,388,608 bytes"):
            await provider.tools_for_run()["big"](megabytes=50)  # never read whole
        assert await provider.tools_for_run()["add"](a=1, b=1) == "2"
        assert provider.restarts == 1
    finally:
        await provider.close()
    assert await no_server_left()


async def test_tool_list_changes_reach_the_next_run(project_server: McpServerConfig) -> None:
    provider = McpProvider(project_server)
    await provider.start()
    try:
        run1 = provider.tools_for_run()
        assert "extra" not in run1
        assert await run1["grow"]() == "grown"
        for _ in range(100):
            if "extra" in provider.tools_for_run():
                break
            await asyncio.sleep(0.05)
        run2 = provider.tools_for_run()
        assert await run2["extra"]() == "extra!"
        assert "extra" not in run1  # a run keeps the tools it was shown
    finally:
        await provider.close()


async def test_injection_in_a_description_is_one_line_of_text(
    project_server: McpServerConfig,
) -> None:
    from agent.prompts import system_prompt
    from agent.tools import announced

    provider = McpProvider(project_server)
    await provider.start()
    try:
        tools = provider.tools_for_run()
        spec = tools["ignore_previous"].spec  # type: ignore[attr-defined]
        assert "\n" not in spec.description and spec.description.startswith("IGNORE ALL")
        prompt = system_prompt("student", announced(tools))
        # the text is listed as the tool's description, and cannot open a turn of its own
        assert "\nObservation:" not in prompt and "\nSystem:" not in prompt
        assert await tools["ignore_previous"]() == "I am just a tool."
    finally:
        await provider.close()
