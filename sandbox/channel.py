"""Host side of one framed socket to a jailed process (asyncio, with fd passing).

Everything read from the jail is untrusted: frames over the size limit, bad JSON, a
flood of frames or file descriptors nobody asked for make the channel fail with
ProtocolError (the caller then kills that process); the host never blocks on it.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import socket
from collections import deque

from sandbox.protocol import FrameDecoder, Message, ProtocolError, encode

MAX_QUEUED = 256
READS_PER_WAKEUP = 16
FD_SIZE = array.array("i").itemsize


class Channel:
    def __init__(self, sock: socket.socket, *, max_frame: int, accept_fds: bool = False) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._decoder = FrameDecoder(max_frame)
        self.accept_fds = accept_fds
        self._queue: deque[tuple[Message, int | None]] = deque()
        self._fds: deque[int] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._error: ProtocolError | None = None
        self._closed = False
        self._send_lock = asyncio.Lock()  # frames of concurrent senders must not interleave
        self._loop.add_reader(sock.fileno(), self._on_readable)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def broken(self) -> bool:
        """End-of-file or a protocol error was seen."""
        return self._eof or self._error is not None

    def _fail(self, error: ProtocolError) -> None:
        self._error = error
        self._stop_reading()

    def _stop_reading(self) -> None:
        if not self._closed:
            self._loop.remove_reader(self.sock.fileno())

    def _on_readable(self) -> None:
        try:
            self._read_available()
        finally:
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)

    def _read_available(self) -> None:
        # a bounded number of reads per wake-up: a flooding peer cannot starve the loop
        for _ in range(READS_PER_WAKEUP):
            if self.broken:
                return
            try:
                data, anc, _flags, _ = self.sock.recvmsg(1 << 16, socket.CMSG_SPACE(4 * FD_SIZE))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, anc = b"", []
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % FD_SIZE])
                    self._fds.extend(fds)
            if self._fds and not self.accept_fds:
                self._close_fds()
                self._fail(ProtocolError("unexpected file descriptors"))
                return
            if not data:
                self._eof = True
                self._stop_reading()
                return
            try:
                for msg in self._decoder.feed(data):
                    fd = None
                    if msg.get("fd") is True:
                        if not self._fds:
                            raise ProtocolError("frame announces a file descriptor it lacks")
                        fd = self._fds.popleft()
                    self._queue.append((msg, fd))
                if len(self._queue) > MAX_QUEUED:
                    raise ProtocolError("too many unanswered frames")
            except ProtocolError as e:
                self._fail(e)
                return

    async def recv(self) -> tuple[Message, int | None] | None:
        """Next (message, fd); None at end-of-file; ProtocolError when the peer misbehaved."""
        while True:
            if self._queue:
                return self._queue.popleft()
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
        for _, fd in self._queue:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._queue.clear()
        self.sock.close()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
