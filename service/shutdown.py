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
A second signal skips the wait (uvicorn's handler runs at once). The handlers are installed
by the app's lifespan in the main thread (uvicorn installs its own first, and restores
them on exit), so they work with one process and with `--workers`.
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

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import api_error_payload
from service.gateway import Gateway
from service.textsafe import dumps

__all__ = ["DrainMiddleware", "Drainer", "install_signal_drain"]

log = logging.getLogger("distillery.shutdown")

FLUSH_S = 5.0
"""After the grace: time for the error responses to reach clients before the server exits."""
ALWAYS_SERVED = frozenset({"/healthz", "/readyz", "/metrics"})


class Drainer:
    """Counts the requests in the app and runs the drain sequence (module docstring)."""

    def __init__(self, gateway: Gateway, grace_s: float) -> None:
        self.gateway = gateway
        self.grace_s = grace_s
        self.in_flight = 0
        self.started_at: float | None = None
        self.done = asyncio.Event()

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
        deadline = self.started_at + self.grace_s
        while (gw.groups or self.in_flight) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        aborted = gw.abort_all() if gw.groups else 0
        if aborted:
            log.warning("grace of %gs over: ending %d run group(s) with 503", self.grace_s,
                        aborted, extra={"fields": {"event": "drain_aborted", "groups": aborted}})
        flush_deadline = time.monotonic() + FLUSH_S
        while self.in_flight and time.monotonic() < flush_deadline:
            await asyncio.sleep(0.05)
        log.info("drained", extra={"fields": {
            "event": "drain_done", "aborted_groups": aborted, "requests_left": self.in_flight,
            "drain_s": round(time.monotonic() - self.started_at, 3)}})
        self.done.set()


class DrainMiddleware:
    """Counts requests for the `Drainer`; while draining, answers 503 (except ops routes)."""

    def __init__(self, app: ASGIApp, drainer: Drainer) -> None:
        self.app = app
        self.drainer = drainer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gw = self.drainer.gateway
        if gw.draining and scope.get("path") not in ALWAYS_SERVED:
            err = gw.shutdown_error()
            body = dumps(api_error_payload(err)).encode("utf-8")
            headers = [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
            await send({"type": "http.response.start", "status": err.status, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()), *headers]})
            await send({"type": "http.response.body", "body": body})
            return
        self.drainer.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drainer.in_flight -= 1


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

    def handler(sig: int, frame: FrameType | None) -> None:
        if task or drainer.started_at is not None:  # second signal: exit now
            log.warning("second signal %d: exiting without waiting for runs", sig)
            _chain(previous[sig], sig, frame)
            return
        loop.call_soon_threadsafe(start, sig)

    for sig in sigs:
        signal.signal(sig, handler)

    def undo() -> None:
        for sig in sigs:
            if signal.getsignal(sig) is handler:
                signal.signal(sig, previous[sig])

    return undo
