"""Admission control (a concurrency limit with a bounded FIFO queue) and the body size limit.

At most `max_concurrency` runs hold a slot; up to `max_queue` more wait in arrival order;
past that a request is refused at once with 429 and a Retry-After estimated from recent
run latencies. A waiter whose deadline passes gets 504. One request = one slot, whatever
its `n`. `reject_waiters(error)` fails every queued request with `error` (shutdown).

The body limit also bounds time: the whole body must arrive within `body_timeout_s` of
the headers, else 408 and the connection is closed (a half-sent body cannot hold a
connection; the header read timeout is `service.http_protocol`'s).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import APIError, error_bytes
from service.metrics import Metrics


class Slot:
    """A held run slot; `release()` is idempotent."""

    def __init__(self, owner: AdmissionController) -> None:
        self._owner: AdmissionController | None = owner

    def release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._release()


class AdmissionController:
    def __init__(self, max_concurrency: int, max_queue: int, metrics: Metrics) -> None:
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.metrics = metrics
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._avg_run_s = 1.0
        """Exponential moving average of run durations, for Retry-After."""

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def retry_after_s(self) -> int:
        backlog = (self.queued + 1) / max(1, self.max_concurrency)
        return max(1, min(60, math.ceil(self._avg_run_s * backlog)))

    def record_run(self, seconds: float) -> None:
        self._avg_run_s = 0.8 * self._avg_run_s + 0.2 * max(0.0, seconds)

    async def acquire(self, timeout_s: float | None = None) -> Slot:
        if self.active < self.max_concurrency and not self._waiters:
            self.active += 1
            self._update_gauges()
            return Slot(self)
        if len(self._waiters) >= self.max_queue:
            self.metrics.rejected.labels("queue_full").inc()
            retry = self.retry_after_s()
            raise APIError(
                429,
                f"server busy: {self.active} runs in flight and {self.queued} queued "
                f"(limits {self.max_concurrency} + {self.max_queue}); retry in {retry}s",
                headers={"Retry-After": str(retry)},
            )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._update_gauges()
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout_s)
        except (asyncio.CancelledError, TimeoutError) as e:
            if fut.done() and not fut.cancelled():
                self._release()  # the slot was handed to us as we gave up: pass it on
            else:
                fut.cancel()
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            self._update_gauges()
            if isinstance(e, TimeoutError):
                self.metrics.rejected.labels("queue_timeout").inc()
                raise APIError(
                    504, "the request deadline passed while waiting in the queue; retry later"
                ) from None
            raise
        return Slot(self)

    def reject_waiters(self, error: APIError) -> int:
        """Fail every queued request with `error`; returns how many there were."""
        rejected = 0
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(error)
                rejected += 1
        self._update_gauges()
        return rejected

    def _release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes straight to the oldest waiter
                self._update_gauges()
                return
        self.active = max(0, self.active - 1)
        self._update_gauges()

    def _update_gauges(self) -> None:
        self.metrics.in_flight.set(self.active)
        self.metrics.queue_depth.set(len(self._waiters))


class BodyLimitMiddleware:
    """413 for request bodies over `max_bytes` (declared or streamed), before any parsing.

    The body is read up front (it is small by construction) and replayed to the app; after
    that, `receive` goes to the server again, so disconnect detection keeps working.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, body_timeout_s: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._reject(send, declared)
            return
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    body = message.get("body", b"")
                    size += len(body)
                    if size > self.max_bytes:
                        await self._reject(send, size)
                        return
                    chunks.append(body)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await self._send_error(send, 408, error_bytes(
                408,
                f"the request body did not arrive within {self.body_timeout_s:g} s "
                f"({size} bytes received); send the whole body at once",
                code="body_timeout",
            ))
            return
        replayed = False
        full = b"".join(chunks)

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": full, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Send, size: int) -> None:
        body = error_bytes(
            413,
            f"request body of {size} bytes exceeds the limit of {self.max_bytes} bytes "
            "(DISTILLERY_MAX_BODY_BYTES)",
        )
        await self._send_error(send, 413, body)

    async def _send_error(self, send: Send, status: int, body: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
