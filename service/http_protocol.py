"""Connection-level protection for uvicorn: header limits, a connection bound, a probe listener.

uvicorn times out idle keep-alive connections (`timeout_keep_alive`) but nothing else: a
client that connects and sends nothing, or sends a request line and headers slowly
(slowloris) or without end, keeps its connection, its descriptor and whatever it sent for
as long as it likes. Contract of `GuardedHttpToolsProtocol` (uvicorn's httptools protocol
plus):

- header timeout: from the moment a connection opens, and from the first byte of each
  following request on a kept-alive connection, the request line and all headers must
  arrive within `header_timeout_s`, else the server answers `408` and closes the
  connection. It is a total deadline, not an idle timer, so trickling bytes does not
  extend it.
- header size: at most `max_header_bytes` of a request's line and headers are handed to
  the parser; one byte more and the server answers `431` and stops buffering: a
  connection holds at most that many header bytes (plus one read of a pipelined request),
  whether or not its headers ever end. It is checked before anything else, authentication
  included. After the headers, what is not body (chunk framing, trailer fields) may take
  `max_header_bytes` plus 64 bytes per chunk, else the same `431`.
- pipelining: a connection with more than `MAX_PIPELINED` requests parsed and waiting
  for their turn is closed (each costs a request's state, about 2 KB, for 40 bytes sent).
- malformed requests: whatever the parser refuses (bad or duplicate `Content-Length`,
  chunked plus `Content-Length`, obs-fold, NUL or bare LF, an HTTP/2 preface) gets `400`.
- connection bound: a connection accepted while `max_connections` public connections are
  open is answered `503` (`Retry-After`) and closed at once, so descriptors stay bounded
  whatever clients do.
- probe listener: connections to `probe_port` (see `serve`) are counted apart, capped at
  `PROBE_MAX_CONNECTIONS`, and never count against `max_connections`, so the probes
  answer while the public listener is full. Each request's `scope["state"]` carries
  `LISTENER_KEY`: a `ListenerInfo` saying which listener it came on and how full the
  public one is (the app serves only the probe routes on the probe listener and reports
  a full public listener in `/readyz`).

Every answer the protocol writes itself (400, 408, 431, 503) is the app's JSON error shape
with a fresh `request_id` (also in `x-request-id`), is logged with that id, and closes the
connection: the server stops reading the request, half-closes, and discards what the
client still sends for up to `LINGER_S` so that a client still writing can read the answer.
The body read timeout is enforced in the ASGI app (`service.limits.BodyLimitMiddleware`).

`GatewayUvicornConfig` is a `uvicorn.Config` that carries these values (it pickles into
`--workers` processes) and selects this protocol; `serve(config)` runs it like
`uvicorn.run`, with one or several worker processes, on the public port and the probe port.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import uuid
from dataclasses import dataclass
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = [
    "LISTENER_KEY",
    "GatewayUvicornConfig",
    "GuardedHttpToolsProtocol",
    "ListenerInfo",
    "ListenerStats",
    "serve",
]

log = logging.getLogger("distillery.http")

DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_MAX_HEADER_BYTES = 32 * 1024
PROBE_MAX_CONNECTIONS = 32
"""Open connections the probe listener accepts (kubelet and a scraper need a handful)."""
LINGER_S = 5.0
"""After an error answer: how long the server discards what a client still sends."""
MAX_PIPELINED = 32
"""Requests a connection may have parsed and waiting behind the one being answered."""
LISTENER_KEY = "distillery.listener"
_STARTUP_FAILURE = 3  # uvicorn's exit status for a server that could not start
_REASONS = {400: "Bad Request", 408: "Request Timeout",
            431: "Request Header Fields Too Large", 503: "Service Unavailable"}


@dataclass
class ListenerStats:
    """Per server process: public connections open now, and the bound on them."""

    max_connections: int | None = None
    public_open: int = 0
    probe_open: int = 0


@dataclass(frozen=True)
class ListenerInfo:
    """What a request learns about its connection (in `scope["state"][LISTENER_KEY]`)."""

    probe: bool
    """The request came on the probe listener."""
    stats: ListenerStats

    @property
    def saturated(self) -> bool:
        """The public listener holds its maximum of connections (new ones are refused)."""
        limit = self.stats.max_connections
        return limit is not None and self.stats.public_open >= limit


def _raw_response(status: int, code: str, message: str,
                  extra_headers: list[tuple[str, str]] | None = None) -> tuple[bytes, str]:
    """An error answer in the app's JSON shape, and its request id."""
    request_id = uuid.uuid4().hex
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error"
                                 if status < 500 else "service_unavailable",
                                 "code": code, "param": None, "request_id": request_id}}).encode()
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
            "content-type: application/json", f"content-length: {len(body)}",
            f"x-request-id: {request_id}", "connection: close"]
    head += [f"{k}: {v}" for k, v in extra_headers or []]
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body, request_id


