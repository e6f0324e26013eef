"""Graceful shutdown: stop admitting, let runs finish within a grace, end the rest cleanly.

On the first SIGTERM (or SIGINT) the app, not uvicorn, decides when the server stops:
1. `Gateway.begin_drain()`: new requests get `503` (`code: shutting_down`, `Retry-After`,
   `Connection: close`; `/healthz` and `/metrics` still answer, `/readyz` answers 503
   "draining"), queued requests get the same 503 at once;
2. runs in flight go on for up to `shutdown_grace_s` (streams keep streaming);
3. past the grace, `Gateway.abort_all()` ends what is left: a JSON request gets the 503
   error body, a stream gets `event: error` with the same error object; sandboxes are
   closed as on any cancellation;
4. after the responses are flushed (at most `FLUSH_S`), uvicorn's own exit handler runs
   (sockets close, lifespan shutdown closes the components).
A second signal means "stop at once": the grace ends now (step 3 at once), and after at
most `HARD_FLUSH_S` every request still without a response (one whose body is still
arriving, say) is cancelled and answered the same 503 by `DrainMiddleware`; then, after
at most another `HARD_FLUSH_S`, uvicorn's exit handler runs. What each client was sent is
in its access log line (`service.middleware`: the status, `stream_error` for a stream
that ended with `event: error`, `complete: false` for a cut body), and `drain_done` counts
the groups aborted and the requests answered by the cut. A third signal goes straight to
uvicorn's handler. The handlers are installed by the app's lifespan in the main thread
(uvicorn installs its own first, and restores them on exit), so they work with one
process and with `--workers`.
Kubernetes: terminationGracePeriodSeconds must exceed preStop + shutdown_grace_s + FLUSH_S.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import api_error_payload
from service.gateway import Gateway
from service.textsafe import dumps

__all__ = ["DrainMiddleware", "Drainer", "install_signal_drain"]

log = logging.getLogger("distillery.shutdown")

FLUSH_S = 5.0
"""After the grace: time for the error responses to reach clients before the server exits."""
HARD_FLUSH_S = 1.0
"""After a second signal: time for each of the two cuts' responses to be written."""
ALWAYS_SERVED = frozenset({"/healthz", "/readyz", "/metrics"})


class _Request:
    """One request inside `DrainMiddleware`: its task and whether its response started."""

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self.task = task
        self.started = False
        self.cut = False  # cancelled by the hard stop: answer 503 instead of propagating


class Drainer:
    """Tracks the requests in the app and runs the drain sequence (module docstring)."""

    def __init__(self, gateway: Gateway, grace_s: float) -> None:
        self.gateway = gateway
        self.grace_s = grace_s
        self.requests: set[_Request] = set()
        self.started_at: float | None = None
        self.done = asyncio.Event()
        self.now = asyncio.Event()
        """Set by `stop_now()` (the second signal): no more waiting for runs."""

    @property
    def in_flight(self) -> int:
        """Requests inside the app now (probes and metrics included)."""
        return len(self.requests)

    def stop_now(self) -> None:
        """End the grace at once (see the module docstring); the drain must be running
        or about to run for this to have an effect."""
        self.now.set()

    async def _wait(self, until: float, busy: Callable[[], bool], hard: bool = False) -> None:
        """Poll until `busy()` is false, `until` passes or (unless `hard`) `stop_now()`."""
        while busy() and time.monotonic() < until and (hard or not self.now.is_set()):
            await asyncio.sleep(0.02)

    async def drain(self) -> None:
        gw = self.gateway
        if self.started_at is not None:
            await self.done.wait()
            return
        self.started_at = time.monotonic()
        queued = gw.begin_drain()
        log.info("draining", extra={"fields": {
            "event": "drain_started", "in_flight_runs": len(gw.groups), "queued_rejected": queued,
            "requests": self.in_flight, "grace_s": self.grace_s}})
        await self._wait(self.started_at + self.grace_s, lambda: bool(gw.groups or self.in_flight))
        aborted = gw.abort_all() if gw.groups else 0
        if aborted:
            why = "second signal" if self.now.is_set() else f"grace of {self.grace_s:g}s over"
            log.warning("%s: ending %d run group(s) with 503", why, aborted,
                        extra={"fields": {"event": "drain_aborted", "groups": aborted,
                                          "second_signal": self.now.is_set()}})
        busy = lambda: bool(self.in_flight)  # noqa: E731
        if not self.now.is_set():
            await self._wait(time.monotonic() + FLUSH_S, busy)
        cut = 0
        if self.now.is_set():
            await self._wait(time.monotonic() + HARD_FLUSH_S, busy, hard=True)
            cut = self._cut_unanswered()
            await self._wait(time.monotonic() + HARD_FLUSH_S, busy, hard=True)
        log.info("drained", extra={"fields": {
            "event": "drain_done", "aborted_groups": aborted, "cut_requests": cut,
            "requests_left": self.in_flight, "second_signal": self.now.is_set(),
            "drain_s": round(time.monotonic() - self.started_at, 3)}})
        self.done.set()

    def _cut_unanswered(self) -> int:
        """Cancel every request whose response has not started (DrainMiddleware answers it
        503); returns how many."""
        cut = 0
        for req in list(self.requests):
            if not req.started and not req.cut and req.task is not None:
                req.cut = True
                req.task.cancel()
                cut += 1
        return cut


