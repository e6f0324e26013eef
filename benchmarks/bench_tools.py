"""Tool providers: what an MCP tool call costs through the jail, and how hostile servers end.

Rows, all measured in this process against the project's MCP test server over stdio
(tests/helpers/mcp_servers.py, `add(a, b) -> int`):

- `direct SDK call`: `ClientSession.call_tool("add", ...)` on a session of its own: the
  baseline every other call row is divided by;
- `provider call (host)`: the same call through `McpProvider` (`ProvidedTool`: arguments
  bound and checked against the schema, the result rendered as `JsonText`);
- `jail step calling add()`: one `session.run("add(a=1, b=2)")` in the real nsjail sandbox
  (the tool channel: the worker's frame to the host, the tool cache, the reply);
- `jail step, no tool call`: `session.run("1 + 2")`, the step's own cost; the difference
  between the two jail rows is one MCP call made from the jail, and that minus the host
  call is what the tool channel (worker -> host -> worker frames, tool cache) adds;
- start times: spawning and listing the tools of the project's server and of
  `mcp-server-time`;
- hostile tools (time until the code in the jail holds the error, call timeout 1 s): a tool
  that never answers, one that exits the server mid-call, one that writes malformed
  JSON-RPC, one that returns 50 MB (cut to 64 KiB on the host, or timed out).

p50 over `--calls` calls of each row (default 200; `--quick` 40), taken round-robin so
every row sees the same load. Needs root for nsjail (else pass
`--unjailed` for the sandbox's plain-subprocess mode).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from agent.mcp_config import McpServerConfig
from agent.mcp_provider import McpProvider
from sandbox.config import SandboxConfig
from sandbox.executor import SandboxExecutor

REPO = Path(__file__).resolve().parent.parent


def project_server(timeout_s: float = 10.0) -> McpServerConfig:
    return McpServerConfig(
        "bench",
        command=sys.executable,
        args=("-m", "tests.helpers.mcp_servers", "stdio"),
        cwd=str(REPO),
        call_timeout_s=timeout_s,
    )


def p50_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


@contextlib.asynccontextmanager
async def direct_sdk() -> AsyncIterator[Any]:
    """A ClientSession of its own on a second server process: the baseline's caller."""
    from mcp import ClientSession, StdioServerParameters, stdio_client

    server = project_server()
    params = StdioServerParameters(command=server.command or "", args=list(server.args),
                                   cwd=server.cwd)  # fmt: skip
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        await session.list_tools()
        yield session


async def start_time(server: McpServerConfig) -> float:
    provider = McpProvider(server)
    t0 = time.perf_counter()
    await provider.start()
    elapsed = time.perf_counter() - t0
    await provider.close()
    return elapsed


async def hostile_rows(executor: SandboxExecutor) -> list[tuple[str, float, str]]:
    provider = McpProvider(project_server(timeout_s=1.0))
    await provider.start()
    rows = []
    try:
        for tool, args in (("hang", ""), ("die", ""), ("garbage", ""), ("big", "megabytes=50")):
            session = await executor.open_session(provider.tools_for_run())
            try:
                t0 = time.perf_counter()
                result = await session.run(f"r = {tool}({args})\nprint(len(r))")
                elapsed = time.perf_counter() - t0
            finally:
                await session.close()
            what = result.stdout.strip() + " chars" if result.ok else (result.error or "")
            rows.append((tool, elapsed, what.splitlines()[-1][:90]))
            await provider.tools_for_run()["add"](a=1, b=1)  # wait until it is back
    finally:
        await provider.close()
    return rows


async def interleaved(n: int, calls: list[Any]) -> list[list[float]]:
    """Each call n times, round-robin (one of each per round, in rotated order), so that
    all rows see the same machine load; 5 warm-up rounds first."""
    out: list[list[float]] = [[] for _ in calls]
    for round_ in range(n + 5):
        for k in range(len(calls)):
            i = (round_ + k) % len(calls)  # rotated: no row always follows the same one
            t0 = time.perf_counter()
            await calls[i]()
            if round_ >= 5:
                out[i].append(time.perf_counter() - t0)
    return out


async def main(args: argparse.Namespace) -> None:
    n = 40 if args.quick else args.calls
    provider = McpProvider(project_server())
    await provider.start()
    config = SandboxConfig(unjailed=args.unjailed, pool_size=0, spare_candidates=0)
    executor = SandboxExecutor(config)
    try:
        add = provider.tools_for_run()["add"]
        session = await executor.open_session(provider.tools_for_run())
        try:
            async with direct_sdk() as sdk_session:
                sdk, host, jail_tool, jail_none = await interleaved(n, [
                    lambda: sdk_session.call_tool("add", {"a": 1, "b": 2}),
                    lambda: add(a=1, b=2),
                    lambda: session.run("add(a=1, b=2)"),
                    lambda: session.run("1 + 2"),
                ])  # fmt: skip
        finally:
            await session.close()
    finally:
        await provider.close()
    base = p50_ms(sdk)
    print(f"\nMCP call overhead, p50 over {n} calls ({'unjailed' if args.unjailed else 'nsjail'})")
    print("| row | p50 ms | ratio to direct SDK call |")
    print("|---|---:|---:|")
    for label, samples in (
        ("direct SDK call (`ClientSession.call_tool`), baseline", sdk),
        ("provider call on the host (checked arguments, JsonText)", host),
        ("jail step calling `add(a=1, b=2)`", jail_tool),
        ("jail step, no tool call (`1 + 2`)", jail_none),
    ):
        print(f"| {label} | {p50_ms(samples):.2f} | {p50_ms(samples) / base:.2f}x |")
    call = p50_ms(jail_tool) - p50_ms(jail_none)
    print(f"| the call inside a jail step (difference of the two jail rows) | {call:.2f} | "
          f"{call / base:.2f}x |")  # fmt: skip
    print(f"| of which the jail's tool channel (that minus the host call) | "
          f"{call - p50_ms(host):.2f} | {(call - p50_ms(host)) / base:.2f}x |")  # fmt: skip
    time_cmd = shutil.which("mcp-server-time", path=str(Path(sys.executable).parent))
    print("\n| start (spawn, initialize, list tools) | s |\n|---|---:|")
    print(f"| project test server (stdio, python -m) | {await start_time(project_server()):.2f} |")
    if time_cmd:
        time_server = McpServerConfig("time", command=time_cmd)
        print(f"| mcp-server-time (stdio) | {await start_time(time_server):.2f} |")
    print("\n| hostile tool (call timeout 1 s) | s until the code holds the error | what it got |")
    print("|---|---:|---|")
    try:
        for tool, elapsed, what in await hostile_rows(executor):
            print(f"| {tool} | {elapsed:.2f} | {what} |")
    finally:
        await executor.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--unjailed", action="store_true")
    asyncio.run(main(parser.parse_args()))
