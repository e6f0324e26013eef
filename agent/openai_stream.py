"""The OpenAI client's streamed replies: server-sent events read into choice deltas.

`open_stream` sends one streamed request and reads it up to its first generated token (or
its end): until then a failure may be retried, nothing was generated. A server that ignores
`stream=true` and answers one JSON body has that body taken as the reply (one delta per
choice; `CompletionStream.unstreamed` says so). `read_events` yields the deltas of the rest.

A stream must end properly: with `data: [DONE]`, or with a finish reason for every choice it
started. One that carries no choice at all (`choices: []` throughout) or that ends (cleanly)
with a choice unfinished and no `[DONE]` raises ModelError (a truncated or malformed stream
is never taken for a short answer).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from agent.model_client import Completion, ModelError
from agent.openai_retry import raise_for_status
from agent.streaming import ChoiceDelta, CompletionStream

__all__ = ["OpenStream", "open_stream", "read_events"]

log = logging.getLogger("agent.openai_client")


@dataclass
class OpenStream:
    """A streamed response that answered 2xx, read up to its first generated token."""

    resp: httpx.Response
    events: AsyncGenerator[ChoiceDelta, None]
    primed: list[ChoiceDelta] = field(default_factory=list)
    """Deltas already read (none of them generated a token, but the last one may)."""
    ended: bool = False
    """The stream ended while priming (every delta is in `primed`)."""


async def open_stream(
    http: httpx.AsyncClient,
    body: dict[str, Any],
    stream: CompletionStream,
    url: str,
    *,
    model: str,
    decode: Callable[[Any], Completion],
) -> OpenStream:
    """One streamed attempt, read up to its first generated token (or its end). `decode`
    turns a JSON reply (a server that ignored stream=true) into its Completion."""
    request = http.build_request("POST", "chat/completions", json=body)
    resp = await http.send(request, stream=True)
    events: AsyncGenerator[ChoiceDelta, None] | None = None
    try:
        if resp.status_code >= 300:
            await resp.aread()
            raise_for_status(resp, url, model)
        if _is_json(resp):  # the server ignored stream=true: its one body is the reply
            await resp.aread()
            return _unstreamed(resp, stream, url, decode)
        events = read_events(resp, stream, url)
        opened = OpenStream(resp, events)
        while True:
            try:
                delta = await events.__anext__()
            except StopAsyncIteration:
                opened.ended = True
                return opened
            opened.primed.append(delta)
            if delta.tokens or delta.text or delta.finish_reason:
                return opened
    except BaseException:
        if events is not None:
            await events.aclose()
        await resp.aclose()
        raise


def _unstreamed(
    resp: httpx.Response, stream: CompletionStream, url: str, decode: Callable[[Any], Completion]
) -> OpenStream:
    """A JSON completion answered to a streamed request, as one delta per choice."""
    try:
        data = resp.json()
    except ValueError as e:
        raise ModelError(f"model server {url} answered a streamed request with a JSON "
                         "body that does not parse") from e
    completion = decode(data)
    log.warning("model server %s answered a streamed request with one JSON body "
                "(stream=true ignored); its choices are used as they are", url)
    stream.unstreamed = True
    stream.model = completion.model
    stream.usage.prompt_tokens = completion.usage.prompt_tokens
    stream.usage.completion_tokens = completion.usage.completion_tokens
    total_chars = sum(len(c.text) for c in completion.choices) or 1
    primed = [
        ChoiceDelta(i, c.text, round(completion.usage.completion_tokens * len(c.text)
                                     / total_chars), c.finish_reason or "stop")
        for i, c in enumerate(completion.choices)
    ]  # fmt: skip
    opened = OpenStream(resp, _no_events())
    opened.primed, opened.ended = primed, True
    return opened


def _is_json(resp: httpx.Response) -> bool:
    kind = resp.headers.get("content-type", "").split(";")[0].strip().lower()
    return kind == "application/json" or kind.endswith("+json")


async def _no_events() -> AsyncGenerator[ChoiceDelta, None]:
    return
    yield  # pragma: no cover - makes this an (empty) async generator


async def read_events(
    resp: httpx.Response, stream: CompletionStream, url: str
) -> AsyncGenerator[ChoiceDelta, None]:
    """The choice deltas of one streamed response; `stream.usage` follows the server's.
    Raises ModelError for a stream without events, without any choice, or that ended
    without `[DONE]` while a choice it started had no finish reason (truncated)."""
    server_completion = 0
    generated = 0
    events = 0
    started: set[int] = set()
    finished: set[int] = set()
    done = False
    async for line in resp.aiter_lines():
        chunk = _sse_data(line, url)
        if chunk is None:
            continue
        if isinstance(chunk, str):  # [DONE]
            done = True
            break
        events += 1
        if chunk.get("model"):
            stream.model = str(chunk["model"])
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            stream.usage.prompt_tokens = _count(usage.get("prompt_tokens"))
            server_completion = _count(usage.get("completion_tokens"))
        for delta in _chunk_deltas(chunk, url):
            started.add(delta.index)
            if delta.finish_reason is not None:
                finished.add(delta.index)
            generated += delta.tokens
            stream.usage.completion_tokens = max(generated, server_completion)
            yield delta
        stream.usage.completion_tokens = max(generated, server_completion)
    _check_stream_end(url, events, started, finished, done)


def _check_stream_end(
    url: str, events: int, started: set[int], finished: set[int], done: bool
) -> None:
    """Raise ModelError (logged) unless the stream ended as a complete answer."""
    problem = None
    if not events:
        problem = (
            "answered a streamed request without any server-sent event; "
            "does it support stream=true?"
        )
    elif not started:
        problem = (
            f"sent {events} stream event(s) without any choice (`choices: []` throughout); "
            "no completion was generated"
        )
    elif not done and started - finished:
        unfinished = ", ".join(str(i) for i in sorted(started - finished))
        problem = (
            f"ended the stream without `data: [DONE]` while choice(s) {unfinished} had no "
            "finish reason: the completion was cut short"
        )
    if problem is not None:
        log.warning("model server %s %s", url, problem)
        raise ModelError(f"model server {url} {problem}")


def _count(value: Any) -> int:
    """A token count from the server's usage (0 when it is missing or not a number)."""
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def _sse_data(line: str, url: str) -> dict[str, Any] | str | None:
    """The JSON object of one server-sent-events line, "[DONE]", or None (not data)."""
    line = line.strip()
    if not line.startswith("data:"):
        return None  # blank separators, comments, event: / id: lines
    payload = line[5:].strip()
    if payload == "[DONE]":
        return payload
    try:
        data = json.loads(payload)
    except ValueError as e:
        raise ModelError(
            f"model server {url} sent a stream line that is not JSON: {payload[:200]!r}; "
            "is this an OpenAI-compatible server?"
        ) from e
    if not isinstance(data, dict):
        raise ModelError(f"model server {url} sent a stream event that is not an object")
    err = data.get("error")
    if err:
        message = err.get("message") if isinstance(err, dict) else str(err)
        raise ModelError(f"model server {url} failed during the stream: {message}")
    return data


def _chunk_deltas(chunk: dict[str, Any], url: str) -> list[ChoiceDelta]:
    out = []
    for c in chunk.get("choices") or []:
        try:
            index = int(c.get("index", 0))
            delta = c.get("delta") or {}
            text = delta.get("content") or ""
        except (TypeError, ValueError, AttributeError) as e:
            raise ModelError(
                f"model server {url} sent a malformed stream choice: {c!r:.200}"
            ) from e
        ids = c.get("token_ids")
        tokens = len(ids) if isinstance(ids, list) else (1 if text else 0)
        out.append(ChoiceDelta(index, text, tokens, c.get("finish_reason")))
    return out
