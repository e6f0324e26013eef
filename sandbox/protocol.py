"""The framed protocol between the host and the jailed worker.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON (an
object with a string "op"). Frames travel over AF_UNIX stream sockets; a frame may carry
file descriptors (SCM_RIGHTS) - the worker uses that to hand the host one socket per
forked candidate, so every process in the jail has its own channel and its death is seen
as end-of-file.

This module is loaded both by the host (`sandbox.protocol`) and, as a plain top-level
module, by the worker inside the jail: standard library only, no package imports.

Messages (host -> worker process):
  config   {allowed_imports, output_max_bytes, cpu_s, file_size_mb, preload, site_dirs}
  tools    {names}                      define the proxied tool functions
  spawn    {cid, code}                  fork a candidate that runs `code`
  kill     {pid}                        SIGKILL a candidate (and its process group)
  discard  {}                           kill every candidate and stray process
  ping     {}                           liveness check -> pong
  promote  {}   (to a parked candidate) become the session state
  tool_result {id, result} / tool_error {id, error}   (to a candidate)
Messages (worker -> host):
  hello    {pid, python}                after start-up
  ready    {preloaded, errors}          after config
  spawned  {cid, pid, fd: true}         + the candidate's socket as SCM_RIGHTS
  spawn_failed {cid, error, errno}
  exited   {pid, code, signal}          a candidate was reaped
  pong     {}
  tool     {id, name, args, kwargs}     (from a candidate)
  result   {stdout, value_repr, error, error_kind, is_final, final_answer, exec_s}
"""

from __future__ import annotations

import array
import json
import socket
import struct
from collections.abc import Iterator
from typing import Any

HEADER = struct.Struct(">I")
MAX_FDS_PER_MESSAGE = 4

Message = dict[str, Any]


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame: the channel cannot be trusted."""


def encode(msg: Message) -> bytes:
    # "replace": a lone surrogate (print("\ud800")) becomes "?" instead of failing the frame
    body = json.dumps(msg, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> Message:
    try:
        msg = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"frame is not UTF-8 JSON: {e}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
        raise ProtocolError("frame is not a JSON object with a string 'op'")
    return msg


class FrameDecoder:
    """Incremental decoder: feed bytes, get complete messages; oversize frames are errors."""

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[Message]:
        self._buf += data
        while len(self._buf) >= HEADER.size:
            (n,) = HEADER.unpack_from(self._buf)
            if n > self.max_frame:
                raise ProtocolError(f"frame of {n} bytes exceeds the limit of {self.max_frame}")
            if len(self._buf) < HEADER.size + n:
                return
            body = bytes(self._buf[HEADER.size : HEADER.size + n])
            del self._buf[: HEADER.size + n]
            yield decode_body(body)

    @property
    def pending(self) -> int:
        return len(self._buf)


# --- blocking helpers (used by the worker inside the jail) ------------------------------


def send_blocking(sock: socket.socket, msg: Message, fds: tuple[int, ...] = ()) -> None:
    data = encode(msg)
    if fds:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        sent = sock.sendmsg([data], anc)
        data = data[sent:]
    if data:
        sock.sendall(data)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_blocking(sock: socket.socket, max_frame: int = 1 << 30) -> Message | None:
    """Read one frame; None on end-of-file."""
    head = _recv_exact(sock, HEADER.size)
    if head is None:
        return None
    (n,) = HEADER.unpack(head)
    if n > max_frame:
        raise ProtocolError(f"frame of {n} bytes exceeds the limit of {max_frame}")
    body = _recv_exact(sock, n)
    if body is None:
        return None
    return decode_body(body)
