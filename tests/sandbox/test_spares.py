"""Spares: the next step's candidates, forked as soon as a step ends.

When a step is committed or discarded the host asks the state process for as many spares
as the step had candidates (SandboxConfig.spare_candidates at most): forks of the state
that pass their gate, warm themselves up and wait - frozen with the jail - for their
code. The next step hands its code to them instead of forking then, so a step's latency
no longer includes the fork. These tests check that spares are what a step runs on,
that they carry exactly the committed state, that unused ones are killed, and that
nothing of the run executes between steps because of them.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from sandbox.procs import is_alive
from tests.sandbox.conftest import ExecutorFactory, Opener
from tests.sandbox.util import (
    Tracker,
    assert_healthy,
    at_rest,
    attack_config,
    idle_cpu_s,
    wait_until,
)

pytestmark = pytest.mark.nsjail


async def test_a_step_runs_on_the_spare_forked_after_the_last_one(
    open_session: Opener, tracker: Tracker
) -> None:
    s = await open_session(attack_config())
    await s.run("x = 41")
    worker = s.worker
    assert worker is not None
    assert await wait_until(lambda: at_rest(worker) and len(worker.spare_forks()) == 1)
    [spare] = worker.spare_forks()
    r = await s.run("import os\n(x + 1, os.getpid())")
    assert r.value_repr == f"(42, {spare.pid})", r  # the committed state, in the spare
    await assert_healthy(s, tracker)


async def test_as_many_spares_as_the_last_step_had_and_unused_ones_die(
    open_session: Opener, tracker: Tracker
) -> None:
    s = await open_session(attack_config())
    results = await s.try_candidates([f"y = {i}" for i in range(4)])
    assert all(r.ok for r in results)
    await s.commit(2)
    worker = s.worker
    assert worker is not None
    assert await wait_until(lambda: at_rest(worker) and len(worker.spare_forks()) == 4)
    hosts = [f.host_pid for f in worker.spare_forks()]
    assert None not in hosts
    r = await s.run("y")  # one spare runs it and becomes the state; three are killed
    assert r.value_repr == "2", r
    assert await wait_until(lambda: sum(is_alive(p) for p in hosts if p is not None) == 1)
    assert await wait_until(lambda: at_rest(worker) and len(worker.spare_forks()) == 1)
    await assert_healthy(s, tracker)


async def test_no_spares_after_a_final_answer(open_session: Opener, tracker: Tracker) -> None:
    s = await open_session(attack_config())
    r = await s.run("final_answer(42)")
    assert r.is_final and r.final_answer == 42
    worker = s.worker
    assert worker is not None
    assert await wait_until(lambda: len(worker.process_ids()) == 2)
    await asyncio.sleep(0.3)  # past SPARE_DELAY_S: none were asked for
    assert worker.spare_forks() == [] and len(worker.process_ids()) == 2
    r = await s.run("1 + 1")  # a caller may still go on: the step forks as without spares
    assert r.value_repr == "2", r
    await assert_healthy(s, tracker)


async def test_spares_after_a_discard_carry_the_state_from_before_the_step(
    open_session: Opener, tracker: Tracker
) -> None:
    s = await open_session(attack_config())
    await s.run("x = 1")
    await s.try_candidates(["x = 2", "x = 3"])  # on the step's spare and on a fresh fork
    await s.discard()
    r = await s.run("x")
    assert r.value_repr == "1", r
    await assert_healthy(s, tracker)


async def test_no_spares_when_turned_off_or_without_a_freezer(
    open_session: Opener, tracker: Tracker
) -> None:
    for cfg in (attack_config(spare_candidates=0), attack_config(freeze_between_steps=False)):
        s = await open_session(cfg)
        await s.try_candidates(["x = 1", "x = 2"])
        await s.commit(0)
        worker = s.worker
        assert worker is not None
        ids = worker.process_ids
        assert await wait_until(lambda: len(ids()) == 2)  # init + state  # noqa: B023
        assert worker.spare_forks() == []
        await asyncio.sleep(0.3)
        assert len(worker.process_ids()) == 2
        r = await s.run("x")
        assert r.value_repr == "1"
        await assert_healthy(s, tracker)


# A committed step registers a fork hook that spins: it runs in every process forked from
# the state - the spares too, which are forked when the step ends.
FORK_HOOK = """
import os
def spin():
    while True:
        pass
