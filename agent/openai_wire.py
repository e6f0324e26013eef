"""The OpenAI chat wire format: the server URL, the request body and the decoded reply.

`request_body` carries n, stop, seed, max_tokens, temperature and top_p; with
`continue_final_message=True` the last message is an assistant prefix that the model
continues (vLLM's `continue_final_message: true, add_generation_prompt: false`).
`parse_completion` turns a /chat/completions JSON body into a `Completion`, or raises
ModelError for a body without chat choices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from agent.model_client import Choice, Completion, Message, ModelError, SamplingParams, Usage

__all__ = ["normalize_base_url", "parse_completion", "request_body"]


def normalize_base_url(base_url: str) -> str:
    """'http://h:8000' -> 'http://h:8000/v1'; a URL with a path is kept as given."""
    url = base_url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"model URL {base_url!r} must look like http://HOST:PORT/v1")
    if parts.path in ("", "/"):
        url += "/v1"
    return url


def request_body(
    model: str,
    messages: Sequence[Message],
    params: SamplingParams,
    *,
    continue_final_message: bool = False,
) -> dict[str, Any]:
    """The JSON body of POST /chat/completions (not streamed)."""
    if not messages:
        raise ValueError("messages must not be empty")
    if continue_final_message and messages[-1].get("role") != "assistant":
        raise ValueError("continue_final_message needs an assistant message last (the prefix)")
    body: dict[str, Any] = {
        "model": model,
        "messages": [dict(m) for m in messages],
        "n": params.n,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
        "stream": False,
    }
    if params.stop:
        body["stop"] = list(params.stop)
    if params.seed is not None:
        body["seed"] = params.seed
    if continue_final_message:
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
    return body


def parse_completion(data: Any, latency: float, *, base_url: str, model: str) -> Completion:
    """The `Completion` of a /chat/completions body (choices by index; `model` when the body
    names none); ModelError for a body without chat choices."""
    try:
        raw = sorted(data["choices"], key=lambda c: c.get("index", 0))
        choices = [
            Choice(
                text=(c.get("message") or {}).get("content") or "",
                finish_reason=c.get("finish_reason"),
            )
            for c in raw
        ]
    except (KeyError, TypeError, AttributeError) as e:
        raise ModelError(
            f"model server {base_url} returned a body without chat choices: "
            f"{str(data)[:200]}; is this an OpenAI-compatible chat server?"
        ) from e
    if not choices:
        raise ModelError(f"model server {base_url} returned no choices")
    u = data.get("usage") or {}
    usage = Usage(
        prompt_tokens=int(u.get("prompt_tokens") or 0),
        completion_tokens=int(u.get("completion_tokens") or 0),
    )
    return Completion(
        choices=choices,
        usage=usage,
        model=str(data.get("model") or model),
        latency_s=latency,
    )
