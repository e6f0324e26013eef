"""ModelClient for any OpenAI-compatible chat server (vLLM in production), over httpx.

One POST /chat/completions per `complete` call, carrying n, stop, seed, max_tokens,
temperature and top_p. With `continue_final_message=True` the last message is an
assistant prefix that the model continues: the body carries vLLM's
`continue_final_message: true, add_generation_prompt: false`.

`stream` (agent.streaming) sends the same body with `stream: true` and yields each
choice's deltas as the server-sent events arrive; with `vllm_stream_extras` (default)
it also asks for vLLM's per-chunk `token_ids` (exact per-candidate token counts) and
continuous usage (prompt tokens known even when the stream is closed early). Closing
the stream closes the HTTP response, which aborts the request in vLLM.

Transient failures (429, 5xx, connection errors, timeouts) are retried with
exponential backoff (jittered), honouring a Retry-After header. When the server
cannot be reached or retries run out: ModelUnavailable. When it rejects the request
(4xx other than 429): ModelRequestError with the server's own message.

Timeouts: `timeout_s` bounds each wait for bytes (httpx's read timeout). Without
streaming that is the whole generation; with streaming it is silence - no chunk for
`timeout_s` seconds - however long the generation runs. A streamed request is retried
only while nothing has been generated; once a token arrived, a failure is raised
(ModelUnavailable, not retried) so generated tokens are never paid for twice.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from agent.model_client import (
    Choice,
    Completion,
    Message,
    ModelError,
    ModelRequestError,
    ModelUnavailable,
    SamplingParams,
    Usage,
)
from agent.streaming import ChoiceDelta, CompletionStream

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""Worth another try; any other 5xx too."""


@dataclass
class ClientStats:
    """What this client has done so far (for metrics and benchmarks)."""

    requests: int = 0
    """Successful completions."""
    attempts: int = 0
    """HTTP attempts, retries included."""
    retries: int = 0
    failures: int = 0
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    """Sum of `Completion.latency_s`."""
    last_latency_s: float = 0.0


