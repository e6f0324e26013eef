"""Host side of one framed socket to a jailed process (asyncio, with fd passing).

Everything read from the jail is untrusted and bounded before it costs the host much:
- a frame is at most `max_frame` bytes and strict JSON at most `max_depth` deep;
- at most READS_PER_WAKEUP reads of READ_SIZE bytes per event-loop wake-up, so one
  flooding peer delays the loop by a bounded amount (each decode is of one small frame);
- at most QUEUE_BYTES / QUEUE_FRAMES of decoded frames wait for the consumer; beyond that
  the channel stops reading (backpressure: the peer blocks in its own send) until the
  consumer catches up - host memory per channel stays bounded;
- file descriptors (SCM_RIGHTS) only where `accept_fds` is set, at most one per message
  and only attached to the frame that announces it (`"fd": true`); anything else, or a
  truncated control message, is a protocol violation;
- `silence()`: the peer must send nothing more (a parked candidate); any byte is a
  violation and the channel stops reading at once.
A violation makes `recv()` raise ProtocolError and calls `on_violation` (the owner kills
that process); the host never blocks on the peer.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import socket
from collections import deque
from collections.abc import Callable

from sandbox.protocol import DEFAULT_MAX_DEPTH, FrameDecoder, Message, ProtocolError, encode

READ_SIZE = 1 << 16
READS_PER_WAKEUP = 4
QUEUE_BYTES = 1 << 18
QUEUE_FRAMES = 256
FD_SIZE = array.array("i").itemsize
ANCILLARY_SPACE = socket.CMSG_SPACE(FD_SIZE)  # room for exactly one descriptor


class Channel:
    def __init__(
        self,
        sock: socket.socket,
        *,
        max_frame: int,
        accept_fds: bool = False,
        max_depth: int = DEFAULT_MAX_DEPTH,
        on_violation: Callable[[ProtocolError], None] | None = None,
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._decoder = FrameDecoder(max_frame, max_depth)
        self.accept_fds = accept_fds
        self.on_violation = on_violation
        self._queue: deque[tuple[Message, int | None, int]] = deque()
        self._queued_bytes = 0
        self._fds: deque[int] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._error: ProtocolError | None = None
        self._closed = False
        self._reading = False
        self._silent = False
        self.bytes_received = 0
        self._send_lock = asyncio.Lock()  # frames of concurrent senders must not interleave
        self._start_reading()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def broken(self) -> bool:
        """End-of-file or a protocol error was seen."""
        return self._eof or self._error is not None

    @property
    def error(self) -> ProtocolError | None:
        return self._error

    def _start_reading(self) -> None:
        if not self._reading and not self._closed and not self.broken:
            self._loop.add_reader(self.sock.fileno(), self._on_readable)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading and not self._closed:
            self._loop.remove_reader(self.sock.fileno())
        self._reading = False

    def _fail(self, error: ProtocolError) -> None:
        if self._error is None:
            self._error = error
        self._stop_reading()
        self._close_fds()
        if self.on_violation is not None:
            callback, self.on_violation = self.on_violation, None
            callback(error)

    def silence(self) -> None:
        """From now on the peer must not send anything (it is parked)."""
        self._silent = True
        if self._queue:
            self._fail(ProtocolError("sent data after its result"))

    def unsilence(self) -> None:
        """The peer may talk again (a parked candidate that is being promoted)."""
        self._silent = False
        self._start_reading()

    def _on_readable(self) -> None:
        try:
            self._read_available()
        finally:
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)

    def _read_available(self) -> None:
        for _ in range(READS_PER_WAKEUP):
            if self.broken or self._closed:
                return
            if self._queued_bytes >= QUEUE_BYTES or len(self._queue) >= QUEUE_FRAMES:
                self._stop_reading()  # backpressure until recv() drains the queue
                return
            try:
                data, anc, flags, _ = self.sock.recvmsg(READ_SIZE, ANCILLARY_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, anc, flags = b"", [], 0
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % FD_SIZE])
                    self._fds.extend(fds)
            if flags & socket.MSG_CTRUNC:
                self._fail(ProtocolError("more than one file descriptor in a message"))
                return
            if self._fds and not self.accept_fds:
                self._fail(ProtocolError("unexpected file descriptors"))
                return
            if not data:
                self._eof = True
                self._stop_reading()
                return
            self.bytes_received += len(data)
            if self._silent:
                self._fail(ProtocolError("sent data after its result"))
                return
            try:
                for msg, size in self._decoder.feed_sized(data):
                    fd = None
                    if msg.get("fd") is True:
                        if not self._fds:
                            raise ProtocolError("frame announces a file descriptor it lacks")
                        fd = self._fds.popleft()
                    self._queue.append((msg, fd, size))
                    self._queued_bytes += size
                # a descriptor travels with the first bytes of its frame: one may wait
                # for the rest of a frame, never more, never without a frame in progress
                if len(self._fds) > 1 or (self._fds and not self._decoder.pending):
                    raise ProtocolError("file descriptor without a frame announcing it")
            except ProtocolError as e:
                self._fail(e)
                return

    async def recv(self) -> tuple[Message, int | None] | None:
        """Next (message, fd); None at end-of-file; ProtocolError when the peer misbehaved."""
        while True:
            if self._queue:
                msg, fd, size = self._queue.popleft()
                self._queued_bytes -= size
                if not self._reading and not self._silent:
                    self._start_reading()
                return msg, fd
            if self._error is not None:
                raise self._error
            if self._eof or self._closed:
                return None
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def recv_msg(self) -> Message | None:
        item = await self.recv()
        if item is None:
            return None
        msg, fd = item
        if fd is not None:
            os.close(fd)
            raise ProtocolError("unexpected file descriptor")
        return msg

    async def send(self, msg: Message) -> None:
        data = encode(msg)
        async with self._send_lock:
            if self._closed:
                raise ConnectionResetError("channel closed")
            await self._loop.sock_sendall(self.sock, data)

    def _close_fds(self) -> None:
        while self._fds:
            with contextlib.suppress(OSError):
                os.close(self._fds.popleft())

    def close(self) -> None:
        if self._closed:
            return
        self._stop_reading()
        self._closed = True
        self._close_fds()
        for _, fd, _ in self._queue:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._queue.clear()
        self._queued_bytes = 0
        self.sock.close()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
