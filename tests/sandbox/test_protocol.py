"""The framed protocol: the decoder's limits, and a jailed process that forges frames.

Forged frames kill only the forging candidate; the host stays healthy and the session
goes on with its state.
"""

from __future__ import annotations

import pytest

from sandbox.protocol import HEADER, FrameDecoder, ProtocolError, encode
from tests.sandbox.conftest import Opener
from tests.sandbox.util import Tracker, assert_healthy, attack_config


def test_decoder_round_trip_across_chunks() -> None:
    data = encode({"op": "a", "x": "é" * 10}) + encode({"op": "b"})
    dec = FrameDecoder(max_frame=1000)
    out = []
    for i in range(len(data)):  # one byte at a time
        out += list(dec.feed(data[i : i + 1]))
    assert out == [{"op": "a", "x": "é" * 10}, {"op": "b"}] and dec.pending == 0


@pytest.mark.parametrize(
    "raw, message",
    [
        (HEADER.pack(10**9), "exceeds the limit"),
        (HEADER.pack(4) + b"\xff\xfe{}", "not strict UTF-8 JSON"),
        (HEADER.pack(7) + b"[1,2,3]", "JSON object"),
        (HEADER.pack(12) + b'{"op": 12}  ', "JSON object"),
        (HEADER.pack(5) + b"nope!", "not strict UTF-8 JSON"),
        (HEADER.pack(18) + b'{"op":"x","v":NaN}', "NaN is not JSON"),
        (HEADER.pack(24) + b'{"op":"x","v":-Infinity}', "Infinity is not JSON"),
        (HEADER.pack(10000) + b"[" * 5000 + b"]" * 5000, "nested deeper than 64"),
        (HEADER.pack(200) + b'{"op":"x","v":' + b"[" * 70 + b"]" * 70 + b"}" + b" " * 45,
         "nested deeper than 64"),
    ],
)
def test_decoder_rejects_bad_frames(raw: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        list(FrameDecoder(max_frame=1 << 20).feed(raw))


# The candidate finds its own socket among its fds and writes to it directly.
FIND_SOCKET = """
import os, socket, stat, struct, json, array
def _sock():
    for fd in range(3, 64):
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                return socket.socket(fileno=os.dup(fd))
        except OSError:
            pass
s = _sock()
def frame(obj):
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body
"""

FORGERIES = {
    "huge_length": "s.sendall(struct.pack('>I', 2**31) + b'x' * 100)",
    "bad_json": "s.sendall(struct.pack('>I', 5) + b'{{{{{')",
    "not_an_object": "s.sendall(frame([1, 2]))",
    "unknown_op": "s.sendall(frame({'op': 'spawned', 'cid': 1, 'pid': 1, 'fd': True}))",
    "wrong_result_types": (
        "s.sendall(frame({'op': 'result', 'stdout': 5, 'is_final': 'yes', 'error': None,"
        " 'error_kind': None}))"
    ),
    "bogus_error_kind": (
        "s.sendall(frame({'op': 'result', 'stdout': '', 'is_final': False, 'error': 'x',"
        " 'error_kind': 'root'}))"
    ),
    "bad_tool_call": "s.sendall(frame({'op': 'tool', 'id': 'x', 'name': 3}))",
    "fd_passing": (
        "s.sendmsg([frame({'op': 'tool', 'id': 1, 'name': 't', 'args': [], 'kwargs': {}})],"
        " [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [0]).tobytes())])"
    ),
    "frame_flood": (
        "data = frame({'op': 'noise'}) * 5000\n"
        "try:\n    s.sendall(data)\nexcept OSError:\n    pass"
    ),
}


@pytest.mark.nsjail
async def test_forged_frames_kill_only_the_forger(open_session: Opener, tracker: Tracker) -> None:
    s = await open_session(attack_config(step_timeout_s=5.0))
    await s.run("kept = 'yes'")
    for name, attack in FORGERIES.items():
        r = await s.run(FIND_SOCKET + attack + "\nimport time\ntime.sleep(30)")
        assert r.error_kind == "crash", (name, r)
        assert "protocol" in (r.error or ""), (name, r.error)
        assert (await s.run("kept")).value_repr == "'yes'", name
    await assert_healthy(s, tracker)


@pytest.mark.nsjail
async def test_forged_result_is_validated_not_trusted(open_session: Opener) -> None:
    # A well-formed forged result is accepted as that candidate's result: it can only lie
    # about its own output. It cannot claim to be someone else or pass descriptors.
    s = await open_session(attack_config(control_timeout_s=1.0))
    texts = [{"op": "text", "field": "stdout", "data": "forged"},
             {"op": "text", "field": "value_repr", "data": "1"},
             {"op": "text", "field": "final_answer", "data": '{"a": 1}'}]
    forged = {"op": "result", "texts": ["stdout", "value_repr", "final_answer"],
              "error_kind": None, "is_final": True, "final_json": True}
    r = await s.run(FIND_SOCKET + f"for t in {texts!r}:\n    s.sendall(frame(t))\n"
                    f"s.sendall(frame({forged!r}))\nimport time\ntime.sleep(30)")
    assert r.stdout == "forged" and r.final_answer == {"a": 1}
    # the forger kept running instead of waiting to be promoted: the next step notices
    r = await s.run("40 + 2")
    assert r.value_repr == "42" or r.state_lost
    r = await s.run("40 + 2")
    assert r.value_repr == "42"


def test_raw_text_frames_round_trip_and_are_checked() -> None:
    from sandbox.protocol import RAW_TEXT, encode_raw_text

    text = "é\x00\U0001f600" * 1000 + "\ud800"  # a lone surrogate becomes "?"
    data = encode_raw_text("stdout", text) + encode({"op": "b"})
    out = list(FrameDecoder(max_frame=1 << 16).feed(data))
    assert out == [{"op": "text", "field": "stdout", "data": text[:-1] + "?"}, {"op": "b"}]
    for bad, message in [
        (HEADER.pack(RAW_TEXT | 2) + b"\x07x", "known field"),
        (HEADER.pack(RAW_TEXT | 3) + b"\x00\xff\xfe", "not UTF-8"),
        (HEADER.pack(RAW_TEXT | 70_000), "exceeds the limit"),
    ]:
        with pytest.raises(ProtocolError, match=message):
            list(FrameDecoder(max_frame=1 << 16).feed(bad))
