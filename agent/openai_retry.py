"""The OpenAI client's retry policy: which answers are worth another try, how long to wait,
and the one loop that retries plain and streamed requests alike.

Transient failures (408, 429, 5xx, connection errors, timeouts) are retried after
exponential backoff (jittered) or the server's Retry-After. A wait is never taken when it is
longer than `retry_after_max_s` (the server asks for more: it is down for a while) or than
what is left of the caller's deadline (`agent.model_client.call_scope`): the call fails at
once instead. When retries run out or a wait is refused: ModelUnavailable (`retry_after_s`:
the server's Retry-After, also noted in the call scope). A rejection (4xx other than
408/429) is ModelRequestError with the server's own message, never retried.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import httpx

from agent.model_client import (
    ModelError,
    ModelRequestError,
    ModelUnavailable,
    Usage,
    current_call_scope,
)

__all__ = ["RETRY_STATUSES", "ClientStats", "RetryPolicy", "Transient", "parse_retry_after",
           "raise_for_status"]  # fmt: skip

log = logging.getLogger("agent.openai_client")
T = TypeVar("T")

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""Worth another try; any other 5xx too."""


class Transient(Exception):
    """One attempt failed in a way worth another try (a 429/5xx answer)."""

    def __init__(self, reason: str, retry_after: float | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


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


def raise_for_status(resp: httpx.Response, url: str, model: str) -> None:
    """Nothing for a 2xx; ModelRequestError for a rejection (4xx but 408/429); `Transient`
    (with the server's Retry-After) for anything worth another try."""
    if resp.status_code < 300:
        return
    message = _server_message(resp)
    if resp.status_code not in RETRY_STATUSES and resp.status_code < 500:
        raise ModelRequestError(_rejection(url, resp.status_code, message, model))
    retry_after = parse_retry_after(resp.headers.get("retry-after"))
    raise Transient(f"HTTP {resp.status_code}: {message}", retry_after)


@dataclass
class RetryPolicy:
    """How one client retries; counts into the client's `stats`."""

    base_url: str
    model_name: str
    stats: ClientStats
    retries: int = 3
    timeout_s: float = 120.0
    backoff_s: float = 0.5
    backoff_max_s: float = 20.0
    retry_after_max_s: float = 5.0

    async def run(self, url: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """The client's one retry loop, for plain and streamed requests alike.

        Runs `attempt` until it returns. A transient failure (`Transient`, a timeout, a
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
            except Transient as e:
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
            delay = self._wait(url, n, retry_after, last)
            log.warning(
                "model call to %s failed (%s); retry %d/%d in %.2fs",
                url, last, n + 1, self.retries, delay,
            )  # fmt: skip
            await asyncio.sleep(delay)
        raise self.unavailable(
            f"model server {url} unavailable after {self.retries + 1} attempt(s): {last}. "
            f"Check that the server is running and reachable at {self.base_url} "
            f"(GET {self.base_url}/models) and serves model {self.model_name!r}.",
            retry_after,
        )

    def _wait(self, url: str, attempt: int, retry_after: float | None, last: str) -> float:
        """Seconds to wait before the next attempt; raises ModelUnavailable instead when
        the server asks for more than `retry_after_max_s` or the wait would outlast the
        caller's deadline (holding the caller's slot for nothing)."""
        if retry_after is not None and retry_after > self.retry_after_max_s:
            log.warning("model call to %s failed (%s) with Retry-After %gs: not retried",
                        url, last, retry_after)  # fmt: skip
            raise self.unavailable(
                f"model server {url} is unavailable ({last}) and asks to retry after "
                f"{retry_after:g} s, more than the {self.retry_after_max_s:g} s a request "
                "waits for it (DISTILLERY_MODEL_RETRY_AFTER_MAX_S); not retried",
                retry_after,
            )
        delay = retry_after if retry_after is not None else self.backoff(attempt)
        scope = current_call_scope()
        remaining = scope.remaining_s() if scope is not None else None
        if remaining is not None and delay >= remaining:
            log.warning("model call to %s failed (%s); a retry in %.2fs would pass the "
                        "request's deadline: not retried", url, last, delay)  # fmt: skip
            raise self.unavailable(
                f"model server {url} is unavailable ({last}); waiting {delay:.3g} s to retry "
                f"would pass the request's deadline ({max(0.0, remaining):.3g} s left); "
                "not retried",
                retry_after,
            )
        return delay

    def backoff(self, attempt: int) -> float:
        base = min(self.backoff_s * (2**attempt), self.backoff_max_s)
        return base * (0.5 + random.random() / 2)  # jitter: spread retries of many clients

    def unavailable(self, message: str, retry_after: float | None = None) -> ModelUnavailable:
        """A counted ModelUnavailable; the server's Retry-After is also noted in the scope."""
        self.stats.failures += 1
        scope = current_call_scope()
        if scope is not None:
            scope.note_retry_after(retry_after)
        return ModelUnavailable(message, retry_after_s=retry_after)


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