class _PipelineOverflow(Exception):
    """Raised in a parser callback to stop parsing (see `MAX_PIPELINED`)."""


def _parser_message(error: Exception, data: bytes) -> tuple[str, str]:
    """(code, message) for a request the HTTP parser refused."""
    if data.startswith(b"PRI * HTTP/2.0"):
        return "http2_not_supported", ("HTTP/2 without TLS (prior knowledge) is not "
                                       "supported: send HTTP/1.1")
    reason = str(error).strip() or type(error).__name__
    return "malformed_request", f"the request is not valid HTTP/1.1: {reason}"


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """See the module docstring."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.header_timeout_s: float | None = getattr(
            config, "header_timeout_s", DEFAULT_HEADER_TIMEOUT_S
        )
        self.max_header_bytes: int | None = getattr(
            config, "max_header_bytes", DEFAULT_MAX_HEADER_BYTES
        )
        self.max_connections: int | None = getattr(config, "max_connections", None)
        stats = getattr(config, "listener_stats", None)
        self.stats: ListenerStats = stats if stats is not None else ListenerStats(
            self.max_connections)
        self.probe_port: int | None = getattr(config, "probe_port", None)
        self.info = ListenerInfo(probe=False, stats=self.stats)
        self._header_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._awaiting_headers = True
        self._in_head = True  # the parser is inside a request line or headers
        self._head_bytes = 0
        self._tail_bytes = 0  # after the headers: bytes that were not body (framing, trailers)
        self._body_bytes = 0
        self._chunks = 0
        self._messages = 0
        self._refused = False  # refused, or answered with an error: input is discarded
        self._counted = False

    # -- connection bound ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sockname = transport.get_extra_info("sockname")
        probe = (self.probe_port is not None and isinstance(sockname, tuple)
                 and len(sockname) >= 2 and sockname[1] == self.probe_port)
        self.info = ListenerInfo(probe=probe, stats=self.stats)
        limit = PROBE_MAX_CONNECTIONS if probe else self.max_connections
        open_now = self.stats.probe_open if probe else self.stats.public_open
        if limit is not None and open_now >= limit:
            self._refused = True
            self.transport = transport
            where = "probe listener" if probe else "server"
            data, request_id = _raw_response(
                503, "too_many_connections",
                f"the {where} holds its maximum of {limit} connections; retry shortly",
                [("retry-after", "1")],
            )
            log.warning("refusing a connection: %d open on the %s", open_now, where,
                        extra={"fields": {"event": "http_refused", "status": 503,
                                          "code": "too_many_connections",
                                          "request_id": request_id}})
            transport.write(data)
            transport.close()
            return
        self._counted = True
        if probe:
            self.stats.probe_open += 1
        else:
            self.stats.public_open += 1
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        if self._counted:
            self._counted = False
            if self.info.probe:
                self.stats.probe_open -= 1
            else:
                self.stats.public_open -= 1
        if self.flow is None:  # refused at connect: uvicorn never saw it
            return
        super().connection_lost(exc)

    # -- reading: header size, parser errors --------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # refused or answered with an error: what follows is discarded
        if self._awaiting_headers and self._header_timer is None:
            self._arm_header_timer()  # the first byte of the next request on this connection
        self._unset_keepalive_if_required()
        limit = self.max_header_bytes
        while data and not self._refused:
            if limit is None:
                piece, data = data, b""
                self._feed(piece)
            elif self._in_head:
                piece, data = data[: limit - self._head_bytes], data[limit - self._head_bytes:]
                self._head_bytes += len(piece)
                self._feed(piece)
                if self._in_head and self._head_bytes >= limit and not self._refused:
                    self._refuse(431, "headers_too_large",
                                 f"the request line and headers exceed {limit} bytes "
                                 "(max_header_bytes): send fewer or shorter headers")
            else:
                piece, data = data, b""
                self._feed_body(piece, limit)

    def _feed_body(self, piece: bytes, limit: int) -> None:
        """Feed bytes after the headers, bounding what is not body: chunk framing (small
        per chunk) and trailer fields, which the parser keeps until each one ends."""
        body_before, messages_before = self._body_bytes, self._messages
        self._feed(piece)
        if self._refused or self._in_head or self._messages != messages_before:
            return  # the message ended in this piece: what follows is the next one's head
        self._tail_bytes += len(piece) - (self._body_bytes - body_before)
        if self._tail_bytes > limit + 64 * self._chunks:
            self._refuse(431, "headers_too_large",
                         f"the request's trailer fields exceed {limit} bytes "
                         "(max_header_bytes): send fewer or shorter trailers")

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            if isinstance(e.__context__, _PipelineOverflow):
                self._refused = True
                log.warning("closing a connection with more than %d pipelined requests",
                            MAX_PIPELINED, extra={"fields": {
                                "event": "http_refused", "code": "too_many_pipelined"}})
                self.transport.close()  # answers go out in order: none can be added now
                return
            code, message = _parser_message(e, data)
            self._refuse(400, code, message)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's own 400 (kept for its callers): the JSON shape instead of text/plain."""
        self._refuse(400, "malformed_request", msg)

    def _refuse(self, status: int, code: str, message: str,
                extra_headers: list[tuple[str, str]] | None = None) -> None:
        """Answer `status` with the JSON error, stop reading the request, close after
        the client is done sending (at most `LINGER_S`)."""
        self._refused = True
        self._cancel_header_timer()
        transport = self.transport
        if transport.is_closing():
            return
        data, request_id = _raw_response(status, code, message, extra_headers)
        client = f"{self.client[0]}:{self.client[1]}" if self.client else None
        log.warning("%d %s: %s", status, code, message, extra={"fields": {
            "event": "http_refused", "status": status, "code": code, "client": client,
            "request_id": request_id, "probe_listener": self.info.probe}})
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and not self._in_head:
            # this request was answered already (e.g. 401 before its body): a second
            # answer would be read as the next request's; end the connection instead
            if transport.can_write_eof():
                transport.write_eof()
            self._linger_timer = self.loop.call_later(LINGER_S, transport.close)
            return
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started:
                transport.close()  # an answer is being written: do not interleave a second
                return
            cycle.disconnected = True  # the app (reading the body) sees the client gone
            cycle.message_event.set()
        transport.write(data)
        if transport.can_write_eof():
            transport.write_eof()
        self._linger_timer = self.loop.call_later(LINGER_S, transport.close)

    # -- request boundaries ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["state"][LISTENER_KEY] = self.info

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._in_head = False
        self._head_bytes = self._tail_bytes = self._body_bytes = self._chunks = 0
        self._cancel_header_timer()
        super().on_headers_complete()
        if len(self.pipeline) > MAX_PIPELINED:
            raise _PipelineOverflow  # each waiting request holds its scope and cycle

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # what follows is the next request's line and headers
        self._head_bytes = 0
        self._messages += 1

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next request's headers are awaited; its timer starts with its first byte
        # (until then uvicorn's keep-alive timeout covers the idle connection).
        self._awaiting_headers = True

    # -- header timeout -----------------------------------------------------------------
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
        if not self._awaiting_headers or self.transport.is_closing() or self._refused:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a pipelined request is still being answered; its end re-arms nothing
        self._refuse(408, "header_timeout", "the request line and headers did not arrive "
                     f"within {self.header_timeout_s:g} s")
        self.transport.close()


