"""The explicit rlimit-only fallback with real nsjail workers (runs on any host, no cgroups).

What it still enforces is checked here; what it gives up is stated by the setting's log line
and readiness detail (test_cgroup_setup.py checks that text).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sandbox.conftest import ExecutorFactory, Opener
from tests.sandbox.util import attack_config, fast_config

pytestmark = pytest.mark.nsjail


async def test_rlimit_only_runs_jailed_without_cgroups(
    make_executor: ExecutorFactory, tmp_path: Path
) -> None:
    # an empty cgroup root: auto would refuse it; rlimit-only never looks there
    ex = make_executor(fast_config(cgroup_mode="rlimit-only", cgroup_root=str(tmp_path)))
    assert ex.jailed and ex.cgroups is not None and ex.cgroups.mode == "rlimit-only"
    assert "rlimit-only" in ex.stats()["limits"]
    s = await ex.open_session({})
    try:
        r = await s.run("x = 6 * 7\nx")
        assert r.value_repr == "42"
        assert s.worker is not None and s.worker.cgroups is None
        assert list(tmp_path.iterdir()) == []
    finally:
        await s.close()


async def test_rlimit_only_memory_and_fork_bombs_fail_the_step(open_session: Opener) -> None:
    cfg = attack_config(cgroup_mode="rlimit-only", memory_mb=256, pids=16, step_timeout_s=10.0)
    s = await open_session(cfg)
    await s.run("x = 'kept'")
    r = await s.run("blocks = []\nwhile True:\n    blocks.append(bytearray(8 * 1024 * 1024))")
    assert r.error_kind == "memory", r.error  # RLIMIT_AS: a MemoryError inside the code
    r = await s.run("import os\nwhile True:\n    os.fork()")
    assert r.error_kind in ("exception", "pids"), r.error  # RLIMIT_NPROC: fork fails
    assert "BlockingIOError" in (r.error or "") or r.error_kind == "pids", r.error
    assert (await s.run("x")).value_repr == "'kept'"
