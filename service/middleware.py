"""The outermost middleware: request id, access log line, request metrics, last-resort 500,
and the probe listener's route restriction.

Pure ASGI (no BaseHTTPMiddleware) so that streaming and disconnect detection pass through.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_bytes
from service.http_protocol import LISTENER_KEY
from service.metrics import Metrics
from service.request_context import choose_request_id, reset_request_id, set_request_id

log = logging.getLogger("distillery.access")
error_log = logging.getLogger("distillery.error")

# Routes are labelled by their template; anything unmatched shares one label.
UNMATCHED_ROUTE = "unmatched"


def route_label(scope: Scope) -> str:
    """The route template of a request, also when it was answered before routing (413,
    408, 499 while the body was read, shutdown 503): matched against the app's routes."""
    route_obj = scope.get("route")
    path = getattr(route_obj, "path", None)
    if path:
        return str(path)
    app = scope.get("app")
    found = _match_route(getattr(getattr(app, "router", None), "routes", ()), scope, 0)
    if found is not None:
        return found
    return UNMATCHED_ROUTE


def _match_route(routes: Any, scope: Scope, depth: int) -> str | None:
    for candidate in routes or ():
        nested = getattr(candidate, "original_router", None)  # FastAPI's included routers
        if nested is not None and depth < 4:
            found = _match_route(getattr(nested, "routes", ()), scope, depth + 1)
            if found is not None:
                return found
            continue
        path = getattr(candidate, "path", None)
        if not path:
            continue
        try:
            match, _ = candidate.matches(scope)
        except Exception:  # a route that cannot judge this scope is not it
            continue
        if match != Match.NONE:
            return str(path)
    return None


PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
"""What the probe listener serves (`service.http_protocol`); anything else there is a 404."""
_SSE_ERROR = re.compile(rb'(?:^|\n)event: error\ndata: [^\n]*?"code": ?"([^"]{1,64})"')


class _Outcome:
    """What the client was actually sent, for the access log line."""

    def __init__(self) -> None:
        self.status = 0
        self.started = False
        self.complete = False  # the last body message went out
        self.stream_error: str | None = None  # the code of an `event: error` in the body

    def saw(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.started = True
        elif message["type"] == "http.response.body":
            body = message.get("body", b"")
            if body and b"event: error" in body:
                found = _SSE_ERROR.search(body)
                self.stream_error = found.group(1).decode("ascii", "replace") if found else "?"
            if not message.get("more_body", False):
                self.complete = True


class RequestContextMiddleware:
    """Request id, the access log line (the status, whether the response was sent whole
    and any `event: error` a stream ended with: what the client got, not what was meant),
    request metrics, the last-resort 500, and 404 for non-probe paths on the probe
    listener."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client_id = None
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                client_id = value.decode("latin-1")
                break
        request_id = choose_request_id(client_id)
        scope.setdefault("state", {})["request_id"] = request_id
        token = set_request_id(request_id)
        started = time.perf_counter()
        outcome = _Outcome()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                # time in the server until the response starts (all of it for JSON bodies)
                dur_ms = (time.perf_counter() - started) * 1000
                headers.append((b"server-timing", f"app;dur={dur_ms:.3f}".encode()))
                message = {**message, "headers": headers}
            await send(message)
            outcome.saw(message)

        try:
            info = scope["state"].get(LISTENER_KEY)
            if getattr(info, "probe", False) and scope["path"] not in PROBE_PATHS:
                await _send_error(send_wrapper, 404, "the probe port serves only "
                                  f"{', '.join(sorted(PROBE_PATHS))}", "not_found")
            else:
                await self.app(scope, receive, send_wrapper)
        except Exception:
            error_log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if not outcome.started:
                await _send_error(send_wrapper, 500, "internal error; the server log has the "
                                  f"details (request id {request_id})", "internal_error")
        finally:
            self._record(scope, outcome, time.perf_counter() - started)
            reset_request_id(token)

    def _record(self, scope: Scope, outcome: _Outcome, elapsed: float) -> None:
        route = route_label(scope)
        status = outcome.status
        status_label = str(status or 499)
        self.metrics.requests.labels(scope["method"], route, status_label).inc()
        self.metrics.request_latency.labels(scope["method"], route).observe(elapsed)
        if route in PROBE_PATHS and 0 < status < 400:
            return
        client = scope.get("client")
        fields: dict[str, Any] = {
            "event": "http_request",
            "method": scope["method"],
            "path": scope["path"],
            "route": route,
            "status": status or 499,
            "duration_ms": round(elapsed * 1000, 2),
            "client": f"{client[0]}:{client[1]}" if client else None,
        }
        if outcome.started and not outcome.complete:
            fields["complete"] = False  # the body was cut (client gone, server stopping)
        if outcome.stream_error is not None:
            fields["stream_error"] = outcome.stream_error
        log.info("%s %s %s", scope["method"], scope["path"], status_label,
                 extra={"fields": fields})


async def _send_error(send: Send, status: int, message: str, code: str) -> None:
    body = error_bytes(status, message, code=code)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
