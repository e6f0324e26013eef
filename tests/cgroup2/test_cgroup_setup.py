"""Detection and setup of the jails' limits against fake cgroup trees (cheap; every make test).

A fake tree is plain directories and files in tmp_path. For cgroup v2 a small stand-in for
the kernel's rules replaces cgroup_v2._write: writing a pid to cgroup.procs moves it between
groups, and enabling controllers in cgroup.subtree_control fails with EBUSY while a non-root
group has processes, or EINVAL for a controller its parent did not pass down. The same code
runs against the real kernel in the VM (test_in_vm.py, make test-cgroup2).
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from sandbox import cgroup_v2, cgroups
from sandbox.cgroups import detect, prepare
from sandbox.config import SandboxConfig
from sandbox.errors import SandboxSetupError
from tests.sandbox.util import fast_config

ME = os.getpid()


class FakeKernel:
    def __init__(self, root: Path) -> None:
        self.root = root

    def groups(self) -> list[Path]:
        return [p.parent for p in self.root.rglob("cgroup.procs")]

    def available(self, group: Path) -> list[str]:
        own = group / "cgroup.controllers"
        if own.exists():
            return own.read_text().split()
        return (group.parent / "cgroup.subtree_control").read_text().split()

    def write(self, path: Path, value: str) -> None:
        group, name = path.parent, path.name
        if name == "cgroup.procs":
            if not group.is_dir():
                raise OSError(errno.ENOENT, "no such group")
            pid = value.strip()
            for g in self.groups():
                procs = (g / "cgroup.procs").read_text().split()
                if pid in procs:
                    procs.remove(pid)
                    (g / "cgroup.procs").write_text(" ".join(procs))
            old = (group / "cgroup.procs").read_text().split() if path.exists() else []
            path.write_text(" ".join([*old, pid]))
        elif name == "cgroup.subtree_control":
            is_root = not (group / "cgroup.type").exists()
            procs = (group / "cgroup.procs").read_text().split()
            if procs and not is_root:
                raise OSError(errno.EBUSY, "Device or resource busy")
            enabled = path.read_text().split() if path.exists() else []
            for word in value.split():
                ctl = word[1:]
                if ctl not in self.available(group):
                    raise OSError(errno.EINVAL, "Invalid argument")
                if ctl not in enabled:
                    enabled.append(ctl)
            path.write_text(" ".join(enabled))
        else:
            path.write_text(value)


def make_group(
    path: Path, *, procs: tuple[int, ...] = (), root: bool = False, controllers: str | None = None
) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cgroup.procs").write_text(" ".join(map(str, procs)))
    (path / "cgroup.subtree_control").write_text("")
    if controllers is not None:
        (path / "cgroup.controllers").write_text(controllers)
    if not root:
        (path / "cgroup.type").write_text("domain")
    return path


@pytest.fixture
def v2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A container's view: the namespace root is a non-root cgroup holding this process."""
    root = make_group(tmp_path / "cg", procs=(1, ME), controllers="cpuset cpu io memory pids")
    kernel = FakeKernel(root)
    monkeypatch.setattr(cgroup_v2, "_write", lambda p, v: kernel.write(p, v))
    real_mkdir = Path.mkdir

    def mkdir(self: Path, mode: int = 0o777, parents: bool = False, exist_ok: bool = False) -> None:
        real_mkdir(self, mode, parents, exist_ok)
        if self.is_relative_to(root) and not (self / "cgroup.procs").exists():
            # the kernel fills a new group with its files; its controllers are what the
            # parent enabled for children at that moment
            for name in ("cgroup.procs", "cgroup.subtree_control"):
                (self / name).write_text("")
            (self / "cgroup.type").write_text("domain")
            parent_ctl = self.parent / "cgroup.subtree_control"
            ctl = parent_ctl.read_text() if parent_ctl.exists() else ""
            (self / "cgroup.controllers").write_text(ctl)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    proc = tmp_path / "self-cgroup"
    proc.write_text("0::/\n")
    monkeypatch.setattr(cgroup_v2, "PROC_SELF_CGROUP", str(proc))
    return root


