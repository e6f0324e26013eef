"""The sandbox on a real cgroup v2 kernel: runs only inside the test VM (make test-cgroup2).

The VM (tests/cgroup2/vm.py) sets DISTILLERY_CGROUP2_VM to its scenario: "container" (own
cgroup namespace, cgroup2 remounted: a pod on a v2 node), "service" (a delegated systemd-like
unit cgroup) or "root" (the hierarchy's root cgroup). Elsewhere these tests are skipped; the
same logic is unit-tested against fake trees in test_cgroup_setup.py on every `make test`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
from pathlib import Path

import pytest

from sandbox import cgroup_v2
from sandbox.cgroups import detect, prepare
from sandbox.config import SandboxConfig
from sandbox.errors import SandboxSetupError
from tests.sandbox.conftest import ExecutorFactory, Opener
from tests.sandbox.util import Tracker, assert_healthy, at_rest, attack_config, wait_until
from tests.sandbox.util import fast_config as _fast_config

SCENARIO = os.environ.get("DISTILLERY_CGROUP2_VM")
pytestmark = [
    pytest.mark.nsjail,
    pytest.mark.skipif(SCENARIO is None, reason="runs inside the cgroup v2 VM (make test-cgroup2)"),
]
CG = Path("/sys/fs/cgroup")
# software emulation on a busy host is 10-50x slower: generous waits (the limits are not)
SLOW = {"start_timeout_s": 600.0, "control_timeout_s": 120.0, "step_timeout_s": 120.0}


def fast_config(**kw: object) -> SandboxConfig:
    return _fast_config(**{**SLOW, **kw})


def vm_attack_config(**kw: object) -> SandboxConfig:
    return dataclasses.replace(attack_config(**kw), **SLOW)  # type: ignore[arg-type]


def _procs(group: Path) -> list[int]:
    return [int(p) for p in (group / "cgroup.procs").read_text().split()]


async def test_v2_is_detected_and_delegated(make_executor: ExecutorFactory) -> None:
    assert detect("/sys/fs/cgroup") == "v2"
    ex = make_executor(fast_config(cpu_ms_per_sec=500))
    setup = ex.cgroups
    assert setup is not None and setup.mode == "v2" and setup.delegation is not None
    d = setup.delegation
    assert "cgroup v2" in ex.stats()["limits"]
    for ctl in ("memory", "pids", "cpu"):
        assert ctl in (d.own / "cgroup.subtree_control").read_text().split()
        assert ctl in (d.jail_parent / "cgroup.subtree_control").read_text().split()
    if SCENARIO == "root":
        assert d.leaf is None and d.own == CG
    else:  # a non-root cgroup: the service left it for a leaf so that it can delegate
        assert d.leaf is not None and os.getpid() in _procs(d.leaf)
        assert _procs(d.own) == []
    if SCENARIO in ("container", "container-ro"):
        assert d.own == CG  # the container's own cgroup namespace root
    if SCENARIO == "container-ro":  # it mounted its own view read-write over the ro one
        assert not os.statvfs(CG).f_flag & os.ST_RDONLY


async def test_limits_land_in_the_jails_group(open_session: Opener, tracker: Tracker) -> None:
    s = await open_session(fast_config(memory_mb=200, pids=20, cpu_ms_per_sec=300))
    await s.run("x = 1")
    worker = s.worker
    assert worker is not None and worker.cgroups is not None
    group = worker.cgroups.dirs["memory"]
    assert (group / "memory.max").read_text().strip() == str(200 << 20)
    assert (group / "pids.max").read_text().strip() == "20"
    assert (group / "cpu.max").read_text().split() == ["300000", "1000000"]
    if (group / "memory.swap.max").exists():
        assert (group / "memory.swap.max").read_text().strip() == "0"
    # init, the state process and its spare at rest (the step's fork may take a moment
    # to exit), all in the jail's group
    assert await wait_until(lambda: at_rest(worker) and len(_procs(group)) == 3, 60), _procs(group)
    assert set(worker.process_ids()) == set(_procs(group))
    current, peak = worker.memory_bytes()
    assert 0 < current <= peak
    await assert_healthy(s, tracker)


async def test_memory_and_fork_bombs_are_told_apart_per_jail(
    open_session: Opener, tracker: Tracker
) -> None:
    a = await open_session(vm_attack_config(memory_mb=128, pids=16))
    b = await open_session(vm_attack_config(memory_mb=128, pids=16))
    await a.run("x = 'kept'")
    wa, wb = a.worker, b.worker
    assert wa is not None and wb is not None
    r = await a.run("blocks = []\nwhile True:\n    blocks.append(bytearray(8 * 1024 * 1024))")
    assert r.error_kind == "memory", r.error
    assert wa.oom_kills() >= 1 and wa.pids_limit_hits() == 0
    assert wb.oom_kills() == 0  # the counters are the jail's own
    r = await b.run("import os\nwhile True:\n    os.fork()")
    assert r.error_kind == "pids", r.error
    assert wb.pids_limit_hits() >= 1 and wb.oom_kills() == 0
    assert (await a.run("x")).value_repr == "'kept'"
    await assert_healthy(a, tracker)
    await assert_healthy(b, tracker)


async def test_no_group_is_left_after_close(make_executor: ExecutorFactory) -> None:
    ex = make_executor(fast_config())
    s = await ex.open_session({})
    await s.run("1")
    worker = s.worker
    assert worker is not None and worker.cgroups is not None
    group = worker.cgroups.dirs["pids"]
    assert group.is_dir()
    await s.close()
    assert await wait_until(lambda: not group.exists()), group
    assert ex.cgroups is not None and ex.cgroups.delegation is not None
    parent = ex.cgroups.delegation.jail_parent
    assert not [p.name for p in parent.iterdir() if p.name.startswith("NSJAIL")]


def test_stale_groups_are_removed_at_start() -> None:
    cfg = fast_config()
    d = prepare(cfg).delegation
    assert d is not None
    stale = d.jail_parent / f"NSJAIL.{2**22 + 11}"  # above pid_max: never alive
    stale.mkdir()
    prepare(cfg)
    assert not stale.exists()


def test_half_configured_v2_is_a_clear_error() -> None:
    d = prepare(fast_config()).delegation
    assert d is not None
    top = d.own / "half-a"
    inner = top / "half-b"
    top.mkdir()
    try:
        (top / "cgroup.subtree_control").write_text("+memory")  # pids not passed down
        inner.mkdir()
        rel = "/" + str(inner.relative_to(CG)) if inner != CG else "/"
        fake = Path("/tmp/fake-self-cgroup")
        fake.write_text(f"0::{rel}\n")
        with pytest.raises(SandboxSetupError, match=r"half-configured.*pids.*rlimit-only"):
            cgroup_v2.delegate(str(CG), "T", ("memory", "pids"), proc_file=str(fake))
        assert not (inner / "T").exists()
    finally:
        for g in (inner, top):
            if g.exists():
                g.rmdir()


def test_read_only_cgroupfs(tmp_path: Path) -> None:
    """A container mounts its own view over a read-only cgroupfs; elsewhere it is an error."""
    libc = ctypes.CDLL(None, use_errno=True)
    ro = tmp_path / "cgroup-ro"
    ro.mkdir()
    ms_bind, ms_remount, ms_rdonly = 4096, 32, 1
    assert libc.mount(str(CG).encode(), str(ro).encode(), None, ms_bind, None) == 0
    mounts = 1
    try:
        flags = ms_remount | ms_bind | ms_rdonly
        assert libc.mount(None, str(ro).encode(), None, flags, None) == 0
        config = fast_config(cgroup_root=str(ro), cgroup_parent="RO")
        if SCENARIO in ("container", "container-ro"):
            setup = prepare(config)
            mounts += 1
            assert not os.statvfs(ro).f_flag & os.ST_RDONLY
            assert setup.delegation is not None and setup.delegation.jail_parent == ro / "RO"
            (ro / "RO").rmdir()
        else:
            with pytest.raises(SandboxSetupError, match="not writable.*Ways out"):
                prepare(config)
    finally:
        for _ in range(mounts):
            libc.umount2(str(ro).encode(), 2)


async def test_jail_is_frozen_between_steps(open_session: Opener, tracker: Tracker) -> None:
    s = await open_session(fast_config())
    await s.run("x = 41")
    worker = s.worker
    assert worker is not None and worker.cgroups is not None
    freezer = worker.freezer
    assert freezer is not None and type(freezer).__name__ == "CgroupV2Freezer"
    group = worker.cgroups.dirs["pids"]
    assert await wait_until(lambda: bool(freezer.is_frozen()), 60)  # type: ignore[attr-defined]
    assert (group / "cgroup.freeze").read_text().strip() == "1"
    r = await s.run("x += 1\nx")  # thawed for the step, frozen again after it
    assert r.value_repr == "42", r
    assert await wait_until(lambda: bool(freezer.is_frozen()), 60)  # type: ignore[attr-defined]
    await s.close()
    assert await wait_until(lambda: not group.exists(), 60)  # a frozen jail still goes away
