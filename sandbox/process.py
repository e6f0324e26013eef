"""One started worker, host side: the nsjail process, the control channel, the counters.

The control channel is the socket of the jail's current state process. Forking a
candidate returns a `Fork` with the candidate's own channel; promoting a fork makes its
channel the control channel (the old state process is killed inside the jail).

The state process is untrusted too (it is a promoted candidate that ran model code): a
control frame the host did not ask for, a descriptor it did not request or that is not a
fresh unix stream socket made inside this jail, or a flood, is a violation that kills the
jail (`death_reason` says why). Between steps the host kills every process but init and
the state process, then freezes the jail (`quiesce`); `resume` thaws it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sandbox import jail, procs
from sandbox.accounting import JailAccounting
from sandbox.cgroups import JailCounters, jail_cgroups
from sandbox.channel import Channel
from sandbox.config import SandboxConfig
from sandbox.errors import SandboxSetupError, WorkerDied
from sandbox.fork import Fork
from sandbox.freezer import Freezer, make_freezer
from sandbox.probe import InterpreterLayout
from sandbox.protocol import Message, ProtocolError
from sandbox.spares import SPARE_DELAY_S, Spares, ignore_result
from sandbox.uids import UidAllocator

PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
CONTROL_OPS = frozenset({"spawned", "spawn_failed", "exited", "pong"})
SETTLE_S = 2.0
"""After a step, the jail is frozen once the killed processes are gone, or this much later.
Long enough for a CPU-starved machine: a SIGKILLed process that is frozen before it died
(cgroup v1) stays until the next thaw, a leftover that tests rightly count."""

log = logging.getLogger(__name__)


class SpawnFailed(Exception):
    def __init__(self, message: str, errno: int | None) -> None:
        super().__init__(message)
        self.errno = errno


@dataclass
class _Exit:
    code: int | None
    signal: int | None


@dataclass
class WorkerProcess(JailAccounting):
    config: SandboxConfig
    popen: subprocess.Popen[bytes]
    control: Channel
    tmpdir: str
    jailed: bool
    state_pid: int = 0
    cgroups: JailCounters | None = None
    started_s: float = 0.0
    preloaded: list[str] = field(default_factory=list)
    uid: int | None = None
    """The jail's own host uid/gid (None: unjailed, or nsjail without root)."""
    uids: UidAllocator | None = None
    freezer: Freezer | None = None
    init_host_pid: int | None = None
    state_host_pid: int | None = None
    death_reason: str | None = None
    """Why the host killed the jail (a protocol violation), if it did."""
    _fork_pids: set[int] = field(default_factory=set)
    _settle: asyncio.Future[None] | None = None
    _reader: asyncio.Task[None] | None = None
    _spawns: dict[int, asyncio.Future[tuple[int, int]]] = field(default_factory=dict)
    _exits: dict[int, _Exit] = field(default_factory=dict)
    _exit_waiters: dict[int, asyncio.Future[None]] = field(default_factory=dict)
    _pongs: list[asyncio.Future[None]] = field(default_factory=list)
    _next_cid: int = 0
    _dead: bool = False
    _closed: bool = False
    init_channel: Channel | None = None
    """The channel to the jail's init (which forks fresh state processes); `control` is
    the state process's."""
    runs: int = 1
    """Runs this jail has served, the current one included (see `recycle`)."""
    spares: Spares = field(init=False)

    def __post_init__(self) -> None:
        self.spares = Spares(self)

    def spare_forks(self) -> list[Fork]:
        """The spares forked and announced so far (parked, waiting for a step)."""
        return self.spares.forks()

    # --- start -------------------------------------------------------------------------

    @classmethod
    async def start(
        cls,
        config: SandboxConfig,
        layout: InterpreterLayout,
        nsjail: str | None,
        uids: UidAllocator | None = None,
    ) -> WorkerProcess:
        """Start a worker; with `uids` (jailed, as root) the jail gets its own uid/gid."""
        t0 = time.perf_counter()
        jailed_root = nsjail is not None and os.geteuid() == 0
        uid = uids.acquire() if (uids is not None and jailed_root) else None
        try:
            worker = await cls._start(config, layout, nsjail, uid, t0)
        except BaseException as e:
            if uid is not None and uids is not None and not getattr(e, "leaked_uid", False):
                uids.release(uid)
            raise
        worker.uids = uids if uid is not None else None
        return worker

    @classmethod
    async def _start(
        cls,
        config: SandboxConfig,
        layout: InterpreterLayout,
        nsjail: str | None,
        uid: int | None,
        t0: float,
    ) -> WorkerProcess:
        tmpdir = tempfile.mkdtemp(prefix="distillery-sandbox-")
        log_path = os.path.join(tmpdir, "worker.log")
        host_end, jail_end = socket.socketpair()
        fd = jail_end.fileno()
        if nsjail is not None:
            argv = jail.nsjail_argv(config, layout, nsjail, fd, log_path, uid)
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
        control = Channel(
            host_end,
            max_frame=config.max_frame_bytes,
            accept_fds=True,
            max_depth=config.json_depth_max + 2,
        )
        worker = cls(config, popen, control, tmpdir, jailed=nsjail is not None, uid=uid)
        try:
            await asyncio.wait_for(worker._handshake(site_dirs), config.start_timeout_s)
        except BaseException as e:
            detail = worker.log_tail()
            await worker.close()
            leaked = not worker.all_gone()
            if isinstance(e, asyncio.CancelledError):
                e.leaked_uid = leaked  # type: ignore[attr-defined]
                raise
            why = "timed out" if isinstance(e, TimeoutError) else f"failed ({e})"
            err = SandboxSetupError(
                f"the sandbox worker {why} while starting. nsjail/worker log:\n{detail}"
            )
            err.leaked_uid = leaked  # type: ignore[attr-defined]
            raise err from e
        worker.started_s = time.perf_counter() - t0
        worker._reader = asyncio.create_task(worker._control_loop(worker.control))
        worker.quiesce()  # a pooled worker waits frozen
        return worker

    async def _handshake(self, site_dirs: list[str]) -> None:
        hello = await self.control.recv_msg()
        if hello is None or hello.get("op") != "hello" or not isinstance(hello.get("pid"), int):
            raise WorkerDied(f"no hello from the worker (got {hello!r})")
        if self.jailed:
            init = first_child(self.popen.pid)
            if init is None:
                raise WorkerDied("the jailed process disappeared")
            self.init_host_pid = init
            self.cgroups = jail_cgroups(self.config, init)  # None under rlimit-only
            if self.config.freeze_between_steps and self.cgroups is not None:
                self.freezer = make_freezer(
                    self.config.cgroup_root,
                    self.config.cgroup_parent,
                    f"NSJAIL.{init}",
                    self.cgroups,
                )
                if self.freezer is not None:
                    # only init exists now (it waits for its config): what it forks inherits
                    self.freezer.attach(self.cgroups.procs())
        await self.control.send(
            {
                "op": "config",
                "allowed_imports": list(self.config.allowed_imports),
                "preload": list(self.config.preload),
                "output_max_bytes": self.config.output_max_bytes,
                "cpu_s": self.config.cpu_s,
                "site_dirs": site_dirs,
                "tool_args_max_bytes": self.config.tool_args_max_bytes,
                "tool_args_step_max_bytes": self.config.tool_args_step_max_bytes,
                "json_depth_max": self.config.json_depth_max,
            }
        )
        ready = await self.control.recv_msg()
        if ready is None or ready.get("op") != "ready":
            raise WorkerDied(f"the worker did not get ready (got {ready!r})")
        self.preloaded = [str(m) for m in ready.get("preloaded", [])]
        for err in ready.get("errors", []):
            log.warning("sandbox worker could not preload %s", err)
        self.init_channel = self.control
        self.control = await self._new_state()

    async def _new_state(self) -> Channel:
        """Ask init for a fresh state process; its channel (checked like a candidate's
        socket: a unix stream socket made inside this jail)."""
        assert self.init_channel is not None
        await self.init_channel.send({"op": "state"})
        item = await self.init_channel.recv()
        if item is None:
            raise WorkerDied("the jail's init is gone")
        msg, fd = item
        pid = msg.get("pid")
        if msg.get("op") != "state" or fd is None or not isinstance(pid, int) or pid < 2:
            if fd is not None:
                os.close(fd)
            raise WorkerDied(f"init did not start a state process (got {msg!r})")
        problem = self._check_candidate_socket(fd)
        if problem is not None:
            os.close(fd)
            raise WorkerDied(problem)
        self.state_pid = pid
        self.state_host_pid = None
        return Channel(
            socket.socket(fileno=fd),
            max_frame=self.config.max_frame_bytes,
            accept_fds=True,
            max_depth=self.config.json_depth_max + 2,
        )

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
                    if fd is not None:
                        with contextlib.suppress(OSError):
                            os.close(fd)
                    raise ProtocolError(f"bad control frame: {type(e).__name__}: {e}") from e
        except ProtocolError as e:
            if channel is self.control:
                log.warning("sandbox: the state process broke the control protocol: %s", e)
                self.death_reason = (
                    f"the sandbox state process broke the protocol ({e}) and was killed"
                )
                self._kill_jail()
        finally:
            if channel is self.control:
                self._mark_dead()

    def _dispatch(self, msg: Message, fd: int | None) -> None:
        op = msg["op"]
        if op not in CONTROL_OPS:
            raise ProtocolError(f"unexpected control frame {op!r}")
        if fd is not None and op != "spawned":
            raise ValueError("a descriptor on a frame that carries none")
        if op == "spawned":
            fut = self._spawns.pop(msg["cid"], None)
            if fd is None or fut is None or fut.done():
                raise ValueError("a candidate socket the host did not ask for")
            pid = msg["pid"]
            if not isinstance(pid, int) or pid < 2:
                raise ValueError("bad candidate pid")
            problem = self._check_candidate_socket(fd)
            if problem is not None:
                raise ValueError(problem)
            # known before spawn() resumes: its "exited" may be in the same read
            self._fork_pids.add(pid)
            fut.set_result((pid, fd))
            return
        elif op == "spawn_failed":
            fut = self._spawns.pop(msg["cid"], None)
            if fut is not None and not fut.done():
                errno = msg.get("errno")
                fut.set_exception(
                    SpawnFailed(str(msg.get("error")), errno if isinstance(errno, int) else None)
                )
        elif op == "exited":
            pid = msg["pid"]
            if not isinstance(pid, int) or pid not in self._fork_pids:
                return  # not a candidate the host knows of: nothing to record (bounded)
            self._fork_pids.discard(pid)
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

    def _check_candidate_socket(self, fd: int) -> str | None:
        """Why `fd` is not a fresh candidate socket of this jail (None: it is one)."""
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                return "the candidate's descriptor is not a socket"
            sock = socket.socket(fileno=os.dup(fd))
        except OSError as e:
            return f"bad candidate descriptor: {e}"
        try:
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                return "the candidate's descriptor is not a unix stream socket"
            pid, uid, _gid = PEERCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size)
            )
        except OSError as e:
            return f"bad candidate socket: {e}"
        finally:
            sock.close()
        # a socketpair carries its creator's credentials: a process of the jail, never
        # this host process (that would be one of the host's own channels)
        if pid == os.getpid() or pid <= 0:
            return "the candidate socket was not made inside the jail"
        if self.uid is not None and uid != self.uid:
            return f"the candidate socket belongs to uid {uid}, not to this jail"
        return None

    def _kill_jail(self) -> None:
        """SIGKILL every process of the jail now (the host's answer to a violation)."""
        if self.freezer is not None:
            self.freezer.thaw()
        if self.cgroups is not None:
            for pid in self.cgroups.procs():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        elif not self.jailed and self.popen.poll() is None:
            procs.kill_tree(self.popen.pid)

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
            async with asyncio.timeout(self.config.control_timeout_s):
                await self.control.send(msg)
        except (OSError, TimeoutError) as e:
            self._mark_dead()
            raise WorkerDied(f"cannot reach the sandbox state process: {e}") from e

    # --- operations --------------------------------------------------------------------

    async def spawn(self, code: str | None) -> Fork:
        """Fork a candidate that runs `code` against the current state (None: a spare that
        waits for its code, see sandbox.spares)."""
        self._next_cid += 1
        cid = self._next_cid
        fut: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        self._spawns[cid] = fut
        request: Message = {"op": "spawn", "cid": cid}
        if code is not None:
            request["code"] = code
        try:
            await self._send_control(request)
            async with asyncio.timeout(self.config.control_timeout_s):
                pid, fd = await fut
        except TimeoutError as e:
            self._mark_dead()
            await self.close()
            raise WorkerDied("the sandbox state process did not answer a fork request") from e
        finally:
            self._spawns.pop(cid, None)
            if fut.done() and not fut.cancelled():
                fut.exception()  # failed with the worker before it was awaited: retrieved
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            os.close(fd)
            raise WorkerDied(f"bad candidate socket: {e}") from e
        holder: list[Fork] = []

        def violation(_error: ProtocolError) -> None:
            if holder:
                self.kill(holder[0])

        channel = Channel(
            sock,
            max_frame=self.config.max_frame_bytes,
            max_depth=self.config.json_depth_max + 2,
            on_violation=violation,
        )
        fork = Fork(cid, pid, channel, spare=code is None)
        holder.append(fork)
        if fork.spare:
            channel.silence()  # a spare has nothing to say before it has code
        return fork

    def kill(self, fork: Fork) -> None:
        """SIGKILL a candidate (through the state process) and drop its channel."""
        fork.dead = True
        fork.channel.close()
        if not self.dead:
            task = asyncio.ensure_future(self._send_control({"op": "kill", "pid": fork.pid}))
            task.add_done_callback(ignore_result)

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
        self.spares.drop()
        self._fork_pids.clear()
        self._exits.clear()
        await self._send_control({"op": "discard"})

    async def promote(self, fork: Fork) -> None:
        """Make `fork` the state process; every other process of the jail is killed."""
        fork.channel.accept_fds = True  # it will hand over its own candidates' sockets
        fork.channel.on_violation = None  # as the control channel, _control_loop judges
        fork.channel.unsilence()
        self.spares.drop()
        async with asyncio.timeout(self.config.control_timeout_s):
            await fork.channel.send({"op": "promote"})
        old, old_reader = self.control, self._reader
        self.control = fork.channel
        self.state_pid = fork.pid
        self.state_host_pid = None  # looked up when needed (quiesce)
        self._fork_pids.clear()
        self._exits.clear()
        # the old state process may have died already (code can kill it): the fork carries
        # the state on, so the worker lives as long as the jail does
        self._dead = self._closed or self.popen.poll() is not None
        self._reader = asyncio.create_task(self._control_loop(fork.channel))
        if old_reader is not None:
            old_reader.cancel()
        old.close()

    async def set_tools(self, names: list[str]) -> None:
        self.spares.drop()  # forked without these tools
        await self._send_control({"op": "tools", "names": names})

    async def ping(self, timeout: float = 1.0) -> bool:
        if self.dead:
            return False
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pongs.append(fut)
        self.resume()
        try:
            await self._send_control({"op": "ping"})
            await asyncio.wait_for(fut, timeout)
        except (WorkerDied, TimeoutError):
            return False
        finally:
            self.quiesce()
        return not self.dead

    # --- another run in the same jail ---------------------------------------------------

    @property
    def reusable(self) -> bool:
        """`recycle` may hand this jail to another run: jailed (init is pid 1 of its own
        pid namespace, cgroups hold every process), alive, never caught breaking the
        protocol."""
        return (
            self.jailed
            and self.cgroups is not None
            and self.init_channel is not None
            and self.death_reason is None
            and not self._closed
            and self.popen.poll() is None
        )

    async def recycle(self) -> bool:
        """Make this jail a fresh one for another run. init (which never ran model code)
        kills every other process of the jail, empties /tmp and forks a new state process
        from its own memory, as at the start; the finished run's state channel is
        dropped. False when the jail cannot be reused (the caller closes it)."""
        if not self.reusable:
            return False
        self._cancel_settle()
        self.spares.clear()  # they die in the scrub
        old, reader = self.control, self._reader
        self._reader = None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader  # it marks the worker dead: reset below
        old.close()
        if self.freezer is not None:
            self.freezer.thaw()  # frozen processes do not die
        try:
            async with asyncio.timeout(self.config.control_timeout_s + SETTLE_S):
                self.control = await self._new_state()
        except (OSError, TimeoutError, WorkerDied, ProtocolError) as e:
            log.warning("sandbox: a jail could not be scrubbed for another run: %s", e)
            self._dead = True
            return False
        self._fork_pids.clear()
        self._exits.clear()
        self._dead = False
        self.runs += 1
        self._reader = asyncio.create_task(self._control_loop(self.control))
        self.quiesce()
        return True

    # --- between steps -----------------------------------------------------------------

    def quiesce(self, spares: int = 0) -> None:
        """The step is over: kill every process but init and the state process now; then,
        in a background task that `resume` cancels: fork `spares` spares for the next step
        (see `Spares.wanted`) once SPARE_DELAY_S passed without a next step, and freeze the
        jail as soon as they are parked and the killed processes are gone (at most
        SETTLE_S later). Never raises."""
        if not self.jailed or self.cgroups is None or self.dead:
            return
        self._cancel_settle()
        if not self.spares.forking:  # a spare being forked is no stray
            self._kill_strays()
        if self.freezer is not None:
            wanted = spares if not self.spares.tasks else 0
            self._settle = asyncio.ensure_future(self._freeze_when_settled(wanted))

    def _kill_strays(self) -> bool:
        """SIGKILL every process of the jail but init and the state; True if none was left."""
        if self.cgroups is None:
            return True
        pids = self.cgroups.procs()
        state = self._state_host_pid(pids)
        if state is None or self.init_host_pid is None:
            return True  # cannot tell the state process apart (no NSpid): kill nothing
        keep = {self.init_host_pid, state, *self.spares.host_pids(pids, _ns_pid)}
        strays = [pid for pid in pids if pid not in keep]
        for pid in strays:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        return not strays

    async def _freeze_when_settled(self, spares: int) -> None:
        if spares > 0:
            # a caller that starts its next step at once (no model time) gains nothing
            # from spares: they would only be forked in its way
            await asyncio.sleep(SPARE_DELAY_S)
            # the strays go first, and are gone: a spare forked now is never taken for one,
            # and the memory and pids they held are free when the room for spares is read
            await self._strays_gone()
            if self.state_host_pid is not None:  # the last step's code may have stopped it
                with contextlib.suppress(OSError):
                    os.kill(self.state_host_pid, signal.SIGCONT)
            self.spares.request(min(spares, self.spares.room()))
        if self.spares.tasks:  # parked before the jail freezes (never killed as strays)
            await asyncio.wait(self.spares.tasks)  # (a cancelled wait leaves them running)
        await self._strays_gone()
        if self.freezer is not None and not self._closed:
            self.freezer.freeze()

    async def _strays_gone(self) -> None:
        """Kill strays until none is left in the jail, or SETTLE_S passed."""
        deadline = time.monotonic() + SETTLE_S
        delay = 0.0005
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)
            if self._kill_strays():
                return

    def _cancel_settle(self) -> None:
        if self._settle is not None and not self._settle.done():
            self._settle.cancel()
        self._settle = None

    def resume(self) -> None:
        """A step starts: thaw the jail, and continue the state process if the last step's
        code stopped it (SIGSTOP)."""
        self._cancel_settle()
        if self.freezer is not None:
            self.freezer.thaw()
        pid = self.state_host_pid
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)

    def _state_host_pid(self, pids: list[int]) -> int | None:
        """Host pid of the state process (its pid namespace's pid is `state_pid`) among
        `pids`, the jail's processes as the caller has just read them."""
        if self.state_host_pid is None:
            # newest first: the state is the promoted candidate, forked after the old
            # state and usually after its rivals (a guess for speed; NSpid decides)
            for pid in sorted(pids, reverse=True):
                if pid != self.init_host_pid and _ns_pid(pid) == self.state_pid:
                    self.state_host_pid = pid
                    break
        return self.state_host_pid

    def all_gone(self) -> bool:
        """No process of this jail is left (its uid may be handed out again)."""
        if self.jailed:
            return self.popen.poll() is not None and not (
                self.cgroups is not None and self.cgroups.procs()
            )
        return self.popen.poll() is not None

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
        if self.init_channel is not None:
            self.init_channel.close()
        self._cancel_settle()
        self.spares.clear()  # their spawn futures failed with the worker (_mark_dead)
        if self.freezer is not None:
            self.freezer.thaw()  # frozen processes do not die of SIGKILL before they thaw
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
        if self.freezer is not None:
            self.freezer.remove()
        if self.uids is not None and self.uid is not None:
            if self.all_gone():
                self.uids.release(self.uid)
            else:  # never hand out a uid that a live process still has
                log.warning("sandbox: uid %d stays reserved: a process of its jail lives", self.uid)
            self.uids = None


def _ns_pid(pid: int) -> int | None:
    """The innermost pid-namespace pid of host process `pid` (NSpid's last field)."""
    try:
        fd = os.open(f"/proc/{pid}/status", os.O_RDONLY)
        try:
            text = os.read(fd, 4096)
        finally:
            os.close(fd)
        start = text.index(b"\nNSpid:") + 7
        return int(text[start : text.index(b"\n", start)].split()[-1])
    except (OSError, ValueError, IndexError):
        pass
    return None


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
