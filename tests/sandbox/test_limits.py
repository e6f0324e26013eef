"""Limits: each is hit, reported with the right error kind, and the session goes on.

A step that is killed leaves the state as it was before the step (it ran in a fork).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.sandbox.conftest import Opener
from tests.sandbox.util import Tracker, assert_healthy, attack_config, fast_config

pytestmark = pytest.mark.nsjail


async def test_fork_bomb(open_session: Opener, tracker: Tracker) -> None:
    s = await open_session(attack_config(pids=16, step_timeout_s=5.0))
    await s.run("x = 'kept'")
    r = await s.run("import os\nwhile True:\n    os.fork()")
    assert r.error_kind == "pids", r.error
    assert "limit of 16 processes" in (r.error or "")
    assert (await s.run("x")).value_repr == "'kept'"
    await assert_healthy(s, tracker)


async def test_thread_bomb(open_session: Opener, tracker: Tracker) -> None:
    s = await open_session(attack_config(pids=16, step_timeout_s=5.0))
    r = await s.run(
        "import threading, time\nwhile True:\n"
        "    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()"
    )
    assert r.error_kind == "pids", r.error
    await assert_healthy(s, tracker)


async def test_memory_bomb(open_session: Opener, tracker: Tracker) -> None:
    s = await open_session(fast_config(memory_mb=128, step_timeout_s=10.0))
    await s.run("x = 'kept'")
    r = await s.run("blocks = []\nwhile True:\n    blocks.append(bytearray(8 * 1024 * 1024))")
    assert r.error_kind == "memory", r.error
    assert "128 MB" in (r.error or "")
    assert (await s.run("x")).value_repr == "'kept'"
    await assert_healthy(s, tracker)


async def test_huge_allocation_is_a_memory_error(open_session: Opener, tracker: Tracker) -> None:
    s = await open_session()
    r = await s.run("x = [0] * (10 ** 12)")  # refused by the allocator: MemoryError
    assert r.error_kind == "memory", r.error
    await assert_healthy(s, tracker)


async def test_cpu_spin(open_session: Opener, tracker: Tracker) -> None:
    s = await open_session(fast_config(cpu_s=1, step_timeout_s=20.0))
    await s.run("x = 'kept'")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    r = await s.run("while True:\n    pass")
    assert r.error_kind == "timeout", r.error
    assert "CPU time" in (r.error or "")
    assert loop.time() - t0 < 15.0
    assert (await s.run("x")).value_repr == "'kept'"
    await assert_healthy(s, tracker)


async def test_sleep_past_the_wall_limit(open_session: Opener, tracker: Tracker) -> None:
    s = await open_session(attack_config(step_timeout_s=1.0))
    await s.run("x = 'kept'")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    r = await s.run("import time\nx = 'changed'\ntime.sleep(60)")
    elapsed = loop.time() - t0
    assert r.error_kind == "timeout" and "wall-clock" in (r.error or "")
    assert 0.9 < elapsed < 4.0
    assert (await s.run("x")).value_repr == "'kept'"
    await assert_healthy(s, tracker)


async def test_timeout_kills_children_of_the_step(open_session: Opener, tracker: Tracker) -> None:
    s = await open_session(attack_config(step_timeout_s=1.0))
    r = await s.run(
        "import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n        os.setsid()\n"
        "        time.sleep(600)\ntime.sleep(600)"
    )
    assert r.error_kind == "timeout"
    await assert_healthy(s, tracker)  # only init + state remain: the setsid() ones too


async def test_output_flood(open_session: Opener, tracker: Tracker) -> None:
    s = await open_session(fast_config(output_max_bytes=10_000, step_timeout_s=10.0))
    r = await s.run("while True:\n    print('x' * 100)")
    assert r.error_kind == "output" and "10000 bytes" in (r.error or "")
    assert 0 < len(r.stdout) <= 10_000
    r = await s.run("print('y' * 50_000)")
    assert r.error_kind == "output"
    r = await s.run("try:\n    print('z' * 50_000)\nexcept BaseException:\n    pass\n1")
    assert r.error_kind == "output"  # catching it does not help
    await assert_healthy(s, tracker)


async def test_output_flood_through_the_raw_fds(open_session: Opener, tracker: Tracker) -> None:
    s = await open_session(attack_config(file_size_mb=1))
    r = await s.run(
        "import os\nfor fd in (1, 2):\n    try:\n        for _ in range(8):\n"
        "            os.write(fd, b'x' * (1 << 20))\n"
        "    except OSError as e:\n        print(fd, e.strerror)"
    )
    # fd 1 is /dev/null; fd 2 is the worker's host-side log, capped by RLIMIT_FSIZE
    assert r.ok and r.stdout == "2 File too large\n", r
    await assert_healthy(s, tracker)


async def test_huge_file_and_full_tmpfs(open_session: Opener, tracker: Tracker) -> None:
    s = await open_session(fast_config(file_size_mb=2, tmpfs_mb=8))
    r = await s.run("with open('/tmp/big', 'wb') as f:\n    f.write(b'0' * (3 * 1024 * 1024))")
    assert r.error_kind == "exception" and "File too large" in (r.error or ""), r.error
    r = await s.run(
        "for i in range(10):\n    with open(f'/tmp/f{i}', 'wb') as f:\n"
        "        f.write(b'0' * (1024 * 1024 + 512 * 1024))"
    )
    assert r.error_kind == "exception" and "No space left" in (r.error or ""), r.error
    await assert_healthy(s, tracker)


async def test_recursion_is_an_ordinary_error(open_session: Opener, tracker: Tracker) -> None:
    s = await open_session()
    r = await s.run("def f(n):\n    return f(n + 1)\nf(0)")
    assert r.error_kind == "exception" and "RecursionError" in (r.error or "")
    await assert_healthy(s, tracker)


async def test_cpu_throttle_is_applied(open_session: Opener, tracker: Tracker) -> None:
    s = await open_session(fast_config(cpu_ms_per_sec=250))
    worker = s.worker
    assert worker is not None and worker.cgroups is not None
    cpu_dir = worker.cgroups.dirs["cpu"]
    if (cpu_dir / "cpu.max").exists():  # cgroup v2: "<quota> <period>"
        quota, period = map(int, (cpu_dir / "cpu.max").read_text().split())
    else:
        quota = int((cpu_dir / "cpu.cfs_quota_us").read_text())
        period = int((cpu_dir / "cpu.cfs_period_us").read_text())
    assert quota / period == pytest.approx(0.25)
    assert set((cpu_dir / "cgroup.procs").read_text().split()) == {
        str(p) for p in worker.process_ids()
    }
    await assert_healthy(s, tracker)
