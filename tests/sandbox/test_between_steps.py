"""Between steps and between candidates: nothing of the run executes while no step runs,
and a rejected candidate's effects do not reach the next step.

When a step ends the host kills every process of the jail but init and the state
process and freezes the jail (cgroup freezer); the next step thaws it. The state process
undoes timers and signal handlers the step's code installed when it is promoted.
SysV IPC and POSIX message queues are refused (they would outlive a rejected candidate);
/tmp after a step is the committed candidate's view (test_tmp.py; docs/sandbox.md states
exactly what survives).
"""

from __future__ import annotations

import pytest

from tests.sandbox.conftest import Opener
from tests.sandbox.util import (
    Tracker,
    assert_healthy,
    at_rest,
    attack_config,
    idle_cpu_s,
    wait_until,
)

pytestmark = pytest.mark.nsjail

# a re-arming interval timer whose handler spins (a tenth of the time, so that the step
# itself still finishes on a busy machine), and a detached spinner child
BURN = """
import os, signal, time
def spin(*_):
    t = time.process_time()
    while time.process_time() - t < 0.005:
        pass
signal.signal(signal.SIGALRM, spin)
signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
if os.fork() == 0:
    os.setsid()
    while True:
        pass
x = 'kept'
"""


async def test_nothing_runs_between_steps(open_session: Opener, tracker: Tracker) -> None:
    s = await open_session(attack_config(step_timeout_s=20.0))
    r = await s.run(BURN)
    assert r.ok, r.error
    worker = s.worker
    assert worker is not None and worker.freezer is not None
    # the spinner is killed; only init, the state process and its spares are left, frozen
    assert await wait_until(lambda: at_rest(worker), timeout=10.0)
    freezer = worker.freezer

    def frozen() -> bool:
        is_frozen = getattr(freezer, "is_frozen", None)  # cgroup v2: cgroup.events
        if is_frozen is not None:
            return bool(is_frozen())
        return (freezer.dir / "freezer.state").read_text().strip() == "FROZEN"  # type: ignore[attr-defined]

    assert await wait_until(frozen, timeout=10.0)
    assert await idle_cpu_s(worker) < 0.02  # (a tick is 0.01 s)
    # the next step works and the state process had its timer and handler undone
    r = await s.run("import signal\n(x, signal.getsignal(signal.SIGALRM) == signal.SIG_DFL)")
    assert r.value_repr == "('kept', True)", r
    await assert_healthy(s, tracker)


async def test_a_stopped_state_and_a_detached_child_do_not_outlive_the_step(
    open_session: Opener, tracker: Tracker
) -> None:
    # control_timeout_s far above the test's own waits: had the host to wait for the
    # stopped state process to notice, the next step would lose the state
    s = await open_session(attack_config(step_timeout_s=20.0, control_timeout_s=3.0))
    await s.run("x = 'kept'")
    r = await s.run(
        "import os, signal\nif os.fork() == 0:\n    os.setsid()\n    while True:\n"
        "        pass\nos.kill(os.getppid(), signal.SIGSTOP)\nraise ValueError('rejected')"
    )
    assert r.error_kind == "exception"
    worker = s.worker
    assert worker is not None
    assert await wait_until(lambda: at_rest(worker), timeout=10.0)
    r = await s.run("x")
    assert r.value_repr == "'kept'" and not r.state_lost, r
    await assert_healthy(s, tracker)


async def test_rejected_candidates_leave_no_ipc_objects(
    open_session: Opener, tracker: Tracker
) -> None:
    s = await open_session(attack_config())
    code = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
res = {}
for name, call in [("shmget", lambda: libc.shmget(0, 4096, 0o1600)),
                   ("msgget", lambda: libc.msgget(0, 0o1600)),
                   ("semget", lambda: libc.semget(0, 1, 0o1600)),
                   ("mq_open", lambda: libc.mq_open(b"/q", 0o100 | 2, 0o600, None))]:
    rc = call()
    res[name] = (rc, ctypes.get_errno())
res
"""
    results = await s.try_candidates([code, code])
    await s.commit(1)
    for r in results:
        res = eval(r.value_repr or "{}")
        assert all(v == (-1, 1) for v in res.values()), res  # EPERM: none can be made
    await assert_healthy(s, tracker)


async def test_a_kept_duplicate_of_the_socket_is_dead_after_promotion(
    open_session: Opener, tracker: Tracker
) -> None:
    # the step keeps dups of its own socket (one at a high number, near the jail's
    # RLIMIT_NOFILE): once it is the state process they must not reach the control channel
    s = await open_session(attack_config())
    r = await s.run(
        "import os, stat\n"
        "def is_sock(fd):\n"
        "    try:\n        return stat.S_ISSOCK(os.fstat(fd).st_mode)\n"
        "    except OSError:\n        return False\n"
        "sock = [fd for fd in range(3, 64) if is_sock(fd)][0]\n"
        "kept = [os.dup(sock), os.dup2(sock, 250)]\n"
        "f = open('/tmp/own', 'w')\n"
        "kept"
    )
    assert r.ok, r.error
    r = await s.run("[is_sock(fd) for fd in kept], f.closed, f.write('x')")
    assert r.value_repr == "([False, False], False, 1)", r
    await assert_healthy(s, tracker)
