"""Reused jails: a finished run's jail, scrubbed, serves a later run (another tenant).

`SandboxConfig.reuse_idle` > 0 makes the pool keep a closed session's jail: init (pid 1,
which never ran model code) kills every other process, empties /tmp and forks a fresh
state process from its own memory. These tests check that the next session really gets
the same jail (so the rest is not vacuous), and that it finds nothing the previous
tenant left on purpose: variables, patched modules, files, processes, signal
dispositions, a stopped or killed init, a tampered state process.
"""

from __future__ import annotations

import asyncio

import pytest

from sandbox.executor import SandboxExecutor
from sandbox.session import SandboxSession
from tests.sandbox.conftest import ExecutorFactory
from tests.sandbox.util import Tracker, assert_healthy, at_rest, attack_config, wait_until

pytestmark = pytest.mark.nsjail

PLANT = """
import os, signal, sys, math
secret = "tenant-a-secret"
math.pi = 3.0                                    # a patched module
sys.modules["json"] = None                        # a poisoned import
__builtins__["len"] = lambda x: 0                 # a patched builtin
os.environ["TENANT_A"] = secret
open("/tmp/secret.txt", "w").write(secret)
os.makedirs("/tmp/hidden/deeper", exist_ok=True)
open("/tmp/hidden/deeper/x", "w").write(secret)
os.chmod("/tmp/hidden", 0)                        # a directory it locked itself out of
os.mkfifo("/tmp/fifo")
# a process that outlives the step: a double-forked daemon ignoring SIGTERM/SIGHUP
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        import time
        while True:
            time.sleep(0.05)
    os._exit(0)
signal.signal(signal.SIGUSR1, signal.SIG_IGN)    # a disposition the state would inherit
for sig in (signal.SIGSTOP, signal.SIGKILL, signal.SIGTERM):
    try:
        os.kill(1, sig)                          # init: ignored inside its pid namespace
    except OSError:
        pass
"""

PROBE = """
import os, sys, math, signal
found = []
if "secret" in globals(): found.append("variable")
if math.pi != 3.141592653589793: found.append("patched module")
if sys.modules.get("json", 0) is None: found.append("poisoned import")
if len("ab") != 2: found.append("patched builtin")
if "TENANT_A" in os.environ: found.append("environment")
if os.listdir("/tmp"): found.append("tmp: " + ",".join(sorted(os.listdir("/tmp"))))
if signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN: found.append("signal disposition")
alive = []
for pid in range(2, 200):
    try:
        os.kill(pid, 0)
        alive.append(pid)
    except ProcessLookupError:
        pass
mine = {os.getpid(), os.getppid()}
found += [f"process {p}" for p in alive if p not in mine]
found
"""


async def _open(ex: SandboxExecutor, tracker: Tracker) -> SandboxSession:
    s = await ex.open_session({})
    tracker.watch(s)
    return s


async def test_a_reused_jail_holds_nothing_of_the_previous_tenant(
    make_executor: ExecutorFactory, tracker: Tracker
) -> None:
    ex = make_executor(attack_config(reuse_idle=2))
    a = await _open(ex, tracker)
    r = await a.run(PLANT)
    assert r.error is None, r.error
    jail = a.worker
    assert jail is not None
    init, uid = jail.init_host_pid, jail.uid
    await a.close()
    assert ex.pool.stats.recycled == 1 and ex.pool.ready == 1

    b = await _open(ex, tracker)
    assert b.worker is jail and jail.init_host_pid == init and jail.uid == uid
    assert jail.runs == 2
    r = await b.run(PROBE)
    assert r.error is None, r.error
    assert r.value_repr == "[]", r.value_repr  # nothing of tenant A is visible
    await assert_healthy(b, tracker)
    await b.close()


async def test_a_step_of_the_previous_tenant_still_running_is_killed_before_reuse(
    make_executor: ExecutorFactory, tracker: Tracker
) -> None:
    # the session closes while candidates run and spares wait: all of them die
    ex = make_executor(attack_config(reuse_idle=1))
    a = await _open(ex, tracker)
    await a.try_candidates(["x = 1", "x = 2"])
    await a.commit(0)
    jail = a.worker
    assert jail is not None
    assert await wait_until(lambda: len(jail.spare_forks()) == 2)
    await a.close()
    b = await _open(ex, tracker)
    assert b.worker is jail
    assert await wait_until(lambda: at_rest(jail))
    assert len(jail.process_ids()) == 2  # init and the fresh state: no spare survived
    r = await b.run("'x' in globals()")
    assert r.value_repr == "False", r
    await b.close()


async def test_a_run_that_killed_its_state_leaves_a_working_jail_or_none(
    make_executor: ExecutorFactory, tracker: Tracker
) -> None:
    ex = make_executor(attack_config(reuse_idle=2))
    a = await _open(ex, tracker)
    # every process the code can signal: the state, its rivals, itself (not init)
    await a.run("secret = 1\nimport os, signal\nos.kill(-1, signal.SIGKILL)")
    await a.close()
    b = await _open(ex, tracker)  # the scrubbed jail (init survived) or a fresh one
    r = await b.run("'secret' in globals()")
    assert r.value_repr == "False" and not r.state_lost, r
    await assert_healthy(b, tracker)
    await b.close()


async def test_a_jail_caught_breaking_the_protocol_is_never_reused(
    make_executor: ExecutorFactory, tracker: Tracker
) -> None:
    ex = make_executor(attack_config(reuse_idle=2))
    c = await _open(ex, tracker)
    jail = c.worker
    assert jail is not None
    jail.death_reason = "stands for a violation the host caught"
    await c.close()
    assert jail.closed and ex.pool.stats.recycled == 0
    d = await _open(ex, tracker)
    assert d.worker is not jail
    await d.close()


async def test_without_reuse_every_jail_serves_one_run(
    make_executor: ExecutorFactory, tracker: Tracker
) -> None:
    ex = make_executor(attack_config(reuse_idle=0))
    a = await _open(ex, tracker)
    await a.run("x = 1")
    jail = a.worker
    await a.close()
    assert jail is not None and jail.closed
    b = await _open(ex, tracker)
    assert b.worker is not jail
    await b.close()
    assert ex.pool.stats.recycled == 0


async def test_a_session_closed_during_a_step_does_not_hand_its_jail_on(
    make_executor: ExecutorFactory, tracker: Tracker
) -> None:
    ex = make_executor(attack_config(reuse_idle=2))
    a = await _open(ex, tracker)
    jail = a.worker
    step = asyncio.create_task(a.run("import time\nwhile True:\n    time.sleep(0.01)"))
    assert await wait_until(lambda: len(jail.process_ids()) >= 3 if jail else False)
    await a.close()  # from another task, while the step runs
    step.cancel()
    await asyncio.gather(step, return_exceptions=True)
    assert jail is not None and jail.closed and ex.pool.stats.recycled == 0
