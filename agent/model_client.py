"""The one async interface through which the agent reaches a chat model.

Implementations: `agent.openai_client.OpenAIChatClient` (any OpenAI-compatible server,
vLLM in production) and `agent.transformers_engine.TransformersEngine` (in-process,
the embedded default). Tests drive the loop with a scripted OpenAI-compatible server.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    """The model server cannot be reached (connection refused, DNS, timeout, 5xx after retries)."""


class ModelRequestError(ModelError):
    """The server rejected the request (4xx other than 429): retrying will not help."""


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
