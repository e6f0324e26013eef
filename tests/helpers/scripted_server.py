"""A real-HTTP, OpenAI-compatible chat server whose replies are scripted by the test.

It runs uvicorn in a background thread on a free loopback port and serves
`POST /v1/chat/completions` (stream false or true) and `GET /v1/models`. Each chat request
takes the next item of the script (or asks the handler):

    srv.script(["Thought: a\\nCode:\\n```py\\nx = 1\\n```<end_code>"] * 8)  # the n choice texts
    srv.script("same text for every one of the n choices")
    srv.script(Error(429, headers={"Retry-After": "0"}), Error(500), Drop())
    srv.script(Reply(["..."], delay_s=1))
    srv.script(RawStream([{"choices": []}, "[DONE]"]))  # a stream sent exactly as given
    srv.handler = lambda body: ["text"] * body.get("n", 1)  # used when the script is empty

Like vLLM, a choice text is cut at the first of the request's `stop` strings (which
is excluded from the output, finish_reason "stop").

With `stream: true` the same replies go out as server-sent events, one chunk per
"token" (a word with its leading whitespace), choices interleaved by time: choice i
sends a token every `Reply.token_delay_s` seconds (a list gives one delay per choice),
each chunk carrying `index`, `delta.content`, `token_ids` (one id per token) and, on
its last token, `finish_reason`; usage follows when `stream_options.include_usage`.
When the client closes the stream early the server stops sending and records it:
`srv.streams[k]` (a `StreamRecord`: tokens sent per choice, `closed_by_client`).
Usage counts whitespace-separated words (prompt: every message's content; completion:
every choice). Every request is recorded: `srv.requests` (bodies, in arrival order),
`srv.headers`, `srv.paths`.
A request with nothing scripted and no handler gets a 400 that says so (a client
error, so clients do not retry it).

Use the `scripted_server` fixture (function-scoped view of one server per test
session), or `with ScriptedServer() as srv:` directly.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest


@dataclass
class Reply:
    """A successful completion: one text per choice (a str is repeated n times)."""

    texts: list[str] | str
    finish_reasons: list[str] | None = None
    usage: dict[str, int] | None = None
    """Overrides the computed usage (prompt_tokens, completion_tokens)."""
    delay_s: float = 0.0
    apply_stop: bool = True
    """Cut each text at the first stop string of the request, like vLLM."""
    token_delay_s: float | list[float] = 0.0
    """Streaming only: seconds between the tokens of a choice (a list: per choice)."""
    ignore_stream: bool = False
    """Answer a streamed request with one JSON body anyway (servers that ignore stream)."""


@dataclass
class StreamRecord:
    """What a streamed response sent before it ended."""

    request: int
    """Index into `srv.requests`."""
    tokens_sent: list[int]
    """Per choice."""
    tokens_total: list[int]
    """Per choice: what the scripted text would have taken in full."""
    closed_by_client: bool = False
    finished: bool = False
    """Every choice was sent to its end."""


@dataclass
class Error:
    """An HTTP error response. `body` defaults to an OpenAI-style error object."""

    status: int
    message: str = "scripted error"
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Drop:
    """Send the response headers, then close the connection before any body."""

    delay_s: float = 0.0


@dataclass
class RawStream:
    """A 200 text/event-stream whose events are sent exactly as given, one `data:` line
    each (a dict as JSON, a str as it is: "[DONE]"), then the body ends cleanly; nothing
    is added (no `[DONE]` unless listed). For malformed or truncated upstream streams."""

    events: list[dict[str, Any] | str]
    delay_s: float = 0.0


ScriptItem = (
    Reply | Error | Drop | RawStream | list[str] | str | Callable[[dict[str, Any]], Any]
)


def _words(text: str) -> int:
    return len(text.split())


def _pieces(text: str) -> list[str]:
    """The streamed "tokens" of a text: each word with the whitespace before it."""
    parts = re.findall(r"\s*\S+", text)
    tail = text[len("".join(parts)) :]
    if tail and parts:
        parts[-1] += tail
    elif tail:
        parts = [tail]
    return parts


def _cut_at_stop(text: str, stop: list[str]) -> tuple[str, str]:
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut], "stop"


class ScriptedServer:
    """See the module docstring."""

    def __init__(self, model: str = "scripted-model", *, check_model: bool = True) -> None:
        self.model = model
        self.check_model = check_model
        self.handler: Callable[[dict[str, Any]], Any] | None = None
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.arrival_times: list[float] = []
        self.streams: list[StreamRecord] = []
        self._script: deque[ScriptItem] = deque()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._sock: socket.socket | None = None
        self.port = 0

    # -- scripting ------------------------------------------------------------
    def script(self, *items: ScriptItem) -> ScriptedServer:
        """Append replies; each chat request consumes one item, in order."""
        with self._lock:
            self._script.extend(items)
        return self

    @property
    def pending(self) -> int:
        """Script items not consumed yet."""
        return len(self._script)

    def reset(self) -> None:
        """Forget the script, the handler and the recorded requests."""
        with self._lock:
            self._script.clear()
            self.handler = None
            self.requests.clear()
            self.headers.clear()
            self.paths.clear()
            self.arrival_times.clear()
            self.streams.clear()

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        return [
            b for b, p in zip(self.requests, self.paths, strict=True) if p.endswith("/completions")
        ]

    # -- lifecycle ------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL to give an OpenAI client: http://127.0.0.1:PORT/v1"""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 10.0) -> ScriptedServer:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))  # a free port, held from now on: no race
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app, interface="asgi3", log_level="critical", access_log=False, lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True, name="scripted-server"
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("scripted server did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._server = None

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the ASGI app -----------------------------------------------------------
    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body_bytes = b""
        while True:
            msg = await receive()
            body_bytes += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        path: str = scope["path"]
        method: str = scope["method"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}

        if method == "GET" and path == "/v1/models":
            data = {"id": self.model, "object": "model", "created": 0, "owned_by": "scripted"}
            await _send_json(send, 200, {"object": "list", "data": [data]})
            return
        if not (method == "POST" and path == "/v1/chat/completions"):
            await _send_json(send, 404, _err(f"no route {method} {path}", "NotFoundError", 404))
            return
        try:
            body = json.loads(body_bytes or b"null")
        except json.JSONDecodeError as e:
            await _send_json(send, 400, _err(f"invalid JSON: {e}", "BadRequestError", 400))
            return
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            self.paths.append(path)
            self.arrival_times.append(time.monotonic())
            item: Any = self._script.popleft() if self._script else self.handler
        await self._respond(send, body, item, receive)

    async def _respond(self, send: Any, body: Any, item: Any, receive: Any = None) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            await _send_json(
                send, 400, _err("body must be an object with 'messages'", "BadRequestError", 400)
            )
            return
        if self.check_model and body.get("model") != self.model:
            msg = f"The model `{body.get('model')}` does not exist."
            await _send_json(send, 404, _err(msg, "NotFoundError", 404))
            return
        if item is None:
            n = len(self.requests)
            msg = f"scripted server: nothing scripted for chat request #{n} and no handler set"
            await _send_json(send, 400, _err(msg, "BadRequestError", 400))
            return
        try:
            if callable(item) and not isinstance(item, Reply | Error | Drop | RawStream):
                item = item(body)
            if isinstance(item, str | list):
                item = Reply(item)
            if not isinstance(item, Reply | Error | Drop | RawStream):
                raise TypeError(f"unsupported script item {item!r}")
            completion = self._completion(body, item) if isinstance(item, Reply) else None
        except Exception as e:  # a broken script is the test's bug: say so, do not look like a 5xx
            msg = f"scripted server: script failed: {type(e).__name__}: {e}"
            await _send_json(send, 400, _err(msg, "BadRequestError", 400))
            return
        if item.delay_s:
            await asyncio.sleep(item.delay_s)
        if isinstance(item, Drop):
            start = {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")],
            }
            await send(start)
            raise ConnectionAbortedError("scripted connection drop")  # uvicorn closes the socket
        if isinstance(item, RawStream):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})  # fmt: skip
            for event in item.events:
                data = event if isinstance(event, str) else json.dumps(event)
                chunk = b"data: " + data.encode() + b"\n\n"
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if isinstance(item, Error):
            payload = (
                item.body
                if item.body is not None
                else _err(item.message, "ScriptedError", item.status)
            )
            await _send_json(send, item.status, payload, item.headers)
            return
        assert completion is not None
        if body.get("stream") and not getattr(item, "ignore_stream", False):
            await self._stream(send, receive, body, item, completion)
            return
        await _send_json(send, 200, completion)

    async def _stream(
        self, send: Any, receive: Any, body: dict[str, Any], reply: Reply, completion: Any
    ) -> None:
        """Send `completion` as server-sent events (see the module docstring)."""
        choices = completion["choices"]
        n = len(choices)
        delays = reply.token_delay_s
        delays = list(delays) if isinstance(delays, list) else [float(delays)] * n
        if len(delays) != n:
            raise ValueError(f"token_delay_s has {len(delays)} delays for n={n}")
        pieces = [_pieces(c["message"]["content"]) for c in choices]
        events: list[tuple[float, int, int]] = []  # (time, choice, piece) in send order
        for i, ps in enumerate(pieces):
            for k in range(max(len(ps), 1)):
                events.append(((k + 1) * delays[i], i, k))
        events.sort()
        with self._lock:
            record = StreamRecord(
                request=len(self.requests) - 1,
                tokens_sent=[0] * n,
                tokens_total=[len(p) for p in pieces],
            )
            self.streams.append(record)
        disconnected = asyncio.Event()

        async def watch() -> None:
            while receive is not None:
                msg = await receive()
                if msg.get("type") == "http.disconnect":
                    disconnected.set()
                    return

        watcher = asyncio.create_task(watch())
        base = {"id": completion["id"], "object": "chat.completion.chunk",
                "created": completion["created"], "model": self.model}  # fmt: skip

        async def emit(payload: Any) -> bool:
            if disconnected.is_set():
                return False
            data = b"data: " + (payload if isinstance(payload, bytes) else
                                json.dumps(payload).encode()) + b"\n\n"  # fmt: skip
            try:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            except OSError:
                disconnected.set()
                return False
            return True

        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})  # fmt: skip
            t0 = time.monotonic()
            for at, i, k in events:
                wait = t0 + at - time.monotonic()
                if wait > 0:
                    try:
                        await asyncio.wait_for(disconnected.wait(), wait)
                    except TimeoutError:
                        pass
                last = k >= len(pieces[i]) - 1
                text = pieces[i][k] if pieces[i] else ""
                choice = {"index": i, "delta": {"content": text},
                          "finish_reason": choices[i]["finish_reason"] if last else None,
                          "token_ids": [k] if pieces[i] else []}  # fmt: skip
                if not await emit({**base, "choices": [choice]}):
                    break
                record.tokens_sent[i] += 1 if pieces[i] else 0
            else:
                if (body.get("stream_options") or {}).get("include_usage"):
                    await emit({**base, "choices": [], "usage": completion["usage"]})
                await emit(b"[DONE]")
                record.finished = True
            record.closed_by_client = disconnected.is_set()
            if not disconnected.is_set():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()

    def _completion(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        n = int(body.get("n") or 1)
        texts = [reply.texts] * n if isinstance(reply.texts, str) else list(reply.texts)
        if len(texts) == 1 and n > 1:
            texts = texts * n
        if len(texts) != n:
            raise ValueError(f"scripted reply has {len(texts)} texts but the request asked n={n}")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        choices: list[dict[str, Any]] = []
        for i, text in enumerate(texts):
            reason = "stop"
            if reply.apply_stop:
                text, reason = _cut_at_stop(text, stop)
            if reply.finish_reasons is not None:
                reason = reply.finish_reasons[i]
            choices.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": reason,
                    "logprobs": None,
                }
            )
        prompt_tokens = sum(_words(str(m.get("content", ""))) for m in body["messages"])
        completion_tokens = sum(_words(t) for t in (c["message"]["content"] for c in choices))
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
        if reply.usage:
            usage.update(reply.usage)
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {
            "id": f"chatcmpl-scripted-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": choices,
            "usage": usage,
        }


def _err(message: str, type_: str, code: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


async def _send_json(
    send: Any, status: int, payload: Any, headers: dict[str, str] | None = None
) -> None:
    data = json.dumps(payload).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": data})


@pytest.fixture(scope="session")
def scripted_server_session() -> Iterator[ScriptedServer]:
    """One scripted server for the whole test session (use `scripted_server` in tests)."""
    srv = ScriptedServer().start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def scripted_server(scripted_server_session: ScriptedServer) -> Iterator[ScriptedServer]:
    """The session's scripted server, reset (empty script, no handler, no records) for this test."""
    scripted_server_session.reset()
    yield scripted_server_session
    scripted_server_session.reset()
