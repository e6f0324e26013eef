"""Tenant against tenant: per-jail uids, per-uid kernel limits, host-wide side channels,
what the jail can import.

The kernel counts several limits per uid (descriptors in flight over unix sockets,
inotify instances, ...). Every live jail runs as its own uid, so one tenant that uses
them all up breaks only itself.
"""

from __future__ import annotations

import asyncio

import pytest

from sandbox.errors import SandboxSetupError
from sandbox.jail import hidden_package_dirs
from tests.sandbox.conftest import ExecutorFactory, Opener
from tests.sandbox.util import Tracker, assert_healthy, attack_config, fast_config

pytestmark = pytest.mark.nsjail

# Holds as many descriptors in flight over its own socketpair as the kernel allows for the
# uid (SCM_RIGHTS, at most 253 per message) and as many inotify instances as it may have;
# both stay held by the state (committed) while the other tenant works.
SATURATE = """
import array, ctypes, errno, os, socket
held_a, held_b = socket.socketpair()
held_a.setblocking(False)
fd = os.open("/dev/null", os.O_RDONLY)
inflight, why = 0, None
while inflight < 100_000:
    try:
        held_a.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                 array.array("i", [fd] * 200).tobytes())])
        inflight += 200
    except OSError as e:
        why = errno.errorcode.get(e.errno, e.errno)
        break
libc = ctypes.CDLL(None, use_errno=True)
inotify = []
while len(inotify) < 10_000:
    r = libc.inotify_init1(0)
    if r < 0:
        inotify_why = errno.errorcode.get(ctypes.get_errno())
        break
    inotify.append(r)
(inflight, why, len(inotify), inotify_why)
"""

OTHER_TENANT = """
import array, ctypes, os, socket
libc = ctypes.CDLL(None, use_errno=True)
ino = libc.inotify_init1(0)
a, b = socket.socketpair()
a.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0]).tobytes())])
msg, anc, _, _ = b.recvmsg(1, socket.CMSG_SPACE(4))
(total + 1, ino >= 0, len(anc))
"""


async def test_each_live_jail_has_its_own_uid(make_executor: ExecutorFactory) -> None:
    ex = make_executor(attack_config())
    sessions = await asyncio.gather(*(ex.open_session({}) for _ in range(3)))
    uids = []
    for s in sessions:
        r = await s.run("import os\n(os.getuid(), os.getgid(), os.geteuid())")
        assert r.ok, r.error
        uid, gid, euid = eval(r.value_repr or "()")
        assert uid == gid == euid == s.worker.uid  # type: ignore[union-attr]
        uids.append(uid)
    cfg = ex.config
    assert len(set(uids)) == 3
    assert all(cfg.uid_base <= u < cfg.uid_base + cfg.uid_count for u in uids)
    assert ex.uids is not None and set(uids) <= ex.uids.held()
    for s in sessions:
        await s.close()
    assert not set(uids) & ex.uids.held()  # released once the jail is gone


async def test_saturating_per_uid_limits_leaves_other_tenants_alone(
    open_session: Opener, tracker: Tracker
) -> None:
    hog = await open_session(attack_config(step_timeout_s=30.0))
    other = await open_session(attack_config(step_timeout_s=30.0))
    await other.run("total = 41")
    r = await hog.run(SATURATE)
    assert r.ok, r.error
    inflight, why, inotify, inotify_why = eval(r.value_repr or "()")
    assert why == "ETOOMANYREFS" and inflight >= 200  # the uid's in-flight limit was hit
    assert inotify_why == "EMFILE" and inotify >= 1  # and every inotify instance it may have
    # while the hog holds them (its committed state keeps them), the other tenant works:
    # a forked step (its socket travels to the host by SCM_RIGHTS), descriptors in flight,
    # an inotify instance, N candidates
    for _ in range(3):
        r = await other.run(OTHER_TENANT)
        assert r.ok and not r.state_lost, r.error
        assert r.value_repr == "(42, True, 1)"
    results = await other.try_candidates([f"total + {i}" for i in range(4)])
    assert [x.value_repr for x in results] == ["41", "42", "43", "44"]
    await other.commit(0)
    assert (await other.run("total")).value_repr == "41"
    await assert_healthy(other, tracker)
    await assert_healthy(hog, tracker)


async def test_uid_range_exhaustion_is_a_clear_error(make_executor: ExecutorFactory) -> None:
    ex = make_executor(fast_config(uid_base=190_000, uid_count=1))
    first = await ex.open_session({})
    with pytest.raises(SandboxSetupError, match="uid_count"):
        await ex.open_session({})
    await first.close()
    second = await ex.open_session({})  # the uid came back once its jail was gone
    assert (await second.run("1 + 1")).value_repr == "2"
    await second.close()


async def test_no_host_wide_system_information(open_session: Opener, tracker: Tracker) -> None:
    # sysinfo() would show host uptime, load, free memory and the number of processes of
    # every tenant; it is refused (EPERM). os.cpu_count() still works (sched_getaffinity).
    s = await open_session(attack_config())
    r = await s.run(
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "buf = ctypes.create_string_buffer(256)\n"
        "(libc.sysinfo(buf), ctypes.get_errno(), os.cpu_count() >= 1)"
    )
    assert r.value_repr == "(-1, 1, True)", r
    await assert_healthy(s, tracker)


async def test_only_allowed_packages_are_importable(
    open_session: Opener, make_executor: ExecutorFactory, tracker: Tracker
) -> None:
    s = await open_session(attack_config(step_timeout_s=60.0, cpu_s=30))  # sympy: slow
    hidden = hidden_package_dirs(make_executor(attack_config()).layout.prefixes)
    assert hidden  # the base interpreter has a site-packages here
    code = f"""
import os, sys
res = {{}}
for d in {hidden!r}:
    res[d] = os.listdir(d) if os.path.isdir(d) else "missing"
    sys.path.append(d)
for name in ("pip", "setuptools", "yaml", "requests"):
    try:
        __import__(name)
        res[name] = "imported"
    except ImportError:
        res[name] = "no"
import numpy, sympy
res["allowed"] = (numpy.__name__, sympy.__name__)
res
"""
    r = await s.run(code)
    assert r.ok, r.error
    res = eval(r.value_repr or "{}")
    assert res.pop("allowed") == ("numpy", "sympy")
    assert all(v in ([], "no") for v in res.values()), res
    await assert_healthy(s, tracker)
