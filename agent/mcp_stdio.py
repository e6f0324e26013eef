"""A stdio transport for MCP servers with a bound on the size of one message.

The same job as the SDK's `mcp.client.stdio.stdio_client` (spawn the server in its own
process group, newline-delimited JSON-RPC over its stdin/stdout, the spec's shutdown:
close stdin, wait, kill the process tree), built from the SDK's own spawn, parse and stop
helpers, with one difference: stdout is read as bytes into one buffer, and a message
longer than `max_message_bytes` (no newline within it) ends the connection at once
instead of being assembled whole. The SDK's reader concatenates strings per chunk, so a
server that answers 50 MB holds the gateway for tens of seconds of CPU and hundreds of
MB before any cap can apply; here it costs at most the bound.

`on_overflow(size)` is called before the connection closes, so the caller can say why
its request failed (the session sees the connection close).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio

from agent.mcp_config import McpServerConfig

__all__ = ["MESSAGE_MAX_BYTES", "bounded_stdio"]

MESSAGE_MAX_BYTES = 8 << 20
"""Default bound on one JSON-RPC message from a stdio server (8 MiB)."""


@contextlib.asynccontextmanager
async def bounded_stdio(
    server: McpServerConfig,
    *,
    max_message_bytes: int = MESSAGE_MAX_BYTES,
    on_overflow: Callable[[int], None] | None = None,
) -> AsyncIterator[tuple[Any, Any]]:
    """(read_stream, write_stream) of a ClientSession over the spawned server."""
    from mcp.client import stdio as sdk
    from mcp.shared.message import SessionMessage

    assert server.command is not None
    process = await sdk._create_platform_compatible_process(
        command=server.command,
        args=list(server.args),
        env=sdk.get_default_environment() | dict(server.env),
        errlog=sys.stderr,
        cwd=server.cwd,
    )
    read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)

    async def stdout_reader() -> None:
        assert process.stdout is not None
        buffer = bytearray()
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError,
                                 anyio.EndOfStream, ConnectionError, OSError):  # fmt: skip
            async with read_writer:
                async for chunk in process.stdout:
                    buffer += chunk
                    while (end := buffer.find(b"\n")) >= 0:
                        line = buffer[:end].decode("utf-8", "replace")
                        del buffer[: end + 1]
                        await read_writer.send(sdk._parse_line(line))
                    if len(buffer) > max_message_bytes:
                        if on_overflow is not None:
                            on_overflow(len(buffer))
                        return  # closing the read stream fails the pending requests

    async def stdin_writer() -> None:
        assert process.stdin is not None
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            async with write_reader:
                async for message in write_reader:
                    data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await process.stdin.send((data + "\n").encode("utf-8"))
        await read_writer.aclose()  # the server stopped reading: end the session too

    async with anyio.create_task_group() as tg:
        tg.start_soon(stdout_reader)
        tg.start_soon(stdin_writer)
        try:
            yield read_stream, write_stream
        finally:
            with anyio.CancelScope(shield=True):
                read_stream.close()
                write_stream.close()
                await sdk._stop_server_process(process)
                for stream in (read_stream, write_stream, read_writer, write_reader):
                    await stream.aclose()
            tg.cancel_scope.cancel()
