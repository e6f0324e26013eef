"""ModelClient for any OpenAI-compatible chat server (vLLM in production), over httpx.

Its parts: the wire format (request body, decoded reply: agent/openai_wire.py), the retry
policy and its one loop (agent/openai_retry.py) and the streamed replies
(agent/openai_stream.py); this module puts them together.

One POST /chat/completions per `complete` call, carrying n, stop, seed, max_tokens,
temperature and top_p. With `continue_final_message=True` the last message is an
assistant prefix that the model continues: the body carries vLLM's
`continue_final_message: true, add_generation_prompt: false`.

`stream` (agent.streaming) sends the same body with `stream: true` and yields each
choice's deltas as the server-sent events arrive; with `vllm_stream_extras` (default)
it also asks for vLLM's per-chunk `token_ids` (exact per-candidate token counts) and
continuous usage (prompt tokens known even when the stream is closed early). Closing
the stream closes the HTTP response, which aborts the request in vLLM.

Transient failures (408, 429, 5xx, connection errors, timeouts) are retried, plain
and streamed requests by the same loop, after exponential backoff (jittered) or the
server's Retry-After. A wait is never taken when it is longer than `retry_after_max_s`
(the server asks for more: it is down for a while) or than what is left of the
caller's deadline (`agent.model_client.call_scope`): the call fails at once instead,
so an outage never holds the caller for nothing. When the server cannot be reached,
retries run out or a wait is refused: ModelUnavailable (`retry_after_s`: the server's
Retry-After, also noted in the call scope). When it rejects the request (4xx other
than 408/429): ModelRequestError with the server's own message.

A stream must end properly: with `data: [DONE]`, or with a finish reason for every
choice it started. One that carries no choice at all (`choices: []` throughout) or
that ends (cleanly) with a choice unfinished and no `[DONE]` raises ModelError (a
truncated or malformed stream is never taken for a short answer); a connection that
breaks mid-stream is ModelUnavailable.

Timeouts: `timeout_s` bounds each wait for bytes (httpx's read timeout). Without
streaming that is the whole generation; with streaming it is silence - no chunk for
`timeout_s` seconds - however long the generation runs. A streamed request is retried
only while nothing has been generated; once a token arrived, a failure is raised
(ModelUnavailable, not retried) so generated tokens are never paid for twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from agent.model_client import Completion, Message, ModelError, SamplingParams, Usage
from agent.openai_retry import (
    RETRY_STATUSES,
    ClientStats,
    RetryPolicy,
    parse_retry_after,
    raise_for_status,
)
from agent.openai_stream import open_stream
from agent.openai_wire import normalize_base_url, parse_completion, request_body
from agent.streaming import ChoiceDelta, CompletionStream

__all__ = ["RETRY_STATUSES", "ClientStats", "OpenAIChatClient", "normalize_base_url",
           "parse_retry_after"]  # fmt: skip

log = logging.getLogger(__name__)


class OpenAIChatClient:
    """See the module docstring. Implements `agent.model_client.ModelClient`."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
        backoff_s: float = 0.5,
        backoff_max_s: float = 20.0,
        retry_after_max_s: float = 5.0,
        vllm_stream_extras: bool = True,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.base_url = normalize_base_url(base_url)
        self.model_name = model
        self.vllm_stream_extras = vllm_stream_extras
        self.timeout_s = timeout_s
        self.stats = ClientStats()
        self.retry = RetryPolicy(
            self.base_url, model, self.stats, retries=retries, timeout_s=timeout_s,
            backoff_s=backoff_s, backoff_max_s=backoff_max_s, retry_after_max_s=retry_after_max_s,
        )  # fmt: skip
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.AsyncClient(
            base_url=self.base_url + "/",
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            transport=transport,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )

    # -- ModelClient --------------------------------------------------------------
    async def complete(
        self,
        messages: Sequence[Message],
        params: SamplingParams,
        *,
        continue_final_message: bool = False,
    ) -> Completion:
        body = self.request_body(messages, params, continue_final_message=continue_final_message)
        t0 = time.perf_counter()
        data = await self._request_with_retries("POST", "chat/completions", body)
        latency = time.perf_counter() - t0
        completion = self._parse_completion(data, latency)
        if len(completion.choices) != params.n:
            log.warning(
                "model server %s returned %d choices for n=%d (does it support n?)",
                self.base_url,
                len(completion.choices),
                params.n,
            )
        self._record(completion.usage, latency)
        return completion

    async def aclose(self) -> None:
        await self._http.aclose()

    def stream(
        self,
        messages: Sequence[Message],
        params: SamplingParams,
        *,
        continue_final_message: bool = False,
    ) -> CompletionStream:
        """The same request as `complete`, streamed (see the module docstring)."""
        body = self.request_body(messages, params, continue_final_message=continue_final_message)
        body["stream"] = True
        if self.vllm_stream_extras:
            body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
            body["return_token_ids"] = True
        return CompletionStream(
            params.n, self.model_name, lambda stream: self._stream_events(body, stream)
        )

    # -- extras -------------------------------------------------------------------
    async def list_models(self) -> list[str]:
        """GET /models: the served model names (readiness checks)."""
        data = await self._request_with_retries("GET", "models", None)
        try:
            return [str(m["id"]) for m in data["data"]]
        except (KeyError, TypeError) as e:
            raise ModelError(
                f"model server {self.base_url} returned an invalid /models body"
            ) from e

    def request_body(
        self,
        messages: Sequence[Message],
        params: SamplingParams,
        *,
        continue_final_message: bool = False,
    ) -> dict[str, Any]:
        return request_body(self.model_name, messages, params,
                            continue_final_message=continue_final_message)  # fmt: skip

    # -- internals ----------------------------------------------------------------
    async def _request_with_retries(
        self, method: str, path: str, body: dict[str, Any] | None
    ) -> Any:
        url = f"{self.base_url}/{path}"
        return await self.retry.run(url, lambda: self._attempt_json(method, path, body, url))

    async def _attempt_json(
        self, method: str, path: str, body: dict[str, Any] | None, url: str
    ) -> Any:
        """One non-streamed attempt: the JSON body of a 2xx answer."""
        resp = await self._http.request(method, path, json=body)
        raise_for_status(resp, url, self.model_name)
        try:
            return resp.json()
        except ValueError as e:
            raise ModelError(
                f"model server {url} returned HTTP {resp.status_code} with a non-JSON "
                f"body: {resp.text[:200]!r}; is this an OpenAI-compatible server?"
            ) from e

    async def _stream_events(
        self, body: dict[str, Any], stream: CompletionStream
    ) -> AsyncIterator[ChoiceDelta]:
        url = f"{self.base_url}/chat/completions"
        t0 = time.perf_counter()
        opened = await self.retry.run(url, lambda: open_stream(
            self._http, body, stream, url, model=self.model_name,
            decode=lambda data: self._parse_completion(data, 0.0)))  # fmt: skip
        generated = 0  # tokens received: the request is never re-sent from here on
        try:
            for delta in opened.primed:
                generated += delta.tokens
                yield delta
            if not opened.ended:
                async for delta in opened.events:
                    generated += delta.tokens
                    yield delta
        except httpx.TimeoutException as e:
            raise self.retry.unavailable(
                f"model server {url} went silent for {self.timeout_s:g} s after "
                f"{generated} generated tokens; not re-sent (the tokens would be paid "
                "twice). The server is overloaded or stuck: check its load, or raise "
                "the model timeout (DISTILLERY_MODEL_TIMEOUT_S)."
            ) from e
        except httpx.TransportError as e:
            raise self.retry.unavailable(
                f"model server {url} dropped the stream after {generated} generated "
                f"tokens (connection failed: {type(e).__name__}: {e or 'no detail'}); "
                "not re-sent. Check the server's log."
            ) from e
        except ModelError:
            self.stats.failures += 1
            raise
        finally:
            await opened.events.aclose()
            await opened.resp.aclose()
        self._record(stream.usage, time.perf_counter() - t0)

    def _record(self, usage: Usage, latency: float) -> None:
        self.stats.requests += 1
        self.stats.usage.add(usage)
        self.stats.latency_s += latency
        self.stats.last_latency_s = latency

    def _parse_completion(self, data: Any, latency: float) -> Completion:
        try:
            return parse_completion(data, latency, base_url=self.base_url, model=self.model_name)
        except ModelError:
            self.stats.failures += 1
            raise
