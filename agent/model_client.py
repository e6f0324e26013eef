"""The one async interface through which the agent reaches a chat model.

Implementations: `agent.openai_client.OpenAIChatClient` (any OpenAI-compatible server,
vLLM in production) and `agent.transformers_engine.TransformersEngine` (in-process,
the embedded default). Tests drive the loop with a scripted OpenAI-compatible server.

`call_scope(deadline)` tells a client, without changing any signature, by when the calls
made in the current context (and in every task started from it) must be answered: a
client never waits to retry past it and fails at once instead (`ModelUnavailable`). The
scope also carries back what the server asked for: `retry_after_s`, the wait a failed
call's `Retry-After` named, so a gateway can pass it on to its own client.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

Message = dict[str, str]
"""A chat message: {"role": "system" | "user" | "assistant", "content": str}."""

# Generation stops on these (the protocol): the end of a code block, or the model
# starting to invent its own observation.
PROTOCOL_STOP = ["<end_code>", "Observation:"]


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 0.4
    top_p: float = 0.8
    max_tokens: int = 1024
    stop: list[str] = field(default_factory=lambda: list(PROTOCOL_STOP))
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass
class Choice:
    """One sampled continuation. `text` excludes any prefilled assistant prefix."""

    text: str
    finish_reason: str | None = None
    tokens: int | None = None
    """Completion tokens of this choice, where the backend reports them per choice."""


@dataclass
class Completion:
    choices: list[Choice]
    usage: Usage
    model: str
    latency_s: float = 0.0


class ModelError(Exception):
    """The model call failed; the message says what happened and what to do next."""


class ModelUnavailable(ModelError):
    """The model server cannot be reached (connection refused, DNS, timeout, 5xx after
    retries), or it asked for a wait (`Retry-After`) longer than the client may wait.

    `retry_after_s`: the wait the server asked for in its last answer (None when it named
    none), for the caller to pass on."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelRequestError(ModelError):
    """The server rejected the request (4xx other than 429): retrying will not help."""


@dataclass
class CallScope:
    """See `call_scope`."""

    deadline: float | None = None
    """time.monotonic() by which every model call in the scope must be answered."""
    retry_after_s: float | None = None
    """Set by the client when a call fails as unavailable after the server named a wait
    (`Retry-After`, seconds): the largest such wait seen in the scope."""

    def remaining_s(self) -> float | None:
        """Seconds left before the deadline (negative once past), None without one."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def note_retry_after(self, seconds: float | None) -> None:
        if seconds is not None and (self.retry_after_s is None or seconds > self.retry_after_s):
            self.retry_after_s = seconds


_SCOPE: ContextVar[CallScope | None] = ContextVar("model_call_scope", default=None)


@contextmanager
def call_scope(deadline: float | None) -> Iterator[CallScope]:
    """Model calls made in this block, and in tasks created in it (asyncio copies the
    context when a task is created), see `deadline` (time.monotonic()); the yielded scope
    collects `retry_after_s`. Nested scopes: the innermost one applies."""
    scope = CallScope(deadline)
    token = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(token)


def current_call_scope() -> CallScope | None:
    """The innermost `call_scope` of the running context, None outside any."""
    return _SCOPE.get()


@runtime_checkable
class ModelClient(Protocol):
    model_name: str

    async def complete(
        self,
        messages: Sequence[Message],
        params: SamplingParams,
        *,
        continue_final_message: bool = False,
    ) -> Completion:
        """Sample `params.n` continuations of the chat.

        With `continue_final_message`, the last message is an assistant turn that the
        model continues (first-thought prefix); the returned texts are the continuation only.
        Raises ModelError (or a subclass) on failure.
        """
        ...

    async def aclose(self) -> None: ...
