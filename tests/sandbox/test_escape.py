"""Escape attempts: each must fail, and the host and the session must stay healthy.

The allow-list is opened up for these tests (see util.ATTACK_IMPORTS): it is a policy
that determined code can bypass (test_allowlist_is_not_the_boundary), so the jail must
hold on its own.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.sandbox.conftest import Opener
from tests.sandbox.util import Tracker, assert_healthy, attack_config

pytestmark = pytest.mark.nsjail

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def host_server() -> AsyncIterator[tuple[int, list[str]]]:
    """A TCP server on the host's 127.0.0.1 that records every connection it gets."""
    seen: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(str(writer.get_extra_info("peername")))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, seen
    finally:
        server.close()
        await server.wait_closed()


async def test_no_network(open_session: Opener, tracker: Tracker,
                          host_server: tuple[int, list[str]]) -> None:
    port, seen = host_server
    s = await open_session(attack_config())
    code = f"""
import socket
out = {{}}
for name, addr in [("host_lo", ("127.0.0.1", {port})), ("outside", ("1.1.1.1", 53)),
                   ("outside_http", ("93.184.215.14", 80))]:
    try:
        c = socket.socket()
        c.settimeout(2)
        c.connect(addr)
        out[name] = "connected"
    except OSError as e:
        out[name] = e.errno
try:
    socket.getaddrinfo("example.com", 80)
    out["dns"] = "resolved"
except OSError as e:
    out["dns"] = type(e).__name__
try:
    out["interfaces"] = [n for _, n in socket.if_nameindex()]
except OSError as e:
    out["interfaces"] = e.errno
out
"""
    r = await s.run(code)
    assert r.ok, r.error
    out = eval(r.value_repr or "{}")
    # no IP socket can even be made (seccomp: EAFNOSUPPORT), so nothing connects
    assert out["host_lo"] == out["outside"] == out["outside_http"] == 97
    assert out["dns"] == "gaierror"
    assert out["interfaces"] == 97  # netlink is refused too
    assert seen == []
    await assert_healthy(s, tracker)


async def test_only_unix_sockets(open_session: Opener, tracker: Tracker) -> None:
    # the network namespace does not cover every family (AF_VSOCK reaches the hypervisor
    # side); seccomp allows AF_UNIX only, for socket() and socketpair() alike
    s = await open_session(attack_config())
    code = """
import socket
res = {}
for fam in range(0, 46):
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW, socket.SOCK_SEQPACKET):
        try:
            socket.socket(fam, kind).close()
            res.setdefault(fam, "made")
        except OSError as e:
            res.setdefault(fam, e.errno) if res.get(fam) != "made" else None
for fam in (socket.AF_INET, socket.AF_VSOCK):
    try:
        socket.socketpair(fam, socket.SOCK_STREAM)
        res[f"pair{fam}"] = "made"
    except OSError as e:
        res[f"pair{fam}"] = e.errno
a, b = socket.socketpair()
a.sendall(b"ok")
res["unix_pair"] = b.recv(2).decode()
res
"""
    r = await s.run(code)
    assert r.ok, r.error
    res = eval(r.value_repr or "{}")
    made = sorted(k for k, v in res.items() if v == "made")
    assert made == [socket.AF_UNIX], res
    assert res[socket.AF_VSOCK] == res[socket.AF_INET] == res[socket.AF_INET6] == 97
    assert res[f"pair{socket.AF_INET}"] == res[f"pair{socket.AF_VSOCK}"] == 97
    assert res["unix_pair"] == "ok"
    await assert_healthy(s, tracker)


