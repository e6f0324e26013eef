"""The framed protocol between the host and the jailed worker.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON (an
object with a string "op"). Frames travel over AF_UNIX stream sockets; a frame may carry
file descriptors (SCM_RIGHTS) - the worker uses that to hand the host one socket per
forked candidate, so every process in the jail has its own channel and its death is seen
as end-of-file.

This module is loaded both by the host (`sandbox.protocol`) and, as a plain top-level
module, by the worker inside the jail: standard library only, no package imports.

Bounds (the host treats everything from the jail as hostile): a frame is at most the
host's `max_frame` bytes (64 KiB by default), strict JSON (NaN and Infinity are refused),
nested at most `max_depth` deep; long text - output, reprs, tracebacks, a final answer -
travels in raw text frames of at most TEXT_CHUNK_CHARS characters each (header flag
RAW_TEXT: one byte naming the field, then UTF-8 - no JSON escaping, decoded at memory
speed), so no single decode on the host is long and the host counts every byte against
its own caps. The decoder turns a raw text frame into {"op": "text", field, data}.

Messages (host -> worker process):
  config   {allowed_imports, output_max_bytes, cpu_s, preload, site_dirs,
            tool_args_max_bytes, tool_args_step_max_bytes, json_depth_max}
  tools    {names}                      define the proxied tool functions
  spawn    {cid, code}                  fork a candidate that runs `code`
  spawn    {cid}                        fork a spare: a candidate that waits for its code
  kill     {pid}                        SIGKILL a candidate (and its process group)
  discard  {}                           kill every candidate and stray process
  ping     {}                           liveness check -> pong
  run      {code} (to a spare)          run `code` -> started, then as any candidate
  promote  {}   (to a parked candidate) become the session state
  tool_result {id, result} / tool_error {id, error}   (to a candidate)
Messages (worker -> host):
  hello    {pid, python}                after start-up
  ready    {preloaded, errors}          after config
  spawned  {cid, pid, fd: true}         + the candidate's socket as SCM_RIGHTS
  spawn_failed {cid, error, errno}
  exited   {pid, code, signal}          a candidate was reaped
  pong     {}
  started  {}                           (from a spare) it took its code
  tool     {id, name, args, kwargs}     (from a candidate)
  text     {field, data}                (from a candidate) a piece of a result's text field
  result   {texts, error_kind, is_final, final_json, exec_s, keep}
           texts: the text fields sent before it (stdout, value_repr, error, final_answer);
           final_json: the final_answer text is JSON (a structured answer) or plain text
"""

from __future__ import annotations

import array
import json
import socket
import struct
from collections.abc import Iterator
from typing import Any

HEADER = struct.Struct(">I")
MAX_FDS_PER_MESSAGE = 1
TEXT_CHUNK_CHARS = 15_000
"""Characters per text frame: at most 4 bytes each in UTF-8, so a frame stays < 60 KB."""
RAW_TEXT = 1 << 31
"""Header flag of a raw text frame (the length is in the lower 31 bits)."""
TEXT_FIELDS = ("stdout", "value_repr", "error", "final_answer")
FINAL_JSON_MAX_BYTES = 1 << 15
"""A structured final answer's JSON is at most this large; bigger ones are sent as str()."""
DEFAULT_MAX_DEPTH = 64
BATCH_BYTES = 1 << 16
"""The worker sends a result's frames in one write when they add up to at most this."""

Message = dict[str, Any]


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame: the channel cannot be trusted."""


def encode(msg: Message) -> bytes:
    # "replace": a lone surrogate (print("\ud800")) becomes "?" instead of failing the frame
    body = json.dumps(msg, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")
    return HEADER.pack(len(body)) + body


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_loads(text: str | bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """json.loads that refuses NaN/Infinity and values nested deeper than `max_depth`
    (ValueError either way; never RecursionError)."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    if json_depth(value, max_depth) > max_depth:
        raise ValueError(f"nested deeper than {max_depth} levels")
    return value


def json_depth(value: Any, stop: int = DEFAULT_MAX_DEPTH) -> int:
    """Nesting depth of lists/dicts in `value` (a scalar is 0), without recursion; it stops
    counting past `stop` (returns stop + 1)."""
    if not isinstance(value, (list, dict)):
        return 0
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if d > deepest:
            deepest = d
            if d > stop:
                return d
        children = v.values() if isinstance(v, dict) else v
        stack.extend((c, d + 1) for c in children if isinstance(c, (list, dict)))
    return deepest


def decode_body(body: bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> Message:
    try:
        msg = strict_loads(body.decode("utf-8"), max_depth)
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"frame is not strict UTF-8 JSON: {e}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
        raise ProtocolError("frame is not a JSON object with a string 'op'")
    return msg


class FrameDecoder:
    """Incremental decoder: feed bytes, get (message, frame size); oversize frames, bad or
    too deeply nested JSON are errors."""

    def __init__(self, max_frame: int, max_depth: int = DEFAULT_MAX_DEPTH) -> None:
        self.max_frame = max_frame
        self.max_depth = max_depth
        self._buf = bytearray()

    def feed_sized(self, data: bytes) -> Iterator[tuple[Message, int]]:
        self._buf += data
        while len(self._buf) >= HEADER.size:
            (n,) = HEADER.unpack_from(self._buf)
            raw, n = bool(n & RAW_TEXT), n & ~RAW_TEXT
            if n > self.max_frame:
                raise ProtocolError(f"frame of {n} bytes exceeds the limit of {self.max_frame}")
            if len(self._buf) < HEADER.size + n:
                return
            body = bytes(self._buf[HEADER.size : HEADER.size + n])
            del self._buf[: HEADER.size + n]
            yield (decode_raw_text(body) if raw else decode_body(body, self.max_depth)), n

    def feed(self, data: bytes) -> Iterator[Message]:
        for msg, _ in self.feed_sized(data):
            yield msg

    @property
    def pending(self) -> int:
        return len(self._buf)


# --- blocking helpers (used by the worker inside the jail) ------------------------------


def decode_raw_text(body: bytes) -> Message:
    if not body or body[0] >= len(TEXT_FIELDS):
        raise ProtocolError("raw text frame without a known field")
    try:
        data = body[1:].decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"raw text frame is not UTF-8: {e}") from None
    return {"op": "text", "field": TEXT_FIELDS[body[0]], "data": data}


def encode_raw_text(field: str, text: str) -> bytes:
    body = bytes([TEXT_FIELDS.index(field)]) + text.encode("utf-8", "replace")
    return HEADER.pack(RAW_TEXT | len(body)) + body


def text_frames(field: str, text: str) -> Iterator[bytes]:
    """`text` as raw text frames of at most TEXT_CHUNK_CHARS characters each."""
    for i in range(0, len(text), TEXT_CHUNK_CHARS):
        yield encode_raw_text(field, text[i : i + TEXT_CHUNK_CHARS])


def send_text(sock: socket.socket, field: str, text: str) -> None:
    """Send `text` as raw text frames of at most TEXT_CHUNK_CHARS characters."""
    for frame in text_frames(field, text):
        sock.sendall(frame)


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
