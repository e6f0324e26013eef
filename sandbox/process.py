"""One started worker, host side: the nsjail process, the control channel, the counters.

The control channel is the socket of the jail's current state process. Forking a
candidate returns a `Fork` with the candidate's own channel; promoting a fork makes its
channel the control channel (the old state process is killed inside the jail).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox import jail, procs
from sandbox.cgroups import JailCounters, jail_cgroups
from sandbox.channel import Channel
from sandbox.config import SandboxConfig
from sandbox.errors import SandboxSetupError, WorkerDied
from sandbox.probe import InterpreterLayout
from sandbox.protocol import Message, ProtocolError

log = logging.getLogger(__name__)


class SpawnFailed(Exception):
    def __init__(self, message: str, errno: int | None) -> None:
        super().__init__(message)
        self.errno = errno


@dataclass
class Fork:
    """A candidate process inside the jail and its channel."""

    cid: int
    pid: int
    channel: Channel
    dead: bool = False
    """It exited, was killed or broke the protocol: it cannot become the state."""

    @property
    def usable(self) -> bool:
        return not self.dead and not self.channel.broken and not self.channel.closed


@dataclass
class _Exit:
    code: int | None
    signal: int | None


@dataclass
class WorkerProcess:
    config: SandboxConfig
    popen: subprocess.Popen[bytes]
    control: Channel
    tmpdir: str
    jailed: bool
    state_pid: int = 0
    cgroups: JailCounters | None = None
    started_s: float = 0.0
    preloaded: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None
    _spawns: dict[int, asyncio.Future[tuple[int, int]]] = field(default_factory=dict)
    _exits: dict[int, _Exit] = field(default_factory=dict)
    _exit_waiters: dict[int, asyncio.Future[None]] = field(default_factory=dict)
    _pongs: list[asyncio.Future[None]] = field(default_factory=list)
    _next_cid: int = 0
    _dead: bool = False
    _closed: bool = False

    # --- start -------------------------------------------------------------------------

    @classmethod
    async def start(
        cls, config: SandboxConfig, layout: InterpreterLayout, nsjail: str | None
    ) -> WorkerProcess:
        t0 = time.perf_counter()
        tmpdir = tempfile.mkdtemp(prefix="distillery-sandbox-")
        log_path = os.path.join(tmpdir, "worker.log")
        host_end, jail_end = socket.socketpair()
        fd = jail_end.fileno()
        if nsjail is not None:
            argv = jail.nsjail_argv(config, layout, nsjail, fd, log_path)
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            cwd = tmpdir
            site_dirs = jail.site_dirs_in_jail(layout)
        else:
            cwd = os.path.join(tmpdir, "work")
            os.mkdir(cwd)
            worker_path = str(jail.PACKAGE_DIR / "worker.py")
            argv = jail.worker_argv(layout.executable, worker_path, fd, jailed=False)
            env = {**jail.JAIL_ENV, "HOME": cwd, "TMPDIR": cwd}
            site_dirs = list(layout.site_dirs)
        try:
            with open(log_path, "ab") as log_file:
                popen = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log_file,
                    pass_fds=(fd,),
                    cwd=cwd,
                    env=env,
                    start_new_session=True,
                )
        except OSError as e:
            host_end.close()
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise SandboxSetupError(f"cannot start the sandbox worker ({argv[0]}): {e}") from e
        finally:
            jail_end.close()
        control = Channel(host_end, max_frame=config.max_frame_bytes, accept_fds=True)
        worker = cls(config, popen, control, tmpdir, jailed=nsjail is not None)
        try:
            await asyncio.wait_for(worker._handshake(site_dirs), config.start_timeout_s)
        except BaseException as e:
            detail = worker.log_tail()
            await worker.close()
            if isinstance(e, asyncio.CancelledError):
                raise
            why = "timed out" if isinstance(e, TimeoutError) else f"failed ({e})"
            raise SandboxSetupError(
                f"the sandbox worker {why} while starting. nsjail/worker log:\n{detail}"
            ) from e
        worker.started_s = time.perf_counter() - t0
        worker._reader = asyncio.create_task(worker._control_loop(worker.control))
        return worker

    async def _handshake(self, site_dirs: list[str]) -> None:
        hello = await self.control.recv_msg()
        if hello is None or hello.get("op") != "hello" or not isinstance(hello.get("pid"), int):
            raise WorkerDied(f"no hello from the worker (got {hello!r})")
        self.state_pid = hello["pid"]
        if self.jailed:
            init = first_child(self.popen.pid)
            if init is None:
                raise WorkerDied("the jailed process disappeared")
            self.cgroups = jail_cgroups(self.config, init)  # None under rlimit-only
        await self.control.send(
            {
                "op": "config",
                "allowed_imports": list(self.config.allowed_imports),
                "preload": list(self.config.preload),
                "output_max_bytes": self.config.output_max_bytes,
                "cpu_s": self.config.cpu_s,
                "site_dirs": site_dirs,
            }
        )
        ready = await self.control.recv_msg()
        if ready is None or ready.get("op") != "ready":
            raise WorkerDied(f"the worker did not get ready (got {ready!r})")
        self.preloaded = [str(m) for m in ready.get("preloaded", [])]
        for err in ready.get("errors", []):
            log.warning("sandbox worker could not preload %s", err)

    # --- control channel ---------------------------------------------------------------

    async def _control_loop(self, channel: Channel) -> None:
        try:
            while True:
                item = await channel.recv()
                if item is None:
                    break
                msg, fd = item
                try:
                    self._dispatch(msg, fd)
                except (KeyError, TypeError, ValueError) as e:
                    raise ProtocolError(f"bad control frame {msg!r}: {e}") from e
        except ProtocolError as e:
            log.warning("sandbox worker broke the control protocol: %s", e)
        finally:
            if channel is self.control:
                self._mark_dead()

    def _dispatch(self, msg: Message, fd: int | None) -> None:
        op = msg["op"]
        if op == "spawned":
            fut = self._spawns.pop(msg["cid"], None)
            if fd is not None and fut is not None and not fut.done():
                fut.set_result((int(msg["pid"]), fd))
                return
        elif op == "spawn_failed":
            fut = self._spawns.pop(msg["cid"], None)
            if fut is not None and not fut.done():
                errno = msg.get("errno")
                fut.set_exception(
                    SpawnFailed(str(msg.get("error")), errno if isinstance(errno, int) else None)
                )
        elif op == "exited":
            pid = int(msg["pid"])
            code, sig = msg.get("code"), msg.get("signal")
            self._exits[pid] = _Exit(
                code if isinstance(code, int) else None, sig if isinstance(sig, int) else None
            )
            waiter = self._exit_waiters.pop(pid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif op == "pong":
            while self._pongs:
                fut2 = self._pongs.pop(0)
                if not fut2.done():
                    fut2.set_result(None)
                    break
        if fd is not None:
            os.close(fd)

    def _mark_dead(self) -> None:
        if self._dead:
            return
        self._dead = True
        for fut in self._spawns.values():
            if not fut.done():
                fut.set_exception(WorkerDied("the sandbox state process died"))
        self._spawns.clear()
        for w in [*self._exit_waiters.values(), *self._pongs]:
            if not w.done():
                w.set_result(None)
        self._exit_waiters.clear()
        self._pongs.clear()

    @property
    def dead(self) -> bool:
        """The state process is gone (or the whole jail): the session state is lost."""
        return self._dead or self._closed or self.popen.poll() is not None

    @property
    def closed(self) -> bool:
        return self._closed

    async def _send_control(self, msg: Message) -> None:
        if self.dead:
            raise WorkerDied("the sandbox worker is gone")
        try:
            await asyncio.wait_for(self.control.send(msg), self.config.control_timeout_s)
        except (OSError, TimeoutError) as e:
            self._mark_dead()
            raise WorkerDied(f"cannot reach the sandbox state process: {e}") from e

    # --- operations --------------------------------------------------------------------

    async def spawn(self, code: str) -> Fork:
        """Fork a candidate that runs `code` against the current state."""
        self._next_cid += 1
        cid = self._next_cid
        fut: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        self._spawns[cid] = fut
        try:
            await self._send_control({"op": "spawn", "cid": cid, "code": code})
            pid, fd = await asyncio.wait_for(fut, self.config.control_timeout_s)
        except TimeoutError as e:
            self._mark_dead()
            await self.close()
            raise WorkerDied("the sandbox state process did not answer a fork request") from e
        finally:
            self._spawns.pop(cid, None)
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            os.close(fd)
            raise WorkerDied(f"bad candidate socket: {e}") from e
        if sock.family != socket.AF_UNIX:
            sock.close()
            raise WorkerDied("the candidate's descriptor is not a unix socket")
        channel = Channel(sock, max_frame=self.config.max_frame_bytes)
        return Fork(cid, pid, channel)

    def kill(self, fork: Fork) -> None:
        """SIGKILL a candidate (through the state process) and drop its channel."""
        fork.dead = True
        fork.channel.close()
        if not self.dead:
            task = asyncio.ensure_future(self._send_control({"op": "kill", "pid": fork.pid}))
            task.add_done_callback(_ignore_result)

    async def exit_status(self, pid: int, timeout: float) -> _Exit | None:
        if pid not in self._exits and not self.dead:
            waiter = self._exit_waiters.get(pid)
            if waiter is None:
                waiter = asyncio.get_running_loop().create_future()
                self._exit_waiters[pid] = waiter
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(waiter), timeout)
            finally:
                self._exit_waiters.pop(pid, None)
        return self._exits.pop(pid, None)

    async def discard(self) -> None:
        """Kill every candidate and stray process; the state stays as it was."""
        await self._send_control({"op": "discard"})

    async def promote(self, fork: Fork) -> None:
        """Make `fork` the state process; every other process of the jail is killed."""
        fork.channel.accept_fds = True  # it will hand over its own candidates' sockets
        await asyncio.wait_for(fork.channel.send({"op": "promote"}), self.config.control_timeout_s)
        old, old_reader = self.control, self._reader
        self.control = fork.channel
        self.state_pid = fork.pid
        self._exits.clear()
        # the old state process may have died already (code can kill it): the fork carries
        # the state on, so the worker lives as long as the jail does
        self._dead = self._closed or self.popen.poll() is not None
        self._reader = asyncio.create_task(self._control_loop(fork.channel))
        if old_reader is not None:
            old_reader.cancel()
        old.close()

    async def set_tools(self, names: list[str]) -> None:
        await self._send_control({"op": "tools", "names": names})

    async def ping(self, timeout: float = 1.0) -> bool:
        if self.dead:
            return False
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pongs.append(fut)
        try:
            await self._send_control({"op": "ping"})
            await asyncio.wait_for(fut, timeout)
        except (WorkerDied, TimeoutError):
            return False
        return not self.dead

    # --- accounting --------------------------------------------------------------------

    def oom_kills(self) -> int:
        return self.cgroups.oom_kills() if self.cgroups else 0

    def pids_limit_hits(self) -> int:
        return self.cgroups.pids_limit_hits() if self.cgroups else 0

    def process_ids(self) -> list[int]:
        """Host pids of the jail's processes (init + state at rest; nsjail excluded)."""
        if self.cgroups is not None:
            return self.cgroups.procs()
        if self.popen.poll() is not None:
            return []
        return [self.popen.pid, *procs.descendants(self.popen.pid)]

    def memory_bytes(self) -> tuple[int, int]:
        """(current, peak) memory of the jail: cgroup accounting, or RSS when unjailed."""
        if self.cgroups is not None:
            return self.cgroups.memory_usage(), self.cgroups.memory_peak()
        rss = sum(_rss(p) for p in self.process_ids())
        return rss, rss

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return Path(self.tmpdir, "worker.log").read_text(errors="replace")[-limit:]
        except OSError:
            return "(no log)"

    # --- shutdown ----------------------------------------------------------------------

    async def close(self) -> None:
        """Kill every process of this worker and remove its files. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._mark_dead()
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        self.control.close()
        if self.jailed:
            # nsjail kills the jail and removes its cgroups on SIGTERM
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            if not await _wait_exit(self.popen, 2.0):
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                await _wait_exit(self.popen, 2.0)
            if self.cgroups is not None:  # normally nsjail removed them already
                for _ in range(300):
                    if self.cgroups.cleanup():
                        break
                    await asyncio.sleep(0.01)
                else:
                    log.warning("sandbox: cgroups of a closed worker remain: %s", self.cgroups.dirs)
        else:
            procs.kill_tree(self.popen.pid)
            await _wait_exit(self.popen, 2.0)
            for _ in range(100):
                if not procs.descendants(self.popen.pid):
                    break
                procs.kill_tree(self.popen.pid)
                await asyncio.sleep(0.01)
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def _ignore_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def _wait_exit(popen: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.001
    while popen.poll() is None:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
    return True


def first_child(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if text:
            return int(text[0])
    except OSError:
        pass
    kids = [p for p in procs.descendants(pid)]
    return kids[0] if kids else None


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0