def cfg(root: Path, **kw: object) -> SandboxConfig:
    return fast_config(cgroup_root=str(root), **kw)


def words(path: Path) -> list[str]:
    return path.read_text().split()


def test_detect(tmp_path: Path) -> None:
    assert detect(str(tmp_path)) == "none"
    make_group(tmp_path / "memory", root=True)
    assert detect(str(tmp_path)) == "v1"
    make_group(tmp_path / "unified", root=True, controllers="")  # hybrid: controllers on v1
    assert detect(str(tmp_path)) == "v1"
    (tmp_path / "cgroup.controllers").write_text("memory pids")
    assert detect(str(tmp_path)) == "v2"


def test_no_hierarchy_names_what_is_missing_and_the_ways_out(tmp_path: Path) -> None:
    with pytest.raises(SandboxSetupError) as e:
        prepare(cfg(tmp_path))
    msg = str(e.value)
    for part in ("not a cgroup v1 hierarchy", "not a cgroup v2 one", "Delegate=yes",
                 "mkdir -p", "cgroup_mode='rlimit-only'"):
        assert part in msg, msg


def test_container_delegation(v2: Path) -> None:
    setup = prepare(cfg(v2, cpu_ms_per_sec=250))
    d = setup.delegation
    assert setup.mode == "v2" and d is not None
    leaf = v2 / cgroup_v2.SERVICE_LEAF
    assert d.own == v2 and d.leaf == leaf and d.jail_parent == v2 / "NSJAIL"
    assert words(v2 / "cgroup.procs") == [] and words(leaf / "cgroup.procs") == ["1", str(ME)]
    assert words(v2 / "cgroup.subtree_control") == ["memory", "pids", "cpu"]
    assert words(d.jail_parent / "cgroup.subtree_control") == ["memory", "pids", "cpu"]
    args = setup.nsjail_args(cfg(v2, cpu_ms_per_sec=250, memory_mb=100, pids=9))
    assert args[:3] == ["--use_cgroupv2", "--cgroupv2_mount", str(d.jail_parent)]
    assert "--cgroup_mem_max" in args and args[args.index("--cgroup_mem_max") + 1] == str(100 << 20)
    assert args[args.index("--cgroup_pids_max") + 1] == "9"
    assert args[args.index("--cgroup_cpu_ms_per_sec") + 1] == "250"
    assert "--cgroup_mem_parent" not in args and "--cgroup_mem_swap_max" not in args
    assert "cgroup v2" in setup.describe() and str(leaf) in setup.describe()


def test_preparing_again_reuses_the_leaf_and_removes_stale_groups(
    v2: Path, tmp_path: Path
) -> None:
    prepare(cfg(v2))
    (v2 / "NSJAIL" / "memory.swap.max").write_text("max")
    (tmp_path / "self-cgroup").write_text(f"0::/{cgroup_v2.SERVICE_LEAF}\n")  # moved there
    dead = 2**22 + 5  # above pid_max: never alive
    for name in (f"NSJAIL.{dead}", f"NSJAIL_SELF.{dead}", f"NSJAIL.{ME}"):
        os.mkdir(v2 / "NSJAIL" / name)  # empty, as a real group whose files rmdir ignores
    setup = prepare(cfg(v2))
    assert setup.delegation is not None and setup.delegation.own == v2
    assert not (v2 / cgroup_v2.SERVICE_LEAF / cgroup_v2.SERVICE_LEAF).exists()
    left = sorted(p.name for p in (v2 / "NSJAIL").iterdir() if p.name.startswith("NSJAIL"))
    assert left == [f"NSJAIL.{ME}"]
    assert setup.swap and setup.nsjail_args(cfg(v2))[-2:] == ["--cgroup_mem_swap_max", "0"]


