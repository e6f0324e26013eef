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

import asyncio
import email.utils
import json
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
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
    current_call_scope,
)
from agent.streaming import ChoiceDelta, CompletionStream

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""Worth another try; any other 5xx too."""


class _Transient(Exception):
    """One attempt failed in a way worth another try (a 429/5xx answer)."""

    def __init__(self, reason: str, retry_after: float | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@dataclass
class _OpenStream:
    """A streamed response that answered 2xx, read up to its first generated token."""

    resp: httpx.Response
    events: AsyncGenerator[ChoiceDelta, None]
    primed: list[ChoiceDelta] = field(default_factory=list)
    """Deltas already read (none of them generated a token, but the last one may)."""
    ended: bool = False
    """The stream ended while priming (every delta is in `primed`)."""


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
        retry_after_max_s: float = 5.0,
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
    async def _request_with_retries(
        self, method: str, path: str, body: dict[str, Any] | None
    ) -> Any:
        url = f"{self.base_url}/{path}"
        return await self._retrying(url, lambda: self._attempt_json(method, path, body, url))

    async def _attempt_json(
        self, method: str, path: str, body: dict[str, Any] | None, url: str
    ) -> Any:
        """One non-streamed attempt: the JSON body of a 2xx answer."""
        resp = await self._http.request(method, path, json=body)
        self._raise_for_status(resp, url)
        try:
            return resp.json()
        except ValueError as e:
            raise ModelError(
                f"model server {url} returned HTTP {resp.status_code} with a non-JSON "
                f"body: {resp.text[:200]!r}; is this an OpenAI-compatible server?"
            ) from e

    def _raise_for_status(self, resp: httpx.Response, url: str) -> None:
        """Nothing for a 2xx; ModelRequestError for a rejection (4xx but 408/429);
        `_Transient` (with the server's Retry-After) for anything worth another try."""
        if resp.status_code < 300:
            return
        message = _server_message(resp)
        if resp.status_code not in RETRY_STATUSES and resp.status_code < 500:
            raise ModelRequestError(_rejection(url, resp.status_code, message, self.model_name))
        retry_after = parse_retry_after(resp.headers.get("retry-after"))
        raise _Transient(f"HTTP {resp.status_code}: {message}", retry_after)

    async def _retrying(self, url: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """The client's one retry loop, for plain and streamed requests alike.

        Runs `attempt` until it returns. A transient failure (`_Transient`, a timeout, a
        connection error) is tried again after a backoff or the server's Retry-After,
        unless that wait is longer than `retry_after_max_s` or than what is left of the
        caller's deadline (`call_scope`): then, like when retries run out, it raises
        ModelUnavailable at once (carrying the server's Retry-After). Any ModelError
        from `attempt` is raised as it is."""
        last, retry_after = "no attempt made", None
        for n in range(self.retries + 1):
            self.stats.attempts += 1
            if n:
                self.stats.retries += 1
            try:
                return await attempt()
            except _Transient as e:
                last, retry_after = e.reason, e.retry_after
            except httpx.TimeoutException as e:
                last = f"timed out: no data for {self.timeout_s:g} s ({type(e).__name__})"
                retry_after = None
            except httpx.TransportError as e:
                last = f"connection failed ({type(e).__name__}: {e or 'no detail'})"
                retry_after = None
            except ModelError:
                self.stats.failures += 1
                raise
            if n == self.retries:
                break
            delay = self._retry_wait(url, n, retry_after, last)
            log.warning(
                "model call to %s failed (%s); retry %d/%d in %.2fs",
                url, last, n + 1, self.retries, delay,
            )  # fmt: skip
            await asyncio.sleep(delay)
        raise self._unavailable(
            f"model server {url} unavailable after {self.retries + 1} attempt(s): {last}. "
            f"Check that the server is running and reachable at {self.base_url} "
            f"(GET {self.base_url}/models) and serves model {self.model_name!r}.",
            retry_after,
        )

    def _retry_wait(self, url: str, attempt: int, retry_after: float | None, last: str) -> float:
        """Seconds to wait before the next attempt; raises ModelUnavailable instead when
        the server asks for more than `retry_after_max_s` or the wait would outlast the
        caller's deadline (holding the caller's slot for nothing)."""
        if retry_after is not None and retry_after > self.retry_after_max_s:
            log.warning(
                "model call to %s failed (%s) with Retry-After %gs: not retried",
                url,
                last,
                retry_after,
            )
            raise self._unavailable(
                f"model server {url} is unavailable ({last}) and asks to retry after "
                f"{retry_after:g} s, more than the {self.retry_after_max_s:g} s a request "
                "waits for it (DISTILLERY_MODEL_RETRY_AFTER_MAX_S); not retried",
                retry_after,
            )
        delay = retry_after if retry_after is not None else self._backoff(attempt)
        scope = current_call_scope()
        remaining = scope.remaining_s() if scope is not None else None
        if remaining is not None and delay >= remaining:
            log.warning(
                "model call to %s failed (%s); a retry in %.2fs would pass the "
                "request's deadline: not retried",
                url,
                last,
                delay,
            )
            raise self._unavailable(
                f"model server {url} is unavailable ({last}); waiting {delay:.3g} s to retry "
                f"would pass the request's deadline ({max(0.0, remaining):.3g} s left); "
                "not retried",
                retry_after,
            )
        return delay

    def _unavailable(self, message: str, retry_after: float | None = None) -> ModelUnavailable:
        """A counted ModelUnavailable; the server's Retry-After is also noted in the scope."""
        self.stats.failures += 1
        scope = current_call_scope()
        if scope is not None:
            scope.note_retry_after(retry_after)
        return ModelUnavailable(message, retry_after_s=retry_after)

    async def _open_stream(
        self, body: dict[str, Any], stream: CompletionStream, url: str
    ) -> _OpenStream:
        """One streamed attempt, read up to its first generated token (or its end): a
        failure before that is retried by `_retrying`, nothing was generated."""
        request = self._http.build_request("POST", "chat/completions", json=body)
        resp = await self._http.send(request, stream=True)
        events: AsyncGenerator[ChoiceDelta, None] | None = None
        try:
            if resp.status_code >= 300:
                await resp.aread()
                self._raise_for_status(resp, url)
            if _is_json(resp):  # the server ignored stream=true: its one body is the reply
                await resp.aread()
                return self._unstreamed(resp, stream, url)
            events = _read_events(resp, stream, url)
            opened = _OpenStream(resp, events)
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

    def _unstreamed(self, resp: httpx.Response, stream: CompletionStream, url: str) -> _OpenStream:
        """A JSON completion answered to a streamed request, as one delta per choice."""
        try:
            data = resp.json()
        except ValueError as e:
            raise ModelError(f"model server {url} answered a streamed request with a JSON "
                             "body that does not parse") from e
        completion = self._parse_completion(data, 0.0)
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
        ]
        opened = _OpenStream(resp, _no_events())
        opened.primed, opened.ended = primed, True
        return opened

    async def _stream_events(
        self, body: dict[str, Any], stream: CompletionStream
    ) -> AsyncIterator[ChoiceDelta]:
        url = f"{self.base_url}/chat/completions"
        t0 = time.perf_counter()
        opened = await self._retrying(url, lambda: self._open_stream(body, stream, url))
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
            raise self._unavailable(
                f"model server {url} went silent for {self.timeout_s:g} s after "
                f"{generated} generated tokens; not re-sent (the tokens would be paid "
                "twice). The server is overloaded or stuck: check its load, or raise "
                "the model timeout (DISTILLERY_MODEL_TIMEOUT_S)."
            ) from e
        except httpx.TransportError as e:
            raise self._unavailable(
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
        self._record_stream(stream, time.perf_counter() - t0)

    def _record_stream(self, stream: CompletionStream, latency: float) -> None:
        self.stats.requests += 1
        self.stats.usage.add(stream.usage)
        self.stats.latency_s += latency
        self.stats.last_latency_s = latency

    def _backoff(self, attempt: int) -> float:
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


def _is_json(resp: httpx.Response) -> bool:
    kind = resp.headers.get("content-type", "").split(";")[0].strip().lower()
    return kind == "application/json" or kind.endswith("+json")


async def _no_events() -> AsyncGenerator[ChoiceDelta, None]:
    return
    yield  # pragma: no cover - makes this an (empty) async generator


async def _read_events(
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
