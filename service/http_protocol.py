"""Connection-level protection for uvicorn: a header read timeout and a connection bound.

uvicorn times out idle keep-alive connections (`timeout_keep_alive`) but nothing else: a
client that connects and sends nothing, or sends a request line and headers slowly
(slowloris), keeps its connection and descriptor for as long as it likes. Contract of
`GuardedHttpToolsProtocol` (uvicorn's httptools protocol plus):

- header timeout: from the moment a connection opens, and from the first byte of each
  following request on a kept-alive connection, the request line and all headers must
  arrive within `header_timeout_s`, else the server answers `408` (the JSON error shape,
  `Connection: close`) and closes the connection. It is a total deadline, not an idle
  timer, so trickling bytes does not extend it.
- connection bound: a connection accepted while `max_connections` are open is answered
  `503` (`Retry-After`, `Connection: close`) and closed at once, so descriptors stay
  bounded whatever clients do.
- The body read timeout is enforced in the ASGI app (`service.limits.BodyLimitMiddleware`),
  which reads every body up front; together they bound how long any request can hold a
  connection without the app having answered.

`GatewayUvicornConfig` is a `uvicorn.Config` that carries the two values (it pickles into
`--workers` processes) and selects this protocol; `serve(config)` runs it like
`uvicorn.run`, with one or several worker processes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["GatewayUvicornConfig", "GuardedHttpToolsProtocol", "serve"]

log = logging.getLogger("distillery.http")

DEFAULT_HEADER_TIMEOUT_S = 10.0


def _raw_response(status: int, reason: str, code: str, message: str,
                  extra_headers: list[tuple[str, str]] | None = None) -> bytes:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error"
                                 if status < 500 else "service_unavailable",
                                 "code": code, "param": None, "request_id": None}}).encode()
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json",
            f"content-length: {len(body)}", "connection: close"]
    head += [f"{k}: {v}" for k, v in extra_headers or []]
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """See the module docstring."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.header_timeout_s: float | None = getattr(
            config, "header_timeout_s", DEFAULT_HEADER_TIMEOUT_S
        )
        self.max_connections: int | None = getattr(config, "max_connections", None)
        self._header_timer: asyncio.TimerHandle | None = None
        self._awaiting_headers = True
        self._refused = False

    # -- connection bound ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        limit = self.max_connections
        if limit is not None and len(self.connections) >= limit:
            self._refused = True
            self.transport = transport
            log.warning("refusing a connection: %d open (max_connections)", len(self.connections))
            transport.write(_raw_response(
                503, "Service Unavailable", "too_many_connections",
                f"the server holds its maximum of {limit} connections; retry shortly",
                [("retry-after", "1")],
            ))
            transport.close()
            return
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        if self._refused:
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._awaiting_headers and self._header_timer is None:
            self._arm_header_timer()  # the first byte of the next request on this connection
        super().data_received(data)

    # -- header timeout -----------------------------------------------------------------
    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next request's headers are awaited; its timer starts with its first byte
        # (until then uvicorn's keep-alive timeout covers the idle connection).
        self._awaiting_headers = True

    def _arm_header_timer(self) -> None:
        if self.header_timeout_s is None or self._header_timer is not None:
            return
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self._awaiting_headers or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a pipelined request is still being answered; its end re-arms nothing
        self.transport.write(_raw_response(
            408, "Request Timeout", "header_timeout",
            f"the request line and headers did not arrive within {self.header_timeout_s:g} s",
        ))
        self.transport.close()


class GatewayUvicornConfig(uvicorn.Config):
    """`uvicorn.Config` plus `header_timeout_s` and `max_connections` (see the module)."""

    def __init__(
        self,
        app: Any,
        *,
        header_timeout_s: float | None = DEFAULT_HEADER_TIMEOUT_S,
        max_connections: int | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("http", GuardedHttpToolsProtocol)
        super().__init__(app, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.max_connections = max_connections


def serve(config: uvicorn.Config) -> bool:
    """Run the server as `uvicorn.run` does (one process, or `config.workers` workers).
    Returns False when a single-process server failed to start."""
    from uvicorn.supervisors import Multiprocess

    server = uvicorn.Server(config=config)
    try:
        if config.workers > 1:
            sock = config.bind_socket()
            Multiprocess(config, sockets=[sock]).run()
            return True
        config.load_app()
        server.run()
    except KeyboardInterrupt:
        pass
    return server.started or config.workers > 1
