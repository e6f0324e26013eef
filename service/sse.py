"""Server-sent events: wire encoding and a streaming response that always cleans up.

`RunStreamingResponse` calls `on_close` however the stream ends (finished, client gone,
server shutdown), even when the body generator never started or was left suspended.
Starlette cancels the stream when the client disconnects (ASGI spec < 2.4, as uvicorn
reports), which lands here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from service.textsafe import dumps

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
}
KEEPALIVE = b": keep-alive\n\n"


def sse_event(data: str | bytes, event: str | None = None) -> bytes:
    """One event; `data` must not contain newlines (JSON from json.dumps has none)."""
    payload = data if isinstance(data, bytes) else data.encode("utf-8", "replace")
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + payload + b"\n\n"


def sse_json(obj: Any, event: str | None = None) -> bytes:
    return sse_event(dumps(obj), event)


class RunStreamingResponse(StreamingResponse):
    media_type = "text/event-stream"

    def __init__(
        self,
        content: AsyncIterator[bytes],
        on_close: Callable[[], None],
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(content, headers={**SSE_HEADERS, **(headers or {})})
        self._on_close = on_close
        self._content = content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