async def test_cannot_write_outside_tmpfs(open_session: Opener, tracker: Tracker) -> None:
    s = await open_session(attack_config())
    marker = f"distillery-jail-{uuid.uuid4().hex}"
    code = f"""
import os
res = {{}}
for path in ["/{marker}", "/usr/lib/{marker}", "/opt/site/{marker}", "/opt/site/numpy/{marker}",
             "/opt/distillery/worker.py", "/dev/{marker}", "/root/{marker}"]:
    try:
        with open(path, "w") as f:
            f.write("x")
        res[path] = "written"
    except OSError as e:
        res[path] = e.errno
with open("/tmp/{marker}", "w") as f:
    f.write("ok")
res["cwd"] = os.getcwd()
res
"""
    r = await s.run(code)
    assert r.ok, r.error
    res = eval(r.value_repr or "{}")
    assert res.pop("cwd") == "/tmp"
    assert all(v != "written" for v in res.values()), res
    # the jail's /tmp is private: nothing appeared on the host
    assert not Path("/tmp", marker).exists() and not Path("/", marker).exists()
    await assert_healthy(s, tracker)


async def test_cannot_read_host_secrets(open_session: Opener, tracker: Tracker,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTILLERY_TEST_SECRET", "hunter2")
    s = await open_session(attack_config())
    code = f"""
import os
res = {{"env": dict(os.environ), "root": sorted(os.listdir("/"))}}
for path in ["/etc/shadow", "/etc/passwd", "/proc/1/environ", "/proc/self/status",
             "{REPO / 'pyproject.toml'}", "{REPO / '.venv' / 'pyvenv.cfg'}", "/root/.bash_history",
             "/sys/kernel/notes", "/home"]:
    try:
        with open(path, "rb") as f:
            f.read(10)
        res[path] = "read"
    except OSError as e:
        res[path] = type(e).__name__
res["uid"] = (os.getuid(), os.geteuid(), os.getgid(), os.getgroups())
res["work"] = os.path.exists("{REPO}")
res
"""
    r = await s.run(code)
    assert r.ok, r.error
    res = eval(r.value_repr or "{}")
    assert "hunter2" not in repr(res["env"]) and "DISTILLERY_TEST_SECRET" not in res["env"]
    assert set(res["env"]) <= {"HOME", "TMPDIR", "LC_ALL", "LC_CTYPE", "OPENBLAS_NUM_THREADS",
                               "OMP_NUM_THREADS", "MKL_NUM_THREADS"}
    assert res["root"] == ["dev", "lib", "lib64", "opt", "root", "tmp", "usr"]
    worker = s.worker
    assert worker is not None and worker.uid is not None  # root here: the jail's own uid
    cfg = attack_config()
    assert cfg.uid_base <= worker.uid < cfg.uid_base + cfg.uid_count
    assert res["uid"] == (worker.uid, worker.uid, worker.uid, [])
    assert res["work"] is False
    for key, value in res.items():
        if key.startswith("/"):
            assert value in ("FileNotFoundError", "PermissionError"), (key, value)
    await assert_healthy(s, tracker)


async def test_no_privileges_and_seccomp(open_session: Opener, tracker: Tracker) -> None:
    s = await open_session(attack_config())
    code = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
res = {}
for name, call in [("unshare_user", lambda: libc.unshare(0x10000000)),
                   ("unshare_net", lambda: libc.unshare(0x40000000)),
                   ("mount", lambda: libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)),
                   ("ptrace_init", lambda: libc.ptrace(16, 1, 0, 0)),
                   ("chroot", lambda: libc.chroot(b"/tmp"))]:
    rc = call()
    res[name] = (rc, ctypes.get_errno())
try:
    os.setuid(0)
    res["setuid"] = "root"
except PermissionError:
    res["setuid"] = "denied"
res
"""
    r = await s.run(code)
    assert r.ok, r.error
    res = eval(r.value_repr or "{}")
    assert res.pop("setuid") == "denied"
    for name, (rc, err) in res.items():
        assert rc == -1 and err in (1, 13), (name, rc, err)  # EPERM / EACCES
    await assert_healthy(s, tracker)


async def test_cannot_signal_the_host(open_session: Opener, tracker: Tracker) -> None:
    s = await open_session(attack_config())
    worker = s.worker
    assert worker is not None
    host_pids = [os.getpid(), worker.popen.pid, *worker.process_ids()]
    await s.run("x = 'kept'")
    code = f"""
