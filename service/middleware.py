"""The outermost middleware: request id, access log line, request metrics, last-resort 500.

Pure ASGI (no BaseHTTPMiddleware) so that streaming and disconnect detection pass through.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_bytes
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


class RequestContextMiddleware:
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
        status = 0
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                # time in the server until the response starts (all of it for JSON bodies)
                dur_ms = (time.perf_counter() - started) * 1000
                headers.append((b"server-timing", f"app;dur={dur_ms:.3f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            error_log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if not response_started:
                status = 500
                body = error_bytes(500, "internal error; the server log has the details "
                                   f"(request id {request_id})", code="internal_error")
                await send_wrapper(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
        finally:
            elapsed = time.perf_counter() - started
            route = route_label(scope)
            status_label = str(status or 499)
            self.metrics.requests.labels(scope["method"], route, status_label).inc()
            self.metrics.request_latency.labels(scope["method"], route).observe(elapsed)
            if route not in ("/healthz", "/readyz", "/metrics") or status >= 400:
                client = scope.get("client")
                log.info(
                    "%s %s %s",
                    scope["method"],
                    scope["path"],
                    status_label,
                    extra={
                        "fields": {
                            "event": "http_request",
                            "method": scope["method"],
                            "path": scope["path"],
                            "route": route,
                            "status": status or 499,
                            "duration_ms": round(elapsed * 1000, 2),
                            "client": f"{client[0]}:{client[1]}" if client else None,
                        }
                    },
                )
            reset_request_id(token)