os.register_at_fork(after_in_child=spin)
x = 'kept'
"""


async def test_a_fork_hook_does_not_run_between_steps(
    open_session: Opener, tracker: Tracker
) -> None:
    s = await open_session(attack_config(step_timeout_s=2.0))
    r = await s.run(FORK_HOOK)
    assert r.ok, r.error
    worker = s.worker
    assert worker is not None and worker.freezer is not None
    assert await wait_until(lambda: at_rest(worker), timeout=10.0)
    await asyncio.sleep(0.2)  # frozen by now
    assert await idle_cpu_s(worker) < 0.02  # the spinning spare is frozen
    # the next step's process spins in the hook before the code: the wall-clock limit
    # stops it; the state is intact (and the same happens without spares)
    r = await s.run("x")
    assert r.error_kind == "timeout", r
    assert not r.state_lost
    assert not worker.dead


async def test_a_spare_killed_while_parked_is_replaced_by_a_fork(
    open_session: Opener, tracker: Tracker
) -> None:
    s = await open_session(attack_config())
    await s.run("x = 5")
    worker = s.worker
    assert worker is not None
    assert await wait_until(lambda: at_rest(worker) and len(worker.spare_forks()) == 1)
    [spare] = worker.spare_forks()
    assert spare.host_pid is not None
    # frozen (cgroup v1), it dies only when the next step thaws the jail: usually after
    # the host handed it the code, so the host sees it die before its `started`
    os.kill(spare.host_pid, signal.SIGKILL)
    r = await s.run("import os\n(x, os.getpid())")
    # the code ran once, on a fresh fork (the dead spare never took it), with the state
    assert r.ok, r
    value = eval(r.value_repr or "")
    assert value[0] == 5 and value[1] != spare.pid
    await assert_healthy(s, tracker)


async def test_a_stopped_state_process_still_forks_its_spares(
    open_session: Opener, tracker: Tracker
) -> None:
    # a rejected candidate stops the state process; the spares are asked for after the step
    # and must not wait for the next step's SIGCONT (past control_timeout_s the worker
    # would count as dead and the run would lose its state)
    s = await open_session(attack_config(control_timeout_s=1.0))
    await s.run("x = 'kept'")
    [r] = await s.try_candidates(["import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)"])
    assert r.ok, r
    await s.discard()  # the stopped process stays the state
    worker = s.worker
    assert worker is not None
    assert await wait_until(lambda: at_rest(worker) and len(worker.spare_forks()) == 1)
    await asyncio.sleep(1.5)
    assert not worker.dead
    r = await s.run("x")
    assert r.value_repr == "'kept'" and not r.state_lost, r
    await assert_healthy(s, tracker)


async def test_no_spares_when_the_run_is_near_its_memory_limit(
    open_session: Opener, tracker: Tracker
) -> None:
    # spares copy some of the state's pages: a run close to its limit gets none, rather
    # than an OOM kill between steps
    # (200 MB written takes seconds of CPU under emulation: tests/cgroup2 runs this in qemu)
    s = await open_session(attack_config(memory_mb=256, cpu_s=60, step_timeout_s=120.0))
    r = await s.run("big = b'x' * (205 << 20)\nlen(big)")
    assert r.value_repr == str(205 << 20), r
    worker = s.worker
    assert worker is not None
    assert await wait_until(lambda: len(worker.process_ids()) == 2)
    await asyncio.sleep(0.3)
    assert worker.spare_forks() == [] and len(worker.process_ids()) == 2
    r = await s.run("del big\n1 + 1")
    assert r.value_repr == "2" and not r.state_lost, r
    assert await wait_until(lambda: at_rest(worker) and len(worker.spare_forks()) == 1)
    await assert_healthy(s, tracker)


async def test_the_executor_counts_candidates_run_on_spares(
    make_executor: ExecutorFactory,
) -> None:
    ex = make_executor(attack_config())
    s = await ex.open_session({})
    await s.run("x = 1")  # the first step: forked
    worker = s.worker
    assert worker is not None
    assert await wait_until(lambda: len(worker.spare_forks()) == 1)
    await s.run("x += 1")  # on the spare
    stats = ex.stats()
    assert (stats["candidates_forked"], stats["candidates_on_spares"]) == (1, 1), stats
    await s.close()
