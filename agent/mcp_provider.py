"""A tool provider over one MCP server, with the official `mcp` SDK (stdio or streamable HTTP).

`McpProvider(server)` connects on `start()` (spawns a stdio server or opens an HTTP
session, `initialize`, `tools/list`; within the server's `startTimeout`, else
ToolProviderError) and lists each MCP tool as a `ToolSpec` named after the tool (made a
Python identifier: `read-query` -> `read_query`), with its input schema as the
arguments and its output schema, when it has one, as the result. The jailed code calls
it as a plain function; the arguments are checked against the schema on the host
(agent.tool_providers.ProvidedTool) and sent as a `tools/call`.

What the code gets back: the text content blocks joined by newlines (other blocks as a
short placeholder such as `[image: image/png, 1234 bytes of base64]`); when the result
has structured content, the parsed value (a `JsonText`: records keep the text). Both are
capped at `output_max_chars` (a longer text is cut with a marker; a larger or deeper
value falls back to that text). An MCP error result, a protocol error, a call over the
server's `timeout`, a server that exited or hung: the call raises `McpToolError`, which
the code sees as an exception and the model reads in its observation; the run goes on.

Failures that leave the connection unusable (closed, timed out, crashed) mark it dead: the
next run's `tools_for_run()` starts reconnecting in the background (a stdio server is
spawned again) and the next call waits for it. A server whose tool list changes
(`notifications/tools/list_changed`) is listed again; runs already started keep the
specs they were shown, and a call to a tool the server no longer has is its error.

The connection lives in one task that owns the SDK's context managers (anyio needs them
entered and exited in the same task); `close()` ends it, which stops the server process
(the SDK terminates its process tree). The `mcp` package is imported only here, lazily.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from agent.executor import JsonText, ToolFn
from agent.mcp_config import McpServerConfig
from agent.mcp_stdio import MESSAGE_MAX_BYTES, bounded_stdio
from agent.tool_providers import ProvidedTool, ToolProviderError
from agent.tools import ToolSpec, python_name, spec_from_schema

if TYPE_CHECKING:
    from mcp import ClientSession
    from mcp.types import CallToolResult, Tool

__all__ = ["McpProvider", "McpToolError"]

log = logging.getLogger(__name__)

OUTPUT_MAX_CHARS = 65_536
"""Default cap on the text (and on the JSON of a structured value) a call returns."""
VALUE_MAX_DEPTH = 24
"""A structured value nested deeper than this is returned as its text."""


class McpToolError(Exception):
    """A tool call that did not produce a result; the message is what the model reads."""


class _Connection:
    """One live session with the server, owned by one task (see the module docstring)."""

    def __init__(self, server: McpServerConfig, on_list_changed: Any) -> None:
        self.server = server
        self.session: ClientSession | None = None
        self.tools: list[Tool] = []
        self.alive = False
        self.overflow: int | None = None
        """Bytes of a stdio message that broke the bound (the connection was closed)."""
        self._on_list_changed = on_list_changed
        self._stop = asyncio.Event()
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"mcp:{self.server.name}")
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), self.server.start_timeout_s)
        except TimeoutError:
            await self.close()
            raise ToolProviderError(
                f"MCP server {self.server.name!r} did not start and list its tools within "
                f"{self.server.start_timeout_s:g} s"
            ) from None
        except BaseException:
            await self.close()
            raise

    async def _run(self) -> None:
        from mcp import ClientSession

        try:
            async with contextlib.AsyncExitStack() as stack:
                transport = _transport(self.server, self._overflowed)
                read, write = await stack.enter_async_context(transport)
                session = await stack.enter_async_context(
                    ClientSession(read, write, message_handler=self._message)
                )
                await session.initialize()
                self.tools = await _list_tools(session)
                self.session, self.alive = session, True
                self._ready.set_result(None)
                await self._stop.wait()
        except Exception as e:
            if not self._ready.done():
                self._ready.set_exception(
                    ToolProviderError(
                        f"MCP server {self.server.name!r} did not start: {_describe(e)}"
                    )
                )
            elif not self._stop.is_set():
                log.warning("MCP server %s: connection lost: %s", self.server.name, _describe(e))
        finally:
            self.alive = False
            if not self._ready.done():
                self._ready.set_exception(
                    ToolProviderError(f"MCP server {self.server.name!r} closed before it was ready")
                )

    def _overflowed(self, size: int) -> None:
        self.overflow = size
        log.warning("MCP server %s sent a message over %s bytes: closing the connection",
                    self.server.name, f"{size:,}")  # fmt: skip

    async def _message(self, message: Any) -> None:
        method = getattr(message, "method", None)
        if method == "notifications/tools/list_changed":
            self._on_list_changed()
        elif isinstance(message, Exception):
            log.warning("MCP server %s sent something unusable: %s", self.server.name, message)

    def stop(self) -> None:
        """Ask the owner task to end (it closes the session and stops the server)."""
        self._stop.set()

    async def close(self) -> None:
        """End the owner task: at once when the server never got ready (it may be stuck in
        `initialize`), else by its stop event, within 10 s. The transport stops the server."""
        self.alive = False
        self._stop.set()
        if self._task is not None and not self._task.done():
            try:
                if not self._ready.done():
                    raise TimeoutError
                await asyncio.wait_for(asyncio.shield(self._task), 10.0)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task
        if not self._ready.done():
            self._ready.cancel()
        elif not self._ready.cancelled():
            self._ready.exception()  # retrieved: no "never retrieved" warning


def _transport(server: McpServerConfig, on_overflow: Any) -> Any:
    if server.command is not None:
        return bounded_stdio(server, on_overflow=on_overflow)
    from mcp.shared._httpx_utils import create_mcp_http_client

    assert server.url is not None
    client = create_mcp_http_client(headers=dict(server.headers) or None)
    return _owned_http(server.url, client)


@contextlib.asynccontextmanager
async def _owned_http(url: str, client: Any) -> Any:
    from mcp.client.streamable_http import streamable_http_client

    async with client, streamable_http_client(url, http_client=client) as streams:
        yield streams[0], streams[1]


async def _list_tools(session: ClientSession) -> list[Tool]:
    tools: list[Tool] = []
    result = await session.list_tools()
    tools.extend(result.tools)
    pages = 1
    while result.next_cursor and pages < 20:
        from mcp.types import PaginatedRequestParams

        result = await session.list_tools(params=PaginatedRequestParams(cursor=result.next_cursor))
        tools.extend(result.tools)
        pages += 1
    return tools


def _describe(e: BaseException) -> str:
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(_describe(x) for x in e.exceptions)
    return str(e) or type(e).__name__


class McpProvider:
    """The tools of one MCP server (see the module docstring)."""

    def __init__(
        self, server: McpServerConfig, *, output_max_chars: int = OUTPUT_MAX_CHARS
    ) -> None:
        self.server = server
        self.name = f"mcp:{server.name}"
        self.output_max_chars = output_max_chars
        self.restarts = 0
        self.last_error: str | None = None
        self._conn: _Connection | None = None
        self._specs: list[ToolSpec] = []
        self._tools: dict[str, tuple[str, bool]] = {}
        """Python name -> (MCP name, whether its structured result is wrapped in `result`)."""
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._started = False

    async def start(self) -> None:
        self._closed = False
        await self._connection()
        self._started = True

    async def close(self) -> None:
        self._closed = True
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(BaseException):
                await task
        async with self._lock:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None

    async def health(self) -> dict[str, Any]:
        conn = self._conn
        if conn is None or not conn.alive or conn.session is None:
            why = f" (last error: {self.last_error})" if self.last_error else ""
            raise ToolProviderError(f"not connected{why}")
        await conn.session.send_ping()
        return {"transport": self.server.transport, "restarts": self.restarts}

    def specs(self) -> list[ToolSpec]:
        return list(self._specs)

    def tools_for_run(self) -> dict[str, ToolFn]:
        if not self._started:  # a run would silently miss the server's tools
            raise ToolProviderError(
                f"{self.name} was never started: the command must start its runtime's tools "
                "(Runtime.start()) before runs; serve and solve do"
            )
        conn = self._conn
        if not self._closed and (conn is None or not conn.alive):
            self._in_background(self._quiet_connection())  # a dead server: back for this run
        return {spec.name: ProvidedTool(spec, self._caller(spec.name)) for spec in self._specs}

    def _caller(self, name: str) -> Any:
        async def invoke(**arguments: Any) -> str:
            return await self.call(name, arguments)

        return invoke

    def _in_background(self, work: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(work)
        except RuntimeError:  # no loop (a caller outside async code): the next call connects
            work.close()
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _quiet_connection(self) -> None:
        try:
            await self._connection()
        except ToolProviderError as e:
            log.warning("%s: reconnecting failed: %s", self.name, e)

    async def _connection(self) -> _Connection:
        """The live connection, (re)connecting first when there is none."""
        async with self._lock:
            conn = self._conn
            if conn is not None and conn.alive:
                return conn
            if self._closed:
                raise ToolProviderError(f"{self.name} is closed")
            if conn is not None:
                await conn.close()
                self.restarts += 1
                log.warning("%s: restarting the connection to the server", self.name)
            self._conn = None
            conn = _Connection(self.server, self._list_changed)
            try:
                await conn.open()
            except ToolProviderError as e:
                self.last_error = str(e)
                raise
            self._conn = conn
            self._absorb(conn.tools)
            return conn

    def _absorb(self, tools: list[Tool]) -> None:
        specs: list[ToolSpec] = []
        known: dict[str, tuple[str, bool]] = {}
        for tool in tools:
            name = python_name(tool.name)
            if name in known:
                log.warning("%s: tool %r clashes with %r as %s; skipped",
                            self.name, tool.name, known[name][0], name)  # fmt: skip
                continue
            returns, wrapped = _result_schema(tool)
            known[name] = (tool.name, wrapped)
            description = tool.description or tool.title or ""
            specs.append(spec_from_schema(
                name, description, tool.input_schema, returns, provider=self.name
            ))  # fmt: skip
        self._specs, self._tools = specs, known

    def _list_changed(self) -> None:
        async def relist() -> None:
            conn = self._conn
            if conn is None or conn.session is None or not conn.alive:
                return
            timeout = conn.server.call_timeout_s
            try:
                tools = await asyncio.wait_for(_list_tools(conn.session), timeout)
            except Exception as e:
                log.warning("%s: listing the changed tools failed: %s", self.name, _describe(e))
                return
            conn.tools = tools
            self._absorb(tools)

        if not self._closed:
            self._in_background(relist())

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        """Call tool `name` (its Python name) with checked arguments; see the module docstring."""
        mcp_name, wrapped = self._tools.get(name, (name, False))
        try:
            conn = await self._connection()
        except ToolProviderError as e:
            raise McpToolError(f"the tool server is unavailable: {e}") from None
        assert conn.session is not None
        timeout = self.server.call_timeout_s
        try:
            result = await asyncio.wait_for(
                conn.session.call_tool(mcp_name, arguments, read_timeout_seconds=timeout),
                timeout + 1.0,
            )
        except Exception as e:
            raise self._failed(conn, e, timeout) from None
        return self._render(result, wrapped)

    def _failed(self, conn: _Connection, e: Exception, timeout: float) -> McpToolError:
        """The error the code sees; a connection left in an unknown state is let go (its
        owner task stops the server) and the next call or run connects again."""
        from mcp import MCPError
        from mcp.types import CONNECTION_CLOSED, REQUEST_TIMEOUT

        code = getattr(e, "code", None)
        timed_out = isinstance(e, TimeoutError) or code == REQUEST_TIMEOUT
        if timed_out or not isinstance(e, MCPError) or code == CONNECTION_CLOSED:
            why = f"no answer within {timeout:g} s" if timed_out else _describe(e)
            self.last_error = why
            conn.alive = False
            conn.stop()
        if timed_out:
            return McpToolError(f"the tool server did not answer within {timeout:g} s")
        if conn.overflow is not None:
            return McpToolError(
                f"the tool server sent a message over the limit of {MESSAGE_MAX_BYTES:,} bytes; "
                "the connection was closed"
            )
        if code == CONNECTION_CLOSED:
            return McpToolError("the tool server closed the connection (it may have crashed)")
        return McpToolError(_describe(e))

    def _render(self, result: CallToolResult, wrapped: bool) -> str:
        text = _content_text(result)
        if result.is_error:
            raise McpToolError(_cut(text or "the tool reported an error", self.output_max_chars))
        value = result.structured_content
        if wrapped and isinstance(value, dict) and set(value) == {"result"}:
            value = value["result"]
        if value is not None:
            encoded = json.dumps(value, ensure_ascii=False, allow_nan=False, default=str)
            fits = len(encoded) <= self.output_max_chars
            if fits and _depth(value, VALUE_MAX_DEPTH + 1) <= VALUE_MAX_DEPTH:
                return JsonText(text if len(text) <= self.output_max_chars else encoded, value)
            text = text or encoded
        return _cut(text, self.output_max_chars)


def _result_schema(tool: Tool) -> tuple[dict[str, Any] | None, bool]:
    """The schema of what the code gets, and whether the SDK wrapped a plain value as
    {"result": value} (MCPServer does so for `-> int`, `-> list[str]`...)."""
    schema = tool.output_schema
    if not isinstance(schema, dict):
        return None, False
    props = schema.get("properties")
    if (
        isinstance(props, dict)
        and set(props) == {"result"}
        and schema.get("required") == ["result"]
        and schema.get("title") == f"{tool.name}Output"
    ):
        return dict(props["result"]), True
    return schema, False


def _content_text(result: CallToolResult) -> str:
    parts = []
    for block in result.content:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)  # type: ignore[union-attr]
        elif kind in ("image", "audio"):
            data = getattr(block, "data", "") or ""
            parts.append(f"[{kind}: {getattr(block, 'mime_type', '?')}, {_b64_len(data)} bytes]")
        elif kind == "resource":
            resource = getattr(block, "resource", None)
            inner = getattr(resource, "text", None)
            parts.append(
                inner if isinstance(inner, str) else f"[resource: {getattr(resource, 'uri', '?')}]"
            )
        elif kind == "resource_link":
            parts.append(f"[resource: {getattr(block, 'uri', '?')}]")
        else:
            parts.append(f"[{kind or 'unknown'} content]")
    return "\n".join(parts)


def _b64_len(data: str) -> int:
    if len(data) > 4096:
        return len(data) * 3 // 4
    try:
        return len(base64.b64decode(data, validate=False))
    except (binascii.Error, ValueError):
        return len(data)


def _depth(value: Any, stop: int) -> int:
    """Nesting depth of a JSON value, counted no further than `stop`."""
    if stop <= 0 or not isinstance(value, dict | list):
        return 0
    children = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(v, stop - 1) for v in children), default=0)


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + (
        f"\n[... cut: the tool returned {len(text):,} characters; {limit:,} are shown]"
    )
