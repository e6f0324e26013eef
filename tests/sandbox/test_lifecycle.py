"""Workers dying and being replaced, closing without leaks, the pool, setup errors, dev mode."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import pytest

from sandbox.cgroups import ensure_parents
from sandbox.config import SandboxConfig
from sandbox.errors import SandboxSetupError
from sandbox.executor import SandboxExecutor
from sandbox.process import first_child
from sandbox.procs import is_alive
from tests.sandbox.conftest import ExecutorFactory, Opener
from tests.sandbox.util import (
    Tracker,
    assert_healthy,
    at_rest,
    attack_config,
    fast_config,
    wait_until,
)

pytestmark = pytest.mark.nsjail


async def test_dead_worker_is_replaced_and_the_loss_is_reported(open_session: Opener,
                                                                tracker: Tracker) -> None:
    s = await open_session()
    await s.run("x = 1")
    worker = s.worker
    assert worker is not None
    os.kill(worker.popen.pid, signal.SIGKILL)  # nsjail dies: the whole jail goes with it
    assert await wait_until(lambda: worker.dead)
    r = await s.run("y = 2\n'x' in globals()")
    assert r.ok and r.state_lost and r.value_repr == "False"
    assert s.worker is not worker and s.workers_started == 2
    r = await s.run("y")
    assert r.value_repr == "2" and not r.state_lost  # reported once
    tracker.watch(s)
    await assert_healthy(s, tracker)


async def test_state_process_killed_from_outside(open_session: Opener, tracker: Tracker) -> None:
    # without spares: with one parked, the next step may run on it (a copy of the state,
    # so nothing is lost) before the host sees the state process die
    s = await open_session(fast_config(spare_candidates=0))
    await s.run("x = 1")
    worker = s.worker
    assert worker is not None
    # kill the state process: the jail's process that is not nsjail's child (init)
    assert await wait_until(lambda: at_rest(worker))
    spares = {f.host_pid for f in worker.spare_forks()}
    [state] = [
        p for p in worker.process_ids() if p != first_child(worker.popen.pid) and p not in spares
    ]
    os.kill(state, signal.SIGKILL)
    r = await s.run("x")
    assert r.state_lost and r.error_kind == "exception" and "NameError" in (r.error or "")
    await assert_healthy(s, tracker)


async def test_step_that_kills_the_worker_reports_the_loss_itself(open_session: Opener,
                                                                  tracker: Tracker) -> None:
    s = await open_session(attack_config())
    await s.run("x = 1")
    # the candidate kills its parent (the state process) and then itself
    r = await s.run("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
                    "os.kill(os.getpid(), signal.SIGKILL)")
    assert r.error_kind == "crash" and r.state_lost
    assert "worker died" in (r.error or "")
    r = await s.run("'x' in globals()")
    assert r.value_repr == "False" and not r.state_lost
    await assert_healthy(s, tracker)


async def test_close_kills_everything_and_is_idempotent(open_session: Opener,
                                                        tracker: Tracker) -> None:
    s = await open_session(attack_config(step_timeout_s=30.0))
    worker = s.worker
    assert worker is not None
    # leave candidates parked and a busy one running when closing
    task = asyncio.create_task(s.try_candidates(["x = 1", "while True:\n    pass"]))
    await asyncio.sleep(0.5)
    tracker.watch(s)
    assert len(worker.process_ids()) >= 3
    await s.close()
    await s.close()
    with pytest.raises(RuntimeError):
        await s.run("1")
    await asyncio.wait_for(task, 10)  # the pending step ends (with errors), no hang
    assert worker.popen.poll() is not None
    assert await wait_until(lambda: not tracker.leftovers()), tracker.leftovers()


async def test_cancelled_step_leaves_no_process(open_session: Opener, tracker: Tracker) -> None:
    s = await open_session(attack_config(step_timeout_s=30.0))
    task = asyncio.create_task(s.run("import time\ntime.sleep(60)"))
    await asyncio.sleep(0.5)
    tracker.watch(s)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await s.close()
    assert await wait_until(lambda: not tracker.leftovers()), tracker.leftovers()


async def test_executor_aclose_closes_sessions_and_pool(make_executor: ExecutorFactory) -> None:
    ex = make_executor(fast_config(pool_size=2))
    await ex.start()
    assert ex.pool.ready == 2
    s1 = await ex.open_session({})
    s2 = await ex.open_session({})
    assert ex.pool.stats.hits == 2 and ex.pool.stats.misses == 0
    await ex.pool.fill()
    workers = [w for w in (s1.worker, s2.worker) if w is not None] + list(ex.pool._ready)
    pids = [p for w in workers for p in (w.popen.pid, *w.process_ids())]
    assert len(workers) == 4 and pids
    await ex.aclose()
    assert await wait_until(lambda: not any(is_alive(p) for p in pids))
    assert ex.stats()["open_sessions"] == 0
    with pytest.raises(RuntimeError):
        await ex.open_session({})


async def test_sessions_are_independent(make_executor: ExecutorFactory) -> None:
    ex = make_executor(fast_config(pool_size=1))
    a, b = await asyncio.gather(ex.open_session({}), ex.open_session({}))
    await asyncio.gather(a.run("x = 'a'"), b.run("x = 'b'"))
    ra, rb = await asyncio.gather(a.run("x"), b.run("x"))
    assert (ra.value_repr, rb.value_repr) == ("'a'", "'b'")
    await a.close()
    assert (await b.run("x")).value_repr == "'b'"
    await b.close()


async def test_dead_pool_worker_is_not_handed_out(make_executor: ExecutorFactory) -> None:
    ex = make_executor(fast_config(pool_size=1))
    await ex.start()
    pooled = ex.pool._ready[0]
    os.kill(pooled.popen.pid, signal.SIGKILL)
    assert await wait_until(lambda: pooled.dead)
    s = await ex.open_session({})
    assert s.worker is not pooled and (await s.run("1 + 1")).value_repr == "2"
    assert ex.pool.stats.discarded_dead == 1
    await s.close()


async def test_too_many_candidates_for_the_pids_limit(open_session: Opener) -> None:
    s = await open_session(fast_config(pids=8))
    with pytest.raises(ValueError, match="pids"):
        await s.try_candidates(["1"] * 7)


def test_missing_nsjail_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SandboxSetupError, match="does not exist or is not executable"):
        SandboxExecutor(fast_config(nsjail=str(tmp_path / "nsjail")))


def test_impossible_cgroups_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SandboxSetupError, match="not a cgroup v1 hierarchy.*mkdir -p"):
        SandboxExecutor(fast_config(cgroup_root=str(tmp_path)))
    # a hierarchy whose directories cannot be created
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "cgroup.procs").write_text("")
    (tmp_path / "memory").chmod(0o500)
    try:
        if os.geteuid() == 0:  # root ignores directory permissions: use a read-only path
            with pytest.raises(SandboxSetupError, match="not a cgroup v1 hierarchy"):
                ensure_parents(str(tmp_path), "NSJAIL", ("pids",))
        else:
            with pytest.raises(SandboxSetupError, match="cannot create cgroup"):
                ensure_parents(str(tmp_path), "NSJAIL", ("memory",))
    finally:
        (tmp_path / "memory").chmod(0o700)


def test_cgroup_parents_are_created(tmp_path: Path) -> None:
    for ctl in ("memory", "pids"):
        (tmp_path / ctl).mkdir()
        (tmp_path / ctl / "cgroup.procs").write_text("")
    ensure_parents(str(tmp_path), "MYJAIL", ("memory", "pids"))
    assert (tmp_path / "memory" / "MYJAIL").is_dir() and (tmp_path / "pids" / "MYJAIL").is_dir()


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxConfig(memory_mb=1).validate()
    with pytest.raises(ValueError, match="not a module name"):
        SandboxConfig(allowed_imports=["os; rm -rf"]).validate()
    SandboxConfig().validate()


async def test_invalid_tool_names(make_executor: ExecutorFactory) -> None:
    ex = make_executor()

    async def tool() -> str:
        return ""

    for name in ("final_answer", "not valid", "class"):
        with pytest.raises(ValueError, match="invalid tool name"):
            await ex.open_session({name: tool})


async def test_unjailed_mode_is_explicit_and_loud(make_executor: ExecutorFactory,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sandbox"):
        ex = make_executor(fast_config(unjailed=True))
    assert not ex.jailed
    assert any("UNJAILED" in rec.message for rec in caplog.records)
    s = await ex.open_session({})
    await s.run("import numpy as np\nx = np.int64(5)")
    results = await s.try_candidates(["x += 1\nx", "x += 2\nx"])
    assert [r.value_repr for r in results] == ["np.int64(6)", "np.int64(7)"]
    await s.commit(1)
    assert (await s.run("int(x)")).value_repr == "7"
    r = await s.run("while True:\n    pass")
    assert r.error_kind == "timeout"
    worker = s.worker
    assert worker is not None
    assert await wait_until(lambda: at_rest(worker))
    pids = worker.process_ids()
    await s.close()
    assert await wait_until(lambda: not any(is_alive(p) for p in pids))


def test_default_executor_is_jailed() -> None:
    # never a silent fallback: the default config builds a jailed executor or raises
    ex = SandboxExecutor(fast_config())
    assert ex.jailed


def test_config_from_settings() -> None:
    from distillery.components import sandbox_config
    from distillery.settings import Settings

    settings = Settings.model_validate({"sandbox_memory_mb": 300, "sandbox_pool_size": 0})
    cfg = sandbox_config(settings, nice=5)
    assert (cfg.memory_mb, cfg.pool_size, cfg.nice, cfg.pids) == (300, 0, 5, 32)
    assert cfg.allowed_imports == SandboxConfig().allowed_imports


async def test_selfcheck(make_executor: ExecutorFactory) -> None:
    ex = make_executor(fast_config(pool_size=1))
    assert 0 < await ex.selfcheck() < 30
    assert ex.stats()["open_sessions"] == 0


async def test_no_descriptor_or_task_leak_on_the_host(open_session: Opener) -> None:
    s = await open_session(fast_config(step_timeout_s=5.0))

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    await s.run("x = 0")
    before, tasks_before = fds(), len(asyncio.all_tasks())
    for _ in range(60):
        await s.run("x += 1")
    for i in range(6):
        await s.try_candidates(["x += 1", "1/0", "x += 2"])
        await (s.commit(i % 3) if i % 2 else s.discard())
    assert (await s.run("x")).value_repr is not None
    assert fds() <= before + 2, (before, fds())
    assert len(asyncio.all_tasks()) <= tasks_before + 2


def test_stale_jail_groups_are_removed(tmp_path: Path) -> None:
    (tmp_path / "pids").mkdir()
    (tmp_path / "pids" / "cgroup.procs").write_text("")
    parent = tmp_path / "pids" / "NSJAIL"
    (parent / f"NSJAIL.{2**22 + 7}").mkdir(parents=True)  # above pid_max: never alive
    (parent / f"NSJAIL.{os.getpid()}").mkdir()  # alive: kept
    ensure_parents(str(tmp_path), "NSJAIL", ("pids",))
    assert sorted(p.name for p in parent.iterdir()) == [f"NSJAIL.{os.getpid()}"]


async def test_ping_uses_a_pooled_worker_when_there_is_one(make_executor: ExecutorFactory) -> None:
    ex = make_executor(fast_config(pool_size=1))
    await ex.start()
    started = ex.pool.stats.started
    detail = await ex.ping()
    assert detail["check"] == "a pooled worker answered" and detail["jailed"] is True
    assert ex.pool.stats.started == started and ex.pool.ready == 1  # nothing consumed
    empty = make_executor(fast_config(pool_size=0))
    assert (await empty.ping())["check"] == "a fresh session ran `1 + 1`"
