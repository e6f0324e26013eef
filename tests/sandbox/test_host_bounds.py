"""Jail against host: everything the jail sends is bounded on the host side.

Each attack is made by code inside the jail (honest-looking calls, frames forged on the
candidate's own socket, a state process whose code was patched by an earlier step); the
offender is killed and the reason is its error; the host's memory and descriptors stay
flat and the session goes on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from sandbox.results import ExecutionResult
from tests.sandbox.conftest import Opener
from tests.sandbox.test_protocol import FIND_SOCKET
from tests.sandbox.test_session import CountingTool
from tests.sandbox.util import Tracker, assert_healthy, attack_config, fast_config, wait_until

pytestmark = pytest.mark.nsjail


def host_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def host_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


FORGED = {
    # 5,000 nested lists: once a RecursionError outside the protocol checks
    "deep_frame": "s.sendall(struct.pack('>I', 10_000) + b'[' * 5000 + b']' * 5000)",
    "deep_json_in_a_tool_call": (
        "body = b'{\"op\":\"tool\",\"id\":1,\"name\":\"web_search\",\"args\":' + b'[' * 200 "
        "+ b']' * 200 + b',\"kwargs\":{}}'\ns.sendall(struct.pack('>I', len(body)) + body)"
    ),
    "nan": "s.sendall(frame({'op': 'tool', 'id': 1, 'name': 'web_search', 'args': "
    "[float('nan')], 'kwargs': {}}))",
    "oversized_tool_call": (
        "s.sendall(frame({'op': 'tool', 'id': 1, 'name': 'web_search', "
        "'args': [[{}] * 40_000], 'kwargs': {}}))"
    ),
    "args_past_the_step_budget": (
        "for i in range(40):\n"
        "    s.sendall(frame({'op': 'tool', 'id': i + 1, 'name': 'web_search', "
        "'args': ['q' * 15_000, i], 'kwargs': {}}))\n"
        "    hdr = s.recv(4)\n"
        "    s.recv(struct.unpack('>I', hdr)[0], socket.MSG_WAITALL)"
    ),
    "oversized_text_frame": (
        "s.sendall(frame({'op': 'text', 'field': 'stdout', 'data': 'x' * 16000}))"
    ),
    "oversized_raw_text_frame": (
        "s.sendall(struct.pack('>I', (1 << 31) | 65001) + b'\\x00' + b'x' * 65000)"
    ),
    "raw_text_frame_not_utf8": "s.sendall(struct.pack('>I', (1 << 31) | 3) + b'\\x00\\xff\\xfe')",
    "raw_text_frame_unknown_field": "s.sendall(struct.pack('>I', (1 << 31) | 2) + b'\\x09x')",
    "many_descriptors": (
        "fd = os.open('/dev/null', os.O_RDONLY)\n"
        "for _ in range(20):\n"
        "    try:\n"
        "        s.sendmsg([frame({'op': 'text', 'field': 'stdout', 'data': 'x', 'fd': True})],"
        " [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [fd] * 120).tobytes())])\n"
        "    except OSError:\n        break"
    ),
    "final_answer_nan": (
        "s.sendall(frame({'op': 'text', 'field': 'final_answer', 'data': '[NaN]'}))\n"
        "s.sendall(frame({'op': 'result', 'texts': ['final_answer'], 'error_kind': None,"
        " 'is_final': True, 'final_json': True}))"
    ),
    "final_answer_900_deep": (
        "s.sendall(frame({'op': 'text', 'field': 'final_answer', 'data': '[' * 900 + ']' * 900}))\n"
        "s.sendall(frame({'op': 'result', 'texts': ['final_answer'], 'error_kind': None,"
        " 'is_final': True, 'final_json': True}))"
    ),
}


@pytest.mark.parametrize("name", sorted(FORGED))
async def test_forgeries_kill_the_forger_and_cost_the_host_nothing(
    name: str, open_session: Opener, tracker: Tracker, caplog: pytest.LogCaptureFixture
) -> None:
    tool = CountingTool()
    s = await open_session(attack_config(step_timeout_s=10.0), {"web_search": tool})
    await s.run("kept = 'yes'")
    fds = host_fds()
    with caplog.at_level(logging.WARNING):
        r = await s.run(FIND_SOCKET + FORGED[name] + "\nimport time\ntime.sleep(30)")
    assert r.error_kind == "crash" and "protocol" in (r.error or ""), (name, r)
    assert not any(rec.exc_info for rec in caplog.records)  # no traceback per frame
    r.to_dict()  # whatever came back can be serialized
    assert (await s.run("kept")).value_repr == "'yes'"
    assert await wait_until(lambda: host_fds() <= fds + 1), (fds, host_fds())
    await assert_healthy(s, tracker)


async def test_honest_calls_with_huge_arguments_are_refused_in_the_jail(
    open_session: Opener, tracker: Tracker
) -> None:
    tool = CountingTool()
    # building and measuring a 3,000,000-item list takes over 2 CPU-s under emulation (the
    # cgroup v2 VM): a CPU limit that is not what this test is about must not decide it
    s = await open_session(fast_config(step_timeout_s=60.0, cpu_s=30), {"web_search": tool})
    rss = host_rss_mib()
    for _ in range(3):
        r = await s.run("web_search([{}] * 3_000_000)")
        assert r.error_kind == "exception" and "too large" in (r.error or ""), r.error
    r = await s.run("for i in range(40):\n    web_search('q' * 10_000 + str(i))")
    assert r.error_kind == "exception" and "in all" in (r.error or ""), r.error
    r = await s.run("x = []\nfor _ in range(100):\n    x = [x]\nweb_search(x)")
    assert r.error_kind == "exception" and "nested deeper" in (r.error or ""), r.error
    assert len(tool.calls) == 26  # the calls within the per-step budget ran, the rest not
    assert host_rss_mib() - rss < 40
    await assert_healthy(s, tracker)


async def test_the_output_cap_holds_when_the_code_lifts_it(
    open_session: Opener, tracker: Tracker
) -> None:
    s = await open_session(attack_config(output_max_bytes=64_000, step_timeout_s=20.0))
    await s.run("kept = 1")
    r = await s.run("import sys\nsys.stdout.limit = 10 ** 12\nprint('x' * 5_000_000)")
    assert r.error_kind == "output" and "counted on the host" in (r.error or ""), r.error
    assert len(r.stdout.encode()) <= 64_000
    # control characters (6 bytes each in JSON) and non-BMP text are counted by bytes too
    r = await s.run("import sys\nsys.stdout.limit = 10 ** 12\nprint('\\x01\\U0001f600' * 40_000)")
    assert r.error_kind == "output" and len(r.stdout.encode()) <= 64_000, r.error
    assert (await s.run("kept")).value_repr == "1"
    await assert_healthy(s, tracker)


async def test_final_answers_are_strict_and_shallow(open_session: Opener) -> None:
    s = await open_session()
    r = await s.run("x = []\nfor _ in range(900):\n    x = [x]\nfinal_answer(x)")
    assert r.is_final and isinstance(r.final_answer, str)  # too deep for JSON: its str()
    r.to_dict()
    r = await s.run("final_answer({'a': [1, 2.5, None], 'b': float('inf')})")
    assert r.is_final and isinstance(r.final_answer, str)  # not strict JSON: its str()
    r = await s.run("final_answer([[[[1]]]])")
    assert r.final_answer == [[[[1]]]]
    r = await s.run("final_answer('é' * 10 + '\\x00')")
    assert r.final_answer == "é" * 10 + "\x00"


async def test_a_parked_candidate_that_keeps_sending_is_killed(
    open_session: Opener, tracker: Tracker
) -> None:
    s = await open_session(attack_config(step_timeout_s=10.0))
    await s.run("kept = 1")
    # its child waits until the parent's code has ended (and a second more, for the
    # result to go out), then floods the socket of the parked candidate
    flood = FIND_SOCKET + (
        "import time\ngate_r, gate_w = os.pipe()\nif os.fork() == 0:\n"
        "    os.read(gate_r, 1)\n    time.sleep(1.0)\n"
        "    try:\n        while True:\n            s.sendall(b'x' * 65536)\n"
        "    except OSError:\n        os._exit(0)\n"
        "kept = 'flooder'\nos.write(gate_w, b'g')"
    )
    rss, fds = host_rss_mib(), host_fds()
    results = await s.try_candidates([flood, "kept = 'other'"])
    assert all(r.ok for r in results), results
    pending = s._pending
    assert pending is not None and pending[0] is not None
    fork = pending[0]
    assert await wait_until(lambda: fork.dead, timeout=20.0)  # killed for sending
    assert fork.channel.bytes_received < 2 << 20  # it stopped being read at once
    await s.commit(0)  # the caller chose it anyway: its changes cannot be kept
    r = await s.run("kept")
    assert r.state_lost and r.value_repr == "1", r  # the state from before that step
    assert host_rss_mib() - rss < 40
    assert await wait_until(lambda: host_fds() <= fds + 1)
    await assert_healthy(s, tracker)


# A step patches the worker's own code so that, once it is the state process, it floods
# the host on the control channel. The host kills that jail and says why.
PATCH_STATE = """
import array, os, socket, sys
W = sys.modules["__main__"]
def evil_spawn(self, msg):
    fd = os.open("/dev/null", os.O_RDONLY)
    for _ in range({n}):
        try:
            W.protocol.send_blocking(self.conn, {msg!r}, (fd,) * {fds})
        except OSError:
            break
    return None