def test_hierarchy_root_needs_no_leaf(v2: Path) -> None:
    (v2 / "cgroup.type").unlink()  # the real root cgroup: processes and controllers may mix
    d = prepare(cfg(v2)).delegation
    assert d is not None and d.leaf is None
    assert words(v2 / "cgroup.procs") == ["1", str(ME)]
    assert not (v2 / cgroup_v2.SERVICE_LEAF).exists()


def test_host_service_cgroup(v2: Path, tmp_path: Path) -> None:
    (v2 / "cgroup.type").unlink()
    (v2 / "cgroup.procs").write_text("1")
    (v2 / "cgroup.subtree_control").write_text("memory pids cpu")
    unit = make_group(v2 / "system.slice" / "svc.service", procs=(ME,), controllers="memory pids")
    (v2 / "system.slice" / "cgroup.subtree_control").write_text("memory pids cpu")
    (tmp_path / "self-cgroup").write_text("0::/system.slice/svc.service\n")
    d = prepare(cfg(v2)).delegation
    assert d is not None and d.own == unit and d.jail_parent == unit / "NSJAIL"
    assert words(unit / cgroup_v2.SERVICE_LEAF / "cgroup.procs") == [str(ME)]
    assert words(v2 / "cgroup.procs") == ["1"]  # nothing outside the unit was touched


def test_half_configured_v2_names_the_missing_controller(v2: Path, tmp_path: Path) -> None:
    (v2 / "cgroup.controllers").write_text("cpu memory")
    with pytest.raises(SandboxSetupError, match=r"half-configured.*pids.*Delegate=yes.*rlimit"):
        prepare(cfg(v2))
    assert words(v2 / "cgroup.procs") == ["1", str(ME)]  # refused before moving anything
    # cpu is only needed with a CPU throttle
    (v2 / "cgroup.controllers").write_text("memory pids")
    prepare(cfg(v2))
    (tmp_path / "self-cgroup").write_text(f"0::/{cgroup_v2.SERVICE_LEAF}\n")  # moved there
    with pytest.raises(SandboxSetupError, match=r"controller\(s\) cpu are not delegated"):
        prepare(cfg(v2, cpu_ms_per_sec=100))


def test_process_in_the_jail_parent_is_refused(v2: Path) -> None:
    make_group(v2 / "BUSY", procs=(ME + 1,))
    with pytest.raises(SandboxSetupError, match="has processes of its own"):
        prepare(cfg(v2, cgroup_parent="BUSY"))


def test_group_outside_the_namespace_is_refused(v2: Path, tmp_path: Path) -> None:
    (tmp_path / "self-cgroup").write_text("0::/../elsewhere\n")
    with pytest.raises(SandboxSetupError, match="outside its cgroup namespace"):
        prepare(cfg(v2))
    (tmp_path / "self-cgroup").write_text("0::/not-here\n")
    with pytest.raises(SandboxSetupError, match="not visible under"):
        prepare(cfg(v2))
    (tmp_path / "self-cgroup").write_text("0::/\n")
    (v2 / "cgroup.procs").write_text("1")  # the node's hierarchy as a hostPath: not our cgroup
    with pytest.raises(SandboxSetupError, match="not listed in.*hostPath.*hostCgroupfs=false"):
        prepare(cfg(v2))
    (tmp_path / "self-cgroup").write_text("12:pids:/\n")
    with pytest.raises(SandboxSetupError, match="no cgroup v2 entry"):
        prepare(cfg(v2))


def test_explicit_modes_must_match_the_host(v2: Path, tmp_path: Path) -> None:
    with pytest.raises(SandboxSetupError, match="cgroup v2: set cgroup_mode to auto or v2"):
        prepare(cfg(v2, cgroup_mode="v1"))
    v1 = tmp_path / "v1"
    make_group(v1 / "memory", root=True)
    with pytest.raises(SandboxSetupError, match="not a cgroup v2 mount"):
        prepare(cfg(v1, cgroup_mode="v2"))
    with pytest.raises(ValueError, match="cgroup_mode"):
        cfg(v1, cgroup_mode="v3").validate()