import ctypes, os, signal
libc = ctypes.CDLL(None, use_errno=True)
res = {{}}
for pid in {host_pids}:
    try:
        os.kill(pid, signal.SIGKILL)
        res[pid] = "sent"
    except OSError as e:
        res[pid] = type(e).__name__
res["ctypes"] = libc.kill({os.getpid()}, 9), ctypes.get_errno()
res["ppid"] = os.getppid()
try:
    os.kill(1, signal.SIGKILL)   # the jail's init: immune from inside
    res["init"] = "sent"
except OSError as e:
    res["init"] = type(e).__name__
res
"""
    r = await s.run(code)
    assert r.ok, r.error
    res = eval(r.value_repr or "{}")
    # host pids do not exist in the jail's pid namespace (tiny ones could be jail pids)
    for pid in host_pids:
        if pid > 64:
            assert res[pid] == "ProcessLookupError", res
    assert res["ctypes"] == (-1, 3)  # ESRCH
    assert res["init"] in ("sent", "PermissionError")  # delivered or not: init ignores it
    assert worker.popen.poll() is None  # nsjail is alive
    assert (await s.run("x")).value_repr == "'kept'"
    await assert_healthy(s, tracker)


async def test_killing_everything_in_the_jail_keeps_the_state(open_session: Opener,
                                                              tracker: Tracker) -> None:
    s = await open_session(attack_config())
    await s.run("x = 1")
    # kill(-1) reaches every jail process but init and the caller: the state process dies,
    # but the candidate survives and becomes the state.
    r = await s.run("import os, signal\nos.kill(-1, signal.SIGKILL)\nx += 1")
    assert r.ok, r.error
    r = await s.run("x")
    assert r.value_repr == "2" and not r.state_lost
    await assert_healthy(s, tracker)


async def test_symlink_tricks_in_tmpfs(open_session: Opener, tracker: Tracker) -> None:
    s = await open_session(attack_config())
    code = f"""
import os
res = {{}}
os.symlink("/etc/shadow", "/tmp/shadow")
os.symlink("{REPO}", "/tmp/repo")
os.symlink("/", "/tmp/root")
os.symlink("/usr/lib", "/tmp/lib")
for name, action in [
    ("shadow", lambda: open("/tmp/shadow").read()),
    ("repo", lambda: os.listdir("/tmp/repo")),
    ("write_through_lib", lambda: open("/tmp/lib/x", "w").write("x")),
    ("hardlink_lib", lambda: os.link("/usr/lib/os-release", "/tmp/h")),
    ("dotdot", lambda: open("/tmp/../../etc/passwd").read()),
]:
    try:
        action()
        res[name] = "ok"
    except OSError as e:
        res[name] = type(e).__name__