W.State.spawn = evil_spawn
"""


@pytest.mark.parametrize(
    "frame, fds",
    [
        ({"op": "pong", "fd": True}, 1),  # descriptors on frames that carry none
        ({"op": "spawned", "cid": 999, "pid": 5, "fd": True}, 1),  # never asked for
        ({"op": "exited", "pid": 3, "code": 0, "signal": None}, 0),  # flood, unknown pid
        ({"op": "tool", "id": 1}, 0),  # not a control frame
        ({"op": "pong"}, 100),  # 100 descriptors in one message
    ],
)
async def test_a_hostile_state_process_is_killed(
    frame: dict[str, object], fds: int, open_session: Opener, tracker: Tracker
) -> None:
    s = await open_session(attack_config(control_timeout_s=3.0))
    before = host_fds()
    r = await s.run(PATCH_STATE.format(n=3000, msg=frame, fds=fds))
    assert r.ok, r.error
    r = await s.run("1 + 1")
    # the patched state process answers a spawn with its flood: killed; the step ran
    # again on a fresh worker (or, for the harmless exit flood, waited for the fork)
    assert r.value_repr == "2" and r.state_lost, r
    worker = s.worker
    assert worker is not None and not worker.dead
    assert await wait_until(lambda: host_fds() <= before + 1), (before, host_fds())
    await assert_healthy(s, tracker)


async def test_host_memory_and_descriptors_stay_flat_under_attack(
    open_session: Opener, tracker: Tracker
) -> None:
    tool = CountingTool()
    s = await open_session(attack_config(step_timeout_s=10.0), {"web_search": tool})
    attacks = [FIND_SOCKET + FORGED[n] + "\nimport time\ntime.sleep(30)" for n in sorted(FORGED)]
    attacks += [
        "web_search([{}] * 3_000_000)",
        "import sys\nsys.stdout.limit = 10 ** 12\nprint('x' * 5_000_000)",
        "x = []\nfor _ in range(900):\n    x = [x]\nfinal_answer(x)",
    ]

    async def round_() -> list[ExecutionResult]:
        out = []
        for code in attacks:
            out.append(await s.run(code))
        out += await s.try_candidates(attacks[:4])
        await s.discard()
        return out

    await round_()  # warm-up: imports, caches, allocator arenas
    rss, fds = host_rss_mib(), host_fds()
    for _ in range(3):
        results = await round_()
        assert all(r.error is not None or r.is_final for r in results)
    assert host_rss_mib() - rss < 40, (rss, host_rss_mib())
    assert await wait_until(lambda: host_fds() <= fds + 1), (fds, host_fds())
    await assert_healthy(s, tracker)
