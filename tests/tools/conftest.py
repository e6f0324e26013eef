"""Fixtures of the tool tests: real MCP servers (started by the tests), the real jail.

`project_server` is the project's MCP test server (tests/helpers/mcp_servers.py) over
stdio; `http_server` the same over streamable HTTP in a subprocess for the module;
`time_server` is `mcp-server-time` from PyPI. `children()` lists the live descendants of
the test process: every test that starts a server checks that none is left.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agent.mcp_config import McpServerConfig
from sandbox.executor import SandboxExecutor
from tests.helpers.mcp_servers import mcp_http_server, python_module_command
from tests.helpers.ports import free_port
from tests.sandbox.util import fast_config, wait_until

BIN = Path(sys.executable).parent


def children() -> list[int]:
    """Live (not zombie) descendants of this process."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            kids.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [os.getpid()]
    while todo:
        for kid in kids.get(todo.pop(), []):
            out.append(kid)
            todo.append(kid)
    return out


def server_processes() -> list[int]:
    """Descendants that are stdio MCP servers (the HTTP test server is not one of them)."""
    out = []
    for pid in children():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"mcp-server-" in a or b"stdio" in a for a in argv):
            out.append(pid)
    return out


async def no_server_left() -> bool:
    return await wait_until(lambda: not server_processes(), timeout=15.0)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture
def project_server() -> McpServerConfig:
    command, args, cwd = python_module_command()
    return McpServerConfig("proj", command=command, args=tuple(args), cwd=cwd, call_timeout_s=2.0)


@pytest.fixture
def time_server() -> McpServerConfig:
    command = shutil.which("mcp-server-time", path=str(BIN))
    assert command, "mcp-server-time is a dev dependency: make install-dev"
    return McpServerConfig("time", command=command, args=("--local-timezone", "UTC"))


@pytest.fixture(scope="module")
def http_server() -> Iterator[str]:
    with mcp_http_server(free_port()) as url:
        yield url


@pytest.fixture
async def jail() -> AsyncIterator[SandboxExecutor]:
    ex = SandboxExecutor(fast_config(step_timeout_s=6.0))
    yield ex
    await ex.aclose()