class DrainMiddleware:
    """Tracks requests for the `Drainer`; while draining, answers 503 (except ops routes);
    a request cut by the hard stop is answered the same 503."""

    def __init__(self, app: ASGIApp, drainer: Drainer) -> None:
        self.app = app
        self.drainer = drainer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gw = self.drainer.gateway
        if gw.draining and scope.get("path") not in ALWAYS_SERVED:
            await self._send_shutdown_error(send)
            return
        req = _Request(asyncio.current_task())

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                req.started = True
            await send(message)

        self.drainer.requests.add(req)
        try:
            await self.app(scope, receive, send_wrapper)
        except asyncio.CancelledError:
            if not req.cut or req.started or req.task is None:
                raise
            req.task.uncancel()
            await self._send_shutdown_error(send_wrapper)
        finally:
            self.drainer.requests.discard(req)

    async def _send_shutdown_error(self, send: Send) -> None:
        err = self.drainer.gateway.shutdown_error()
        body = dumps(api_error_payload(err)).encode("utf-8")
        headers = [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
        await send({"type": "http.response.start", "status": err.status, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()), *headers]})
        await send({"type": "http.response.body", "body": body})


SignalHandler = Callable[[int, FrameType | None], Any]


def _chain(previous: Any, sig: int, frame: FrameType | None) -> None:
    """Hand the signal to the handler that was there before ours (uvicorn's exit)."""
    if callable(previous):
        previous(sig, frame)
    elif previous == signal.SIG_IGN:
        return
    else:  # SIG_DFL (or unknown): restore it and deliver the signal again
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)


def install_signal_drain(drainer: Drainer) -> Callable[[], None]:
    """Put the drain in front of the current SIGTERM/SIGINT handlers; returns an undo.
    Does nothing outside the main thread (servers run in a thread install nothing)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    sigs = [signal.SIGTERM, signal.SIGINT]
    previous: dict[int, Any] = {int(sig): signal.getsignal(sig) for sig in sigs}
    task: list[asyncio.Task[None]] = []

    async def drain_then_exit(sig: int) -> None:
        try:
            await drainer.drain()
        finally:
            _chain(previous[sig], sig, None)

    def start(sig: int) -> None:
        if not task:
            task.append(loop.create_task(drain_then_exit(sig)))

    seen: list[int] = []

    def handler(sig: int, frame: FrameType | None) -> None:
        seen.append(sig)
        if len(seen) > 2 or drainer.done.is_set():  # a third, or the drain is over
            log.warning("signal %d: exiting without waiting", sig)
            _chain(previous[sig], sig, frame)
        elif len(seen) == 1:  # the first: drain
            loop.call_soon_threadsafe(start, sig)
        else:  # the second: stop at once
            log.warning("second signal %d: ending what is in flight now", sig,
                        extra={"fields": {"event": "drain_hurried", "signal": sig}})
            loop.call_soon_threadsafe(drainer.stop_now)

    for sig in sigs:
        signal.signal(sig, handler)

    def undo() -> None:
        for sig in sigs:
            if signal.getsignal(sig) is handler:
                signal.signal(sig, previous[sig])

    return undo