res["root_via_link"] = sorted(os.listdir("/tmp/root"))
res
"""
    r = await s.run(code)
    assert r.ok, r.error
    res = eval(r.value_repr or "{}")
    assert res.pop("root_via_link") == ["dev", "lib", "lib64", "opt", "root", "tmp", "usr"]
    assert all(v != "ok" for v in res.values()), res
    await assert_healthy(s, tracker)


async def test_forbidden_imports(open_session: Opener, tracker: Tracker) -> None:
    s = await open_session()  # the default allow-list
    for code in ["import os", "import subprocess", "from os import path", "__import__('socket')",
                 "import importlib", "import numpy.testing as t\nimport ctypes",
                 "from . import x"]:
        r = await s.run(code)
        assert r.error_kind == "forbidden_import", (code, r.error)
        assert "is not allowed" in (r.error or "")
    assert (await s.run("import collections.abc, numpy.linalg\n1")).ok
    await assert_healthy(s, tracker)


async def test_allowlist_is_not_the_boundary(open_session: Opener, tracker: Tracker) -> None:
    # `random` keeps a reference to `os`: the allow-list alone stops honest code only.
    # The jail is what holds.
    s = await open_session()
    r = await s.run(
        "import random\nos = random._os\n"
        "try:\n    open('/etc/shadow').read()\n    res = 'read'\n"
        "except OSError as e:\n    res = type(e).__name__\n(os.getuid(), res)"
    )
    worker = s.worker
    assert worker is not None
    assert r.value_repr == f"({worker.uid}, 'FileNotFoundError')", r.error
    await assert_healthy(s, tracker)


async def test_subprocess_is_confined(open_session: Opener, tracker: Tracker) -> None:
    s = await open_session(attack_config())
    r = await s.run(
        "import subprocess\n"
        "try:\n    subprocess.run(['/bin/sh', '-c', 'id'], capture_output=True)\n    res = 'ran'\n"
        "except OSError as e:\n    res = type(e).__name__\nres"
    )
    assert r.value_repr == "'FileNotFoundError'", r  # no shell, no /bin in the jail
    await assert_healthy(s, tracker)


async def test_escaping_via_unix_socket_to_host_paths_fails(open_session: Opener,
                                                            tracker: Tracker) -> None:
    # A unix socket bound on the host is unreachable: its path does not exist in the jail.
    path = f"/tmp/distillery-{uuid.uuid4().hex[:8]}.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()
    try:
        s = await open_session(attack_config())
        r = await s.run(
            f"import socket\nc = socket.socket(socket.AF_UNIX)\n"
            f"try:\n    c.connect({path!r})\n    res = 'connected'\n"
            f"except OSError as e:\n    res = type(e).__name__\nres"
        )
        assert r.value_repr == "'FileNotFoundError'"
    finally:
        server.close()
        os.unlink(path)
    await assert_healthy(s, tracker)


# x86-64 machine code: syscall(nr, 40 /* AF_VSOCK */, 1, 0) via `syscall` or `int 0x80`
X32_SOCKET = "b8290000 40bf2800 0000be01 000000ba 00000000 0f05c3"
I386_SOCKET = "53b86701 0000bb28 000000b9 01000000 ba000000 00cd805b c3"
RUN_MACHINE_CODE = """
import ctypes, mmap
m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
m.write(bytes.fromhex({hex!r}.replace(" ", "")))
fn = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))
fn()
"""


async def test_other_syscall_abis_do_not_bypass_seccomp(open_session: Opener,
                                                        tracker: Tracker) -> None:
    s = await open_session(attack_config(allowed_imports=["ctypes", "mmap"]))
    await s.run("kept = 1")
    r = await s.run(RUN_MACHINE_CODE.format(hex=X32_SOCKET))
    assert r.value_repr == "-38", r  # x32 numbers: ENOSYS, never a vsock socket
    r = await s.run(RUN_MACHINE_CODE.format(hex=I386_SOCKET))
    assert r.error_kind == "crash" and "SIGSYS" in (r.error or ""), r  # int 0x80: killed
    assert (await s.run("kept")).value_repr == "1"
    await assert_healthy(s, tracker)


LIST_DESCRIPTORS = """
import os, stat
seen = []
for fd in range(1024):
    try:
        st = os.fstat(fd)
    except OSError:
        continue
    if stat.S_ISSOCK(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        seen.append(("socket" if stat.S_ISSOCK(st.st_mode) else "pipe", st.st_ino))
seen
"""


async def test_candidates_forked_together_hold_nothing_of_each_other(
    open_session: Opener, tracker: Tracker
) -> None:
    # the state process forks a step's candidates in one batch, with every socket and
    # gate pipe made first: each child must close its rivals' (a rival's socket would let
    # it answer for the rival; a rival's gate would let it start or stall the rival)
    s = await open_session(attack_config())
    await s.run("x = 1")
    for _ in range(3):
        results = await s.try_candidates([LIST_DESCRIPTORS] * 8)
        assert all(r.ok for r in results), [r.error for r in results]
        held = [eval(r.value_repr or "[]") for r in results]
        for descriptors in held:
            assert [kind for kind, _ in descriptors] == ["socket"], descriptors
        inodes = [ino for descriptors in held for _, ino in descriptors]
        assert len(set(inodes)) == 8, held
        await s.commit(3)
    await assert_healthy(s, tracker)