def normalize_base_url(base_url: str) -> str:
    """'http://h:8000' -> 'http://h:8000/v1'; a URL with a path is kept as given."""
    url = base_url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"model URL {base_url!r} must look like http://HOST:PORT/v1")
    if parts.path in ("", "/"):
        url += "/v1"
    return url


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


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
        retry_after_max_s: float = 60.0,
        vllm_stream_extras: bool = True,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.base_url = normalize_base_url(base_url)
        self.model_name = model
        self.retries = retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_max_s = retry_after_max_s
        self.vllm_stream_extras = vllm_stream_extras
        self.timeout_s = timeout_s
        self.stats = ClientStats()
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
        data = await self._post_with_retries("chat/completions", body)
        latency = time.perf_counter() - t0
        completion = self._parse_completion(data, latency)
        if len(completion.choices) != params.n:
            log.warning(
                "model server %s returned %d choices for n=%d (does it support n?)",
                self.base_url,
                len(completion.choices),
                params.n,
            )
        self.stats.requests += 1
        self.stats.usage.add(completion.usage)
        self.stats.latency_s += latency
        self.stats.last_latency_s = latency
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
        if not messages:
            raise ValueError("messages must not be empty")
        if continue_final_message and messages[-1].get("role") != "assistant":
            raise ValueError("continue_final_message needs an assistant message last (the prefix)")
        body: dict[str, Any] = {
            "model": self.model_name,
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

    # -- internals ----------------------------------------------------------------
    async def _post_with_retries(self, path: str, body: dict[str, Any]) -> Any:
        return await self._request_with_retries("POST", path, body)

    async def _request_with_retries(
        self, method: str, path: str, body: dict[str, Any] | None
    ) -> Any:
        url = f"{self.base_url}/{path}"
        last = "no attempt made"
        for attempt in range(self.retries + 1):
            self.stats.attempts += 1
            if attempt:
                self.stats.retries += 1
            retry_after: float | None = None
            try:
                resp = await self._http.request(method, path, json=body)
            except httpx.TimeoutException as e:
                last = f"timed out ({type(e).__name__})"
            except httpx.TransportError as e:
                last = f"connection failed ({type(e).__name__}: {e or 'no detail'})"
            else:
                if resp.status_code < 300:
                    try:
                        return resp.json()
                    except ValueError as e:
                        self.stats.failures += 1
                        raise ModelError(
                            f"model server {url} returned HTTP {resp.status_code} with a non-JSON "
                            f"body: {resp.text[:200]!r}; is this an OpenAI-compatible server?"
                        ) from e
                message = _server_message(resp)
                if resp.status_code not in RETRY_STATUSES and resp.status_code < 500:
                    self.stats.failures += 1
                    raise ModelRequestError(
                        _rejection(url, resp.status_code, message, self.model_name)
                    )
                last = f"HTTP {resp.status_code}: {message}"
                retry_after = parse_retry_after(resp.headers.get("retry-after"))
            if attempt == self.retries:
                break
            delay = self._backoff(attempt, retry_after)
            log.warning(
                "model call to %s failed (%s); retry %d/%d in %.2fs",
                url,
                last,
                attempt + 1,
                self.retries,
                delay,
            )
            await asyncio.sleep(delay)
        self.stats.failures += 1
        raise ModelUnavailable(
            f"model server {url} unavailable after {self.retries + 1} attempt(s): {last}. "
            f"Check that the server is running and reachable at {self.base_url} "
            f"(GET {self.base_url}/models) and serves model {self.model_name!r}."
        )

    async def _stream_events(
        self, body: dict[str, Any], stream: CompletionStream
    ) -> AsyncIterator[ChoiceDelta]:
        url = f"{self.base_url}/chat/completions"
        generated = 0  # tokens received: once > 0 the request is never re-sent
        last = "no attempt made"
        t0 = time.perf_counter()
        for attempt in range(self.retries + 1):
            self.stats.attempts += 1
            if attempt:
                self.stats.retries += 1
            retry_after: float | None = None
            try:
                async with self._http.stream("POST", "chat/completions", json=body) as resp:
                    if resp.status_code >= 300:
                        await resp.aread()
                        message = _server_message(resp)
                        if resp.status_code not in RETRY_STATUSES and resp.status_code < 500:
                            self.stats.failures += 1
                            raise ModelRequestError(
                                _rejection(url, resp.status_code, message, self.model_name)
                            )
                        last = f"HTTP {resp.status_code}: {message}"
                        retry_after = parse_retry_after(resp.headers.get("retry-after"))
                    else:
                        async for delta in _read_events(resp, stream, url):
                            generated += delta.tokens
                            yield delta
                        self._record_stream(stream, time.perf_counter() - t0)
                        return
            except httpx.TimeoutException as e:
                last = f"no data for {self.timeout_s:g} s ({type(e).__name__})"
                if generated:
                    self.stats.failures += 1
                    raise ModelUnavailable(
                        f"model server {url} went silent for {self.timeout_s:g} s after "
                        f"{generated} generated tokens; not re-sent (the tokens would be paid "
                        "twice). The server is overloaded or stuck: check its load, or raise "
                        "the model timeout (DISTILLERY_MODEL_TIMEOUT_S)."
                    ) from e
            except httpx.TransportError as e:
                last = f"connection failed ({type(e).__name__}: {e or 'no detail'})"
                if generated:
                    self.stats.failures += 1
                    raise ModelUnavailable(
                        f"model server {url} dropped the stream after {generated} generated "
                        f"tokens ({last}); not re-sent. Check the server's log."
                    ) from e
            if attempt == self.retries:
                break
            delay = self._backoff(attempt, retry_after)
            log.warning(
                "streamed model call to %s failed (%s) before any token; retry %d/%d in %.2fs",
                url, last, attempt + 1, self.retries, delay,
            )  # fmt: skip
            await asyncio.sleep(delay)
        self.stats.failures += 1
        raise ModelUnavailable(
            f"model server {url} unavailable after {self.retries + 1} attempt(s): {last}. "
            f"Check that the server is running and reachable at {self.base_url} "
            f"(GET {self.base_url}/models) and serves model {self.model_name!r}."
        )

    def _record_stream(self, stream: CompletionStream, latency: float) -> None:
        self.stats.requests += 1
        self.stats.usage.add(stream.usage)
        self.stats.latency_s += latency
        self.stats.last_latency_s = latency

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.retry_after_max_s)
        base = min(self.backoff_s * (2**attempt), self.backoff_max_s)
        return base * (0.5 + random.random() / 2)  # jitter: spread retries of many clients

    def _parse_completion(self, data: Any, latency: float) -> Completion:
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
            self.stats.failures += 1
            raise ModelError(
                f"model server {self.base_url} returned a body without chat choices: "
                f"{str(data)[:200]}; is this an OpenAI-compatible chat server?"
            ) from e
        if not choices:
            self.stats.failures += 1
            raise ModelError(f"model server {self.base_url} returned no choices")
        u = data.get("usage") or {}
        usage = Usage(
            prompt_tokens=int(u.get("prompt_tokens") or 0),
            completion_tokens=int(u.get("completion_tokens") or 0),
        )
        return Completion(
            choices=choices,
            usage=usage,
            model=str(data.get("model") or self.model_name),
            latency_s=latency,
        )


async def _read_events(
    resp: httpx.Response, stream: CompletionStream, url: str
) -> AsyncIterator[ChoiceDelta]:
    """The choice deltas of one streamed response; `stream.usage` follows the server's."""
    server_completion = 0
    generated = 0
    events = 0
    async for line in resp.aiter_lines():
        chunk = _sse_data(line, url)
        if chunk is None:
            continue
        if isinstance(chunk, str):  # [DONE]
            break
        events += 1
        if chunk.get("model"):
            stream.model = str(chunk["model"])
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            stream.usage.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            server_completion = int(usage.get("completion_tokens") or 0)
        for delta in _chunk_deltas(chunk, url):
            generated += delta.tokens
            stream.usage.completion_tokens = max(generated, server_completion)
            yield delta
        stream.usage.completion_tokens = max(generated, server_completion)
    if not events:
        raise ModelError(
            f"model server {url} answered a streamed request without any server-sent event; "
            "does it support stream=true?"
        )


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


def _server_message(resp: httpx.Response) -> str:
    """The server's own error message (OpenAI / vLLM / FastAPI shapes), else the raw text."""
    try:
        data = resp.json()
    except ValueError:
        return resp.text.strip()[:500] or resp.reason_phrase
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        for key in ("message", "detail"):
            if data.get(key):
                return str(data[key])
    return str(data)[:500]


def _rejection(url: str, status: int, message: str, model: str) -> str:
    hint = ""
    if status in (401, 403):
        hint = " Check the API key (DISTILLERY_MODEL_API_KEY)."
    elif status == 404:
        hint = f" Check the URL and the served model name ({model!r}; GET /v1/models lists them)."
    elif status in (400, 422):
        hint = " The request was invalid for this server (prompt too long? unsupported parameter?)."
    return f"model server {url} rejected the request (HTTP {status}): {message}.{hint}"