def test_v1_setup_and_args(tmp_path: Path) -> None:
    for ctl in ("memory", "pids"):
        make_group(tmp_path / ctl, root=True)
    setup = prepare(cfg(tmp_path))
    assert setup.mode == "v1" and (tmp_path / "pids" / "NSJAIL").is_dir()
    args = setup.nsjail_args(cfg(tmp_path))
    assert "--use_cgroupv2" not in args and args[args.index("--cgroup_pids_parent") + 1] == "NSJAIL"
    assert args[args.index("--cgroup_mem_mount") + 1] == f"{tmp_path}/memory"
    assert "cgroup v1" in setup.describe()


def test_rlimit_only_is_explicit_and_says_what_it_loses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="sandbox"):
        setup = prepare(cfg(tmp_path, cgroup_mode="rlimit-only", memory_mb=300, pids=12))
    assert setup.mode == "rlimit-only" and setup.jail(123) is None
    warning = " ".join(r.message for r in caplog.records)
    assert "RLIMIT-ONLY" in warning and "No longer guaranteed" in warning
    assert "RLIMIT_AS=300 MB" in warning and "not per jail" in warning
    args = setup.nsjail_args(cfg(tmp_path, cgroup_mode="rlimit-only", memory_mb=300, pids=12))
    assert args == ["--rlimit_as", "300", "--rlimit_nproc", "12"]
    assert "rlimit-only" in setup.describe() and "no per-jail" in setup.describe()


def test_v2_counters_read_the_jails_files(tmp_path: Path) -> None:
    jail = cgroup_v2.JailCgroupsV2(tmp_path, 77)
    assert jail.dir == tmp_path / "NSJAIL.77" and set(jail.dirs.values()) == {jail.dir}
    assert (jail.oom_kills(), jail.pids_limit_hits(), jail.memory_usage()) == (0, 0, 0)
    jail.dir.mkdir()
    (jail.dir / "memory.events").write_text("low 0\nhigh 0\nmax 9\noom 2\noom_kill 2\n")
    (jail.dir / "pids.events").write_text("max 5\n")
    (jail.dir / "memory.current").write_text("4096\n")
    (jail.dir / "cgroup.procs").write_text("")
    assert (jail.oom_kills(), jail.pids_limit_hits()) == (2, 5)
    assert jail.memory_peak() == 4096  # no memory.peak before Linux 5.19: the current usage
    (jail.dir / "memory.peak").write_text("8192\n")
    assert jail.memory_peak() == 8192
    for f in jail.dir.iterdir():
        f.unlink()
    assert jail.cleanup() and not jail.dir.exists()


def test_setup_is_shared_with_the_command_line_and_the_counters(v2: Path) -> None:
    config = cfg(v2)
    prepare(config)
    assert cgroups.nsjail_args(config)[:2] == ["--use_cgroupv2", "--cgroupv2_mount"]
    counters = cgroups.jail_cgroups(config, 42)
    assert isinstance(counters, cgroup_v2.JailCgroupsV2)
    assert counters.dir == v2 / "NSJAIL" / "NSJAIL.42"


def test_v2_freezer_writes_the_jails_cgroup_freeze(tmp_path: Path) -> None:
    jail = cgroup_v2.JailCgroupsV2(tmp_path, 5)
    jail.dir.mkdir()
    assert jail.freezer() is None  # a kernel without cgroup.freeze (before 5.2)
    (jail.dir / "cgroup.freeze").write_text("0")
    (jail.dir / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    freezer = jail.freezer()
    assert freezer is not None
    freezer.attach([1, 2])  # the jail's processes are in its group already
    freezer.freeze()
    assert (jail.dir / "cgroup.freeze").read_text() == "1" and not freezer.is_frozen()
    (jail.dir / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    assert freezer.is_frozen()
    freezer.thaw()
    assert (jail.dir / "cgroup.freeze").read_text() == "0"
    freezer.freeze()
    freezer.remove()
    assert (jail.dir / "cgroup.freeze").read_text() == "0"
