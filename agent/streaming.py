"""Streamed sampling: the N candidates of one request arrive token by token, by choice index.

Contract:
- A `StreamingModelClient` is a `ModelClient` with `stream(messages, params, ...)`, which
  returns a `CompletionStream` at once (nothing is sent until it is iterated).
- Iterating a `CompletionStream` yields `ChoiceDelta`s: text appended to choice `index`,
  the number of tokens that text took (`tokens`, exact where the server reports token
  ids; otherwise one per chunk), and on the choice's last delta its `finish_reason`
  ("stop": a stop string or the end of the turn; "length": max_tokens). Deltas of
  different choices interleave in generation order.
- `usage` holds what is known so far (prompt tokens once the server says, completion
  tokens summed over the deltas; the server's final count when the stream ends).
- `aclose()` ends the request: the server stops generating every unfinished choice
  (closing the HTTP stream aborts the request in vLLM; the embedded engine drops the
  rows). Idempotent; safe while a delta is being awaited from another task.
- Iteration ends normally only when the server completed the request; a stream that
  carries no choice at all, or that is cut off (a choice without a finish reason and no
  end-of-stream marker), raises ModelError instead, so it is never taken for a short reply.
- Errors are `agent.model_client.ModelError`s. A request that fails before any token
  may be retried by the client; after the first token it is never re-sent (the
  tokens would be paid twice): the error propagates and the caller keeps what it has.

`collect(stream)` turns a stream into the `Completion` that `complete` returns, so a
client can implement `complete` on top of `stream`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from agent.model_client import Choice, Completion, Message, ModelClient, SamplingParams, Usage


@dataclass
class ChoiceDelta:
    index: int
    text: str = ""
    tokens: int = 0
    finish_reason: str | None = None
    """Set on the last delta of a choice."""


@dataclass
class ChoiceState:
    """A choice as accumulated from its deltas."""

    index: int
    parts: list[str] = field(default_factory=list)
    tokens: int = 0
    finish_reason: str | None = None
    finished_at: float | None = None
    """time.perf_counter() when its last delta arrived."""

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def add(self, delta: ChoiceDelta) -> None:
        if delta.text:
            self.parts.append(delta.text)
        self.tokens += delta.tokens
        if delta.finish_reason is not None and self.finish_reason is None:
            self.finish_reason = delta.finish_reason
            self.finished_at = time.perf_counter()


class CompletionStream:
    """An async iterator of `ChoiceDelta`s over one request (see the module docstring).

    Built from an async generator factory that receives the stream (to update `usage`
    and `model`); `aclose()` closes that generator, which ends the request."""

    def __init__(
        self,
        n: int,
        model: str,
        source: Callable[[CompletionStream], AsyncIterator[ChoiceDelta]],
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.n = n
        self.model = model
        self.usage = Usage()
        self.started = time.perf_counter()
        self._gen = source(self)
        self._on_close = on_close
        self._closed = False
        self.ended = False
        """The server finished every choice (the stream was not closed early)."""
        self.unstreamed = False
        """The server ignored `stream: true` and answered with one JSON body: every choice
        arrived whole, at once (the client accepts it as the reply)."""

    def __aiter__(self) -> CompletionStream:
        return self

    async def __anext__(self) -> ChoiceDelta:
        if self._closed:
            raise StopAsyncIteration
        try:
            return await self._gen.__anext__()
        except StopAsyncIteration:
            self.ended = True
            raise

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        aclose = getattr(self._gen, "aclose", None)
        try:
            if aclose is not None:
                await aclose()
        except RuntimeError:
            pass  # the generator is running in another task: its own cleanup ends it
        finally:
            if self._on_close is not None:
                await self._on_close()

    @property
    def closed(self) -> bool:
        return self._closed


@runtime_checkable
class StreamingModelClient(ModelClient, Protocol):
    def stream(
        self,
        messages: Sequence[Message],
        params: SamplingParams,
        *,
        continue_final_message: bool = False,
    ) -> CompletionStream:
        """Start sampling `params.n` continuations; see the module docstring."""
        ...


def supports_streaming(model: object) -> bool:
    return callable(getattr(model, "stream", None))


async def collect(stream: CompletionStream) -> Completion:
    """Read `stream` to its end and return the completion it makes (choices by index)."""
    states = [ChoiceState(i) for i in range(stream.n)]
    try:
        async for delta in stream:
            if 0 <= delta.index < len(states):
                states[delta.index].add(delta)
    finally:
        await stream.aclose()
    choices = [Choice(text=s.text, finish_reason=s.finish_reason, tokens=s.tokens) for s in states]
    return Completion(
        choices=choices,
        usage=Usage(stream.usage.prompt_tokens, stream.usage.completion_tokens),
        model=stream.model,
        latency_s=time.perf_counter() - stream.started,
    )
