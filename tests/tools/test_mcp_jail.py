"""MCP tools called from the jailed code (real nsjail) through the host tool channel, and
whole agent runs over hostile servers: every failure is an observation, the run goes on,
the host's descriptors stay flat and no server process is left."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest

from agent.agent import AgentConfig, run_agent
from agent.mcp_config import McpServerConfig
from agent.mcp_provider import McpProvider
from agent.openai_client import OpenAIChatClient
from sandbox.executor import SandboxExecutor
from tests.helpers.scripted_server import Reply, ScriptedServer
from tests.tools.conftest import no_server_left, open_fds, rss_mb


def act(code: str) -> str:
    return f"Thought: go.\nCode:\n```py\n{code}\n```<end_code>"


@pytest.fixture
async def provider(project_server: McpServerConfig) -> AsyncIterator[McpProvider]:
    p = McpProvider(dataclasses.replace(project_server, call_timeout_s=1.5))
    await p.start()
    yield p
    await p.close()
    assert await no_server_left()


async def test_structured_results_are_values_in_the_jail(
    provider: McpProvider, jail: SandboxExecutor
) -> None:
    session = await jail.open_session(provider.tools_for_run())
    try:
        result = await session.run(
            "c = city(name='Paris')\nn = add(2, 3)\n"
            "print(type(c).__name__, c['population'] + n, type(shout(text='a')).__name__)"
        )
        assert result.ok, result.error
        assert result.stdout == "dict 2102655 str\n"
        assert [t.name for t in result.tool_calls] == ["city", "add", "shout"]
        assert result.tool_calls[1].result == "5"  # records keep the text
        bad = await session.run("add(a='two', b=3)")
        assert not bad.ok and "arguments do not fit its schema" in (bad.error or "")
        assert bad.tool_calls[0].error and "at a" in bad.tool_calls[0].error
    finally:
        await session.close()


async def test_sag_candidates_call_one_server_concurrently(
    provider: McpProvider, jail: SandboxExecutor
) -> None:
    session = await jail.open_session(provider.tools_for_run())
    try:
        codes = [f"print(add(a=100, b={i}), add(a=1, b=1))" for i in range(4)]
        results = await session.try_candidates(codes)
        assert [r.stdout for r in results] == [f"{100 + i} 2\n" for i in range(4)]
        assert sum(not c.cached for r in results for c in r.tool_calls) == 5  # add(1, 1) once
        await session.commit(2)
    finally:
        await session.close()


async def test_the_jail_cannot_reach_the_server_itself(
    http_server: str, jail: SandboxExecutor
) -> None:
    port = int(http_server.rsplit(":", 1)[1].split("/")[0])
    session = await jail.open_session({})
    try:
        result = await session.run(
            f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)"
        )
        assert not result.ok  # no socket module, and AF_INET is refused by seccomp anyway
    finally:
        await session.close()


@pytest.mark.parametrize("hostile", ["hang", "die", "garbage", "big", "fail"])
async def test_a_hostile_tool_is_an_observation_and_the_run_goes_on(
    hostile: str,
    provider: McpProvider,
    jail: SandboxExecutor,
    scripted_server: ScriptedServer,
) -> None:
    model = OpenAIChatClient(scripted_server.url, scripted_server.model, retries=0)
    fds: int | None = None
    try:
        for _ in range(2):  # twice: descriptors after the second run are those after the first
            scripted_server.script(
                Reply(act(f"r = {hostile}()\nprint(r[:80])")),
                Reply(act("final_answer(add(a=40, b=2))")),
            )
            traj = await run_agent(
                "What is 40 + 2?",
                model=model,
                executor=jail,
                tools=provider.tools_for_run(),
                config=AgentConfig(samples=1, max_steps=3),
            )
            assert traj.finish_reason == "answer" and traj.answer == 42, traj.error
            shown = {t["name"]: t for t in traj.config["tools"]}  # recorded with the run
            assert {"add", hostile, "final_answer"} <= set(shown)
            assert shown["add"]["parameters"]["required"] == ["a", "b"]
            assert shown["add"]["provider"] == "mcp:proj"
            first = traj.steps[0].kept.execution
            assert first is not None
            assert not first.ok and f"{hostile}() failed" in (first.error or "")
            fds = fds if fds is not None else open_fds()
        assert fds is not None and open_fds() <= fds
    finally:
        await model.aclose()


async def test_host_memory_stays_flat_over_big_results(
    provider: McpProvider, jail: SandboxExecutor
) -> None:
    async def round_() -> None:
        session = await jail.open_session(provider.tools_for_run())
        try:
            await session.run("try:\n    big(megabytes=50)\nexcept Exception:\n    pass")
        finally:
            await session.close()

    await round_()
    base = rss_mb()
    for _ in range(3):
        await round_()
    assert rss_mb() - base < 64, (base, rss_mb())
