"""The run's /tmp after a step holds only what the committed candidate saw (or, after a
discard or a failed step, what the state had before the step).

The state process snapshots /tmp before a step's first candidate; each candidate
snapshots its own view when its code ends; promotion puts the committed candidate's
view back, a discard the state's. Rejected candidates here write, overwrite, delete,
rename, make directories and unreadable ones, and keep descriptors open. Candidates run
one after another (fork_width=1) so that every rival's change lands after the committed
candidate's view was taken: candidates that run at the same time share /tmp until the
step ends (docs/sandbox.md).
"""

from __future__ import annotations

import ast

import pytest

from sandbox.session import SandboxSession
from tests.sandbox.conftest import Opener
from tests.sandbox.util import Tracker, assert_healthy, attack_config

pytestmark = pytest.mark.nsjail

SETUP = """
import os
os.makedirs('/tmp/d/e')
open('/tmp/base.txt', 'w').write('base')
open('/tmp/d/keep.txt', 'w').write('keep')
log = open('/tmp/log.txt', 'w')
log.write('a')
log.flush()
"""

WINNER = """
open('/tmp/win.txt', 'w').write('win')
log.write('b')
log.flush()
"""

LOSER = """
import os, time
open('/tmp/lose.txt', 'w').write('lose')
open('/tmp/base.txt', 'w').write('overwritten')
os.remove('/tmp/d/keep.txt')
os.rename('/tmp/d/e', '/tmp/moved')
os.makedirs('/tmp/new/sub')
open('/tmp/new/sub/f', 'w').write('x')
os.mkdir('/tmp/locked')
open('/tmp/locked/f', 'w').write('x')
os.chmod('/tmp/locked', 0o000)
os.symlink('/etc/passwd', '/tmp/link')
held = open('/tmp/held.txt', 'w')
held.write('unflushed')
log.write('L')
log.flush()
os.truncate('/tmp/log.txt', 0)
"""

LIST = """
import os
def tree():
    out = []
    for d, ds, fs in os.walk('/tmp'):
        for n in sorted(ds):
            out.append((os.path.relpath(os.path.join(d, n), '/tmp'), None))
        for n in sorted(fs):
            p = os.path.join(d, n)
            text = '-> ' + os.readlink(p) if os.path.islink(p) else open(p).read()
            out.append((os.path.relpath(p, '/tmp'), text))
    return sorted(out)
tree()
"""

BEFORE = [
    ("base.txt", "base"),
    ("d", None),
    ("d/e", None),
    ("d/keep.txt", "keep"),
    ("log.txt", "a"),
]


async def tree(s: SandboxSession) -> list[tuple[str, str | None]]:
    r = await s.run(LIST)
    assert r.ok, r.error
    return ast.literal_eval(r.value_repr or "[]")  # type: ignore[no-any-return]


async def started(open_session: Opener) -> SandboxSession:
    s = await open_session(attack_config(fork_width=1))
    r = await s.run(SETUP)
    assert r.ok, r.error
    assert await tree(s) == BEFORE
    return s


async def test_only_the_committed_candidates_files_survive(
    open_session: Opener, tracker: Tracker
) -> None:
    s = await started(open_session)
    # the second loser fails part-way (the first one's changes are in its way)
    results = await s.try_candidates([WINNER, LOSER, LOSER])
    assert results[0].ok and results[1].ok, results
    await s.commit(0)
    assert await tree(s) == sorted([*BEFORE[:-1], ("log.txt", "ab"), ("win.txt", "win")])
    # the state's open file still is /tmp/log.txt (same inode: the view was kept in place)
    r = await s.run("log.write('c')\nlog.flush()\nopen('/tmp/log.txt').read()")
    assert r.value_repr == "'abc'", r
    await assert_healthy(s, tracker)


async def test_a_committed_rival_brings_its_own_view(
    open_session: Opener, tracker: Tracker
) -> None:
    s = await started(open_session)
    # the loser runs first and is committed: what the winner did after it is undone
    results = await s.try_candidates([LOSER, WINNER])
    assert all(r.ok for r in results), results
    await s.commit(0)
    files = dict(await tree(s))
    assert (
        "win.txt" not in files
        and files["log.txt"] == ""
        and files["lose.txt"] == "lose"
        and "moved" in files
    )
    assert "d/keep.txt" not in files and files["link"] == "-> /etc/passwd"
    await assert_healthy(s, tracker)


async def test_discard_and_failed_steps_leave_tmp_as_before(
    open_session: Opener, tracker: Tracker
) -> None:
    s = await started(open_session)
    await s.try_candidates([WINNER, LOSER])
    await s.discard()
    assert await tree(s) == BEFORE
    # a step that dies (here: exits) after changing /tmp leaves no trace either
    r = await s.run(LOSER + "\nos._exit(3)")
    assert not r.ok
    assert await tree(s) == BEFORE
    await assert_healthy(s, tracker)