class GatewayUvicornConfig(uvicorn.Config):
    """`uvicorn.Config` plus the protection values and the probe port (see the module)."""

    def __init__(
        self,
        app: Any,
        *,
        header_timeout_s: float | None = DEFAULT_HEADER_TIMEOUT_S,
        max_header_bytes: int | None = DEFAULT_MAX_HEADER_BYTES,
        max_connections: int | None = None,
        probe_port: int | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("http", GuardedHttpToolsProtocol)
        super().__init__(app, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.max_header_bytes = max_header_bytes
        self.max_connections = max_connections
        self.probe_port = probe_port
        self.listener_stats = ListenerStats(max_connections)


def _bind_probe(config: uvicorn.Config, port: int) -> socket.socket:
    """The probe listener's socket, on the public host (exits as uvicorn does on failure)."""
    family = socket.AF_INET6 if config.host and ":" in config.host else socket.AF_INET
    sock = socket.socket(family=family, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, port))
    except OSError as exc:
        log.error("cannot listen for probes on %s:%d: %s", config.host, port, exc)
        sys.exit(_STARTUP_FAILURE)
    log.info("probes (/healthz, /readyz, /metrics) on http://%s:%d", config.host, port)
    sock.set_inheritable(True)
    return sock


def serve(config: uvicorn.Config) -> bool:
    """Run the server as `uvicorn.run` does (one process, or `config.workers` workers), on
    the public port and, when `config.probe_port` is set, the probe port.
    Returns False when a single-process server failed to start."""
    from uvicorn.supervisors import Multiprocess

    server = uvicorn.Server(config=config)
    probe_port = getattr(config, "probe_port", None)
    try:
        if config.workers > 1:
            sockets = [config.bind_socket()]
            if probe_port is not None:
                sockets.append(_bind_probe(config, probe_port))
            Multiprocess(config, sockets=sockets).run()
            return True
        config.load_app()
        if probe_port is None:
            server.run()
        else:
            server.run(sockets=[config.bind_socket(), _bind_probe(config, probe_port)])
    except KeyboardInterrupt:
        pass
    return server.started or config.workers > 1
