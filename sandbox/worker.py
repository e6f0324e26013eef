"""The Python worker that runs inside the jail (standard library only).

Started as `python -E -s -S -B worker.py FD` with FD an AF_UNIX socket to the host. Three
roles, all this file:

- init: the first process (pid 1 of the jail's pid namespace). It takes the config,
  preloads the modules once and never runs model code; on the host's `state` request it
  forks a fresh state process (the first run's; later, a scrubbed jail's next run's:
  before that fork it kills every other process of the jail and empties /tmp), hands
  the host that process's socket, and reaps orphans, so that the state can move between
  processes. Code inside the jail cannot signal it (pid 1 of a pid namespace ignores
  what it installs no handler for, SIGKILL and SIGSTOP included).
- state: holds the run's variables. It never runs model code itself: for every step it
  forks a candidate (copy-on-write), hands the host the candidate's own socket
  (SCM_RIGHTS), and reports candidates' exit statuses.
- candidate: runs one code string against a copy of the state, proxies tool calls over
  its socket, sends the result, then waits. `promote` makes it the new state process
  (it kills every other process of the jail first); end-of-file makes it exit.

Limits that need no privileges are applied here (per-candidate CPU rlimit, output cap);
the jail (nsjail) applies the rest. The import allow-list is a policy for well-behaved
code, not a security boundary: the jail is the boundary.
"""

from __future__ import annotations

import _signal  # signal's C functions: no enum conversions (about 4 us per call saved)
import ast
import builtins
import contextlib
import errno
import gc
import io
import json
import linecache
import os
import resource
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from sandbox import protocol
else:  # inside the jail: protocol.py is mounted beside this file (sys.path[0])
    import protocol

FILENAME = "<code>"
SIGNALS = sorted(int(s) for s in signal.valid_signals())
PR_SET_CHILD_SUBREAPER = 36
FORK_RETRIES = 40  # x 5 ms
SPAWN_BATCH_MAX = 16  # spawn requests forked together (4 descriptors each until announced)


class FinalAnswerSignal(BaseException):
    def __init__(self, value: Any) -> None:
        super().__init__("final_answer")
        self.value = value


class OutputLimitExceeded(BaseException):
    pass


class ForbiddenImportError(ImportError):
    pass


class ToolError(Exception):
    """A host-side tool failed; the message says why. Code may catch it."""


# --- per-candidate context ---------------------------------------------------------------


class Candidate:
    def __init__(self, sock: socket.socket, cfg: dict[str, Any]) -> None:
        self.sock = sock
        self.pid = os.getpid()
        self.seq = 0
        self.args_bytes = 0  # JSON size of every tool call's arguments so far
        self.args_max = int(cfg.get("tool_args_max_bytes", 16_384))
        self.args_step_max = int(cfg.get("tool_args_step_max_bytes", 262_144))
        self.depth_max = int(cfg.get("json_depth_max", 32))


CURRENT: list[Candidate | None] = [None]
JAILED = [False]  # started by nsjail in its own pid namespace (argv[2] == "jail")


def call_tool(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    cand = CURRENT[0]
    if cand is None or os.getpid() != cand.pid:
        raise RuntimeError(f"{name}() can only be called from the sandbox's main process")
    try:
        size = len(json.dumps([list(args), kwargs], allow_nan=False).encode("utf-8", "replace"))
    except (TypeError, ValueError, RecursionError):
        raise TypeError(
            f"{name}() arguments must be JSON values (str, int, float, bool, None, list, dict)"
        ) from None
    if size > cand.args_max:
        raise ValueError(
            f"{name}() arguments are too large: {size} bytes of JSON (the sandbox's limit is "
            f"{cand.args_max} bytes per call)"
        )
    if cand.args_bytes + size > cand.args_step_max:
        raise ValueError(
            f"{name}(): the tool-call arguments of this code reached the sandbox's limit of "
            f"{cand.args_step_max} bytes in all"
        )
    if protocol.json_depth([list(args), kwargs], cand.depth_max) > cand.depth_max:
        raise ValueError(f"{name}() arguments are nested deeper than {cand.depth_max} levels")
    cand.args_bytes += size
    cand.seq += 1
    protocol.send_blocking(
        cand.sock,
        {"op": "tool", "id": cand.seq, "name": name, "args": list(args), "kwargs": kwargs},
    )
    reply = protocol.recv_blocking(cand.sock)
    if reply is None:  # the host went away
        os._exit(0)
    if reply.get("op") == "tool_result" and reply.get("id") == cand.seq:
        if "value" in reply:  # a structured result: the JSON value, not its text
            return reply["value"]
        result = reply.get("result")
        return result if isinstance(result, str) else str(result)
    raise ToolError(str(reply.get("error") or f"{name}() failed"))


def make_tool(name: str) -> Any:
    def tool(*args: Any, **kwargs: Any) -> Any:
        return call_tool(name, args, kwargs)

    tool.__name__ = tool.__qualname__ = name
    return tool


def final_answer(answer: Any) -> None:
    """Give the final answer and stop."""
    raise FinalAnswerSignal(answer)


def make_import_guard(allowed: list[str]) -> Any:
    real_import = builtins.__import__
    names = sorted(set(allowed))

    def is_allowed(name: str) -> bool:
        return any(name == a or name.startswith(a + ".") for a in names)

    def guarded_import(
        name: str,
        globals: Any = None,
        locals: Any = None,
        fromlist: Any = (),
        level: int = 0,
    ) -> Any:
        if level or not is_allowed(name):
            shown = "." * level + name
            raise ForbiddenImportError(
                f"Import of {shown} is not allowed. Authorized imports are: {names}"
            )
        return real_import(name, globals, locals, fromlist, level)

    return guarded_import


# --- running one code string -----------------------------------------------------------------


class Capture(io.TextIOBase):
    """sys.stdout/sys.stderr of a candidate: keeps at most `limit` bytes, then raises."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.parts: list[str] = []
        self.exceeded = False

    def write(self, s: str) -> int:  # type: ignore[override]
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if self.exceeded:
            raise OutputLimitExceeded()
        n = len(s.encode("utf-8", "replace"))
        if self.size + n > self.limit:
            room = self.limit - self.size
            self.parts.append(s.encode("utf-8", "replace")[:room].decode("utf-8", "ignore"))
            self.size = self.limit
            self.exceeded = True
            raise OutputLimitExceeded()
        self.parts.append(s)
        self.size += n
        return len(s)

    def writable(self) -> bool:
        return True

    def getvalue(self) -> str:
        return "".join(self.parts)


def user_traceback(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == FILENAME]
    lines = []
    if frames:
        lines.append("Traceback (most recent call last):\n")
        lines.extend(traceback.format_list(frames))
    lines.extend(traceback.format_exception_only(type(exc), exc))
    return "".join(lines).rstrip("\n")


def truncate(s: str, limit: int) -> str:
    if len(s) <= limit:
        return s
    return s[:limit] + f"... [truncated {len(s) - limit} characters]"


def json_safe(value: Any, limit: int, depth_max: int = 32) -> tuple[bool, str]:
    """(is_json, text) of a final answer: its strict JSON when it is a small, shallow JSON
    value (a str is sent as itself), else its str(), truncated to `limit` characters."""
    if isinstance(value, str):
        return False, truncate(value, limit)
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        if (
            len(text) <= min(limit, protocol.FINAL_JSON_MAX_BYTES)
            and protocol.json_depth(value, depth_max) <= depth_max
        ):
            return True, text
    except (TypeError, ValueError, RecursionError):
        pass
    try:
        text = str(value)
    except Exception as e:  # a broken __str__
        text = f"<unprintable {type(value).__name__}: {e!r}>"
    return False, truncate(text, limit)


def classify(exc: BaseException) -> str:
    if isinstance(exc, ForbiddenImportError):
        return "forbidden_import"
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, ToolError):
        return "tool"
    return "exception"


def execute(
    code: str,
    ns: dict[str, Any],
    limit: int,
    depth_max: int = 32,
    gate: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Run `code` in `ns`; `gate()` is called after compiling, before anything runs (a
    fresh candidate compiles while the state process announces it to the host)."""
    res: dict[str, Any] = {
        "op": "result",
        "stdout": "",
        "value_repr": None,
        "error": None,
        "error_kind": None,
        "is_final": False,
        "final_answer": None,
        "final_json": False,
        "exec_s": 0.0,
        "keep": True,
    }
    t0 = time.perf_counter()
    try:
        tree = ast.parse(code, FILENAME, "exec")
        last = None
        tail = tree.body[-1] if tree.body else None
        if isinstance(tail, ast.Expr):
            tree.body.pop()
            last = compile(ast.Expression(tail.value), FILENAME, "eval")
        body = compile(tree, FILENAME, "exec")
    except (SyntaxError, ValueError) as e:
        gate()
        res["error"] = "".join(traceback.format_exception_only(type(e), e)).rstrip("\n")
        res["error_kind"] = "syntax"
        return res
    gate()
    linecache.cache[FILENAME] = (len(code), None, code.splitlines(True), FILENAME)
    out = Capture(limit)
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = out
    try:
        exec(body, ns)
        if last is not None:
            value = eval(last, ns)
            try:
                text = repr(value)
            except Exception as e:
                text = f"<repr() failed: {type(e).__name__}: {e}>"
            res["value_repr"] = truncate(text, limit)
    except FinalAnswerSignal as f:
        res["is_final"] = True
        res["final_json"], res["final_answer"] = json_safe(f.value, limit, depth_max)
    except OutputLimitExceeded:
        pass
    except BaseException as e:
        res["error"] = truncate(user_traceback(e), limit)
        res["error_kind"] = classify(e)
    finally:
        sys.stdout, sys.stderr = saved
        res["stdout"] = out.getvalue()
        res["exec_s"] = time.perf_counter() - t0
    if out.exceeded:
        res["error"] = f"Output limit exceeded: the code printed more than {limit} bytes."
        res["error_kind"] = "output"
        res["is_final"] = False
        res["final_answer"] = None
    return res


def result_frames(res: dict[str, Any]) -> list[bytes]:
    """The result as `text` frames for its long fields, then a small `result` frame."""
    texts: list[str] = []
    frames: list[bytes] = []
    for name in protocol.TEXT_FIELDS:
        value = res.pop(name, None)
        if isinstance(value, str):
            texts.append(name)
            frames.extend(protocol.text_frames(name, value))
    res["texts"] = texts
    frames.append(protocol.encode(res))
    return frames


def send_result(sock: socket.socket, res: dict[str, Any]) -> None:
    frames = result_frames(res)
    # one write for a small result (one wake-up of the host), chunks for a large one
    if sum(len(f) for f in frames) <= protocol.BATCH_BYTES:
        sock.sendall(b"".join(frames))
    else:
        for frame in frames:
            sock.sendall(frame)


# --- process management ---------------------------------------------------------------------


def set_subreaper() -> None:
    """Outside a pid namespace (unjailed mode) orphans must still come back to init."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def sweep(init_pid: int) -> None:
    """SIGKILL every process of the jail except init and the caller."""
    me = os.getpid()
    if JAILED[0] and init_pid == 1:  # own pid namespace: kill(-1) reaches only the jail
        for _ in range(3):
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                return
    else:
        for _ in range(3):
            victims = [p for p in descendants(init_pid) if p != me]
            if not victims:
                return
            for p in victims:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _fd_top() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1024 if soft == resource.RLIM_INFINITY else min(int(soft), 1 << 16)


FD_TOP = _fd_top()
"""Descriptor numbers open_fds checks: the limit the worker started with (nsjail sets soft
and hard alike), so code that lowers its own limits later cannot hide a number above them."""
_POLLER: list[Any] = []


def open_fds() -> list[int]:
    """Every open descriptor number >= 3 of this process, in one poll() (there is no /proc
    in the jail): poll marks every number that is not open with POLLNVAL. The poll object
    is made once (forks inherit it)."""
    top = FD_TOP
    if not _POLLER:
        _POLLER.append(select.poll())
        for fd in range(3, top):
            _POLLER[0].register(fd, 0)
    while True:
        try:
            events = _POLLER[0].poll(0)
            break
        except InterruptedError:
            continue
    closed = {fd for fd, ev in events if ev & select.POLLNVAL}
    return [fd for fd in range(3, top) if fd not in closed]


# --- the run's /tmp: only the committed candidate's view survives ---------------------------

TMP_ROOT = ["/tmp"]  # the jail's private tmpfs (unjailed: the worker's own directory)
TMP_SNAPSHOT_MAX_BYTES = 8 << 20
TMP_SNAPSHOT_MAX_ENTRIES = 2048
Entry = tuple[str, int, bytes]  # kind ("f" file, "d" dir, "l" symlink), mode, content/target
Snapshot = dict[str, Entry]


def snapshot_tmp() -> Snapshot | None:
    """The contents of /tmp (relative path -> entry), or None when it holds more than the
    caps or something unreadable (then it is not restored: the step's candidates share
    it, as before). Fifos and sockets are not kept. Directories the code made
    inaccessible to itself are opened for the scan and closed again."""
    opened: list[tuple[str, int]] = []
    try:
        return _scan_tmp(opened)
    finally:
        for path, mode in reversed(opened):
            with contextlib.suppress(OSError):
                os.chmod(path, mode)


def _scan_tmp(opened: list[tuple[str, int]]) -> Snapshot | None:
    root, size, todo = TMP_ROOT[0], 0, [""]
    out: Snapshot = {}
    while todo:
        rel = todo.pop()
        try:
            for e in list(os.scandir(os.path.join(root, rel))):
                path = os.path.join(rel, e.name)
                if len(out) >= TMP_SNAPSHOT_MAX_ENTRIES:
                    return None
                st = e.stat(follow_symlinks=False)
                mode = st.st_mode & 0o7777
                if e.is_symlink():
                    out[path] = ("l", 0, os.fsencode(os.readlink(e.path)))
                elif e.is_dir(follow_symlinks=False):
                    out[path] = ("d", mode, b"")
                    if mode & 0o700 != 0o700:
                        os.chmod(e.path, mode | 0o700)
                        opened.append((e.path, mode))
                    todo.append(path)
                elif e.is_file(follow_symlinks=False):
                    size += st.st_size
                    if size > TMP_SNAPSHOT_MAX_BYTES:
                        return None
                    out[path] = ("f", mode, _readable(e.path, 0o600, _read_file))
        except FileNotFoundError:
            continue  # removed meanwhile (a rival still runs)
        except OSError:
            return None
    return out


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(TMP_SNAPSHOT_MAX_BYTES)


T = TypeVar("T")


def _readable(path: str, mode: int, read: Callable[[str], T]) -> T:
    """read(path); on EACCES (the code chmod-ed its own entry) with `mode` for a moment."""
    try:
        return read(path)
    except PermissionError:
        old = os.lstat(path).st_mode & 0o7777
        os.chmod(path, mode)
        try:
            return read(path)
        finally:
            os.chmod(path, old)


def fd_offsets(fds: list[int] | None = None) -> dict[int, int]:
    """File offsets of this process's open seekable descriptors (of `fds`: default all).
    Forks share them (one open file description): a rival that moved them must not move
    the survivor's. A candidate needs only those it inherited from the state."""
    out = {}
    for fd in open_fds() if fds is None else fds:
        with contextlib.suppress(OSError):
            out[fd] = os.lseek(fd, 0, os.SEEK_CUR)
    return out


def restore_offsets(offsets: dict[int, int]) -> None:
    for fd, pos in offsets.items():
        with contextlib.suppress(OSError):
            os.lseek(fd, pos, os.SEEK_SET)


def restore_tmp(snap: Snapshot | None) -> None:
    """Make /tmp hold exactly `snap` (nothing else of the jail runs now: it was swept).
    Files whose content is unchanged keep their inode (open descriptors stay valid);
    changed ones are rewritten in place."""
    if snap is None:
        return
    root = TMP_ROOT[0]
    if snapshot_tmp() == snap:
        return
    for dirpath, dirs, _ in os.walk(root):  # make every directory usable to clean it
        for name in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(dirpath, name), 0o700)
    current = snapshot_tmp() or {}
    for dirpath, dirs, files in os.walk(root, topdown=False):
        for name in files + dirs:
            full = os.path.join(dirpath, name)
            path = os.path.relpath(full, root)
            entry, have = snap.get(path), current.get(path)
            if entry is not None and have is not None and entry[0] == have[0] != "l":
                continue  # same kind: a directory stays, a file is rewritten below
            if entry is not None and entry == have:
                continue
            with contextlib.suppress(OSError):
                if os.path.isdir(full) and not os.path.islink(full):
                    os.rmdir(full)  # emptied already (bottom-up)
                else:
                    os.unlink(full)
    for path in sorted(snap):  # parents before children
        kind, mode, data = snap[path]
        full = os.path.join(root, path)
        with contextlib.suppress(OSError):
            if kind == "d":
                os.makedirs(full, exist_ok=True)
            elif kind == "l" and not os.path.islink(full):
                os.symlink(os.fsdecode(data), full)
            elif kind == "f" and current.get(path) != snap[path]:
                with contextlib.suppress(OSError):
                    os.chmod(full, 0o600)
                fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                finally:
                    os.close(fd)
    for path in sorted(snap, reverse=True):  # modes last: children before parents
        kind, mode, _ = snap[path]
        if kind != "l":
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, path), mode)


def close_duplicates(conn: socket.socket) -> None:
    """Neutralize every other descriptor of this process that refers to `conn`'s socket."""
    me = conn.fileno()
    target = os.fstat(me)
    for fd in open_fds():
        if fd == me:
            continue
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if st.st_ino == target.st_ino and st.st_dev == target.st_dev:
            # /dev/null over it, not close(): the number stays taken, so an object that
            # still holds it cannot later close or write to whatever reused the number
            null = os.open(os.devnull, os.O_RDWR)
            try:
                os.dup2(null, fd)
            except OSError:
                pass
            finally:
                os.close(null)


class State:
    """The state process: owns the namespace, forks candidates, reports their exits."""

    def __init__(
        self, conn: socket.socket, init_pid: int, cfg: dict[str, Any], ns: dict[str, Any]
    ) -> None:
        self.init_pid = init_pid
        self.cfg = cfg
        self.ns = ns
        self.children: dict[int, int] = {}
        self.conn = conn
        self.wake_r = self.wake_w = -1
        self.tmp_base: Snapshot | None = None  # /tmp before this step's first candidate
        self.tmp_taken = False
        self.tmp_view: Snapshot | None = None  # in a candidate: /tmp when its code ended
        self.offsets: dict[int, int] = {}  # file offsets that go with tmp_base / tmp_view
        self.gate: Callable[[], None] = lambda: None  # in a fresh candidate: wait for the host
        self._arm()

    def _arm(self) -> None:
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def _disarm(self) -> None:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.close(self.wake_r)
        os.close(self.wake_w)

    def become(self, conn: socket.socket) -> None:
        """Called in a promoted candidate: its socket is the new control channel.

        What the step's code set up for this process is undone: interval timers, signal
        handlers, trace hooks, blocked signals; and every other descriptor of the new
        control socket (a dup the code kept) is closed, so no later candidate inherits
        a way to write control frames. (The host freezes the jail between steps too.)
        """
        for timer in (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF):
            signal.setitimer(timer, 0)
        for sig in SIGNALS:
            try:
                handler = _signal.getsignal(sig)
            except (ValueError, OSError):
                continue
            if callable(handler) and handler is not signal.default_int_handler:
                # _signal's own constants: it accepts no enum members (signal's wrapper
                # converts them)
                keep = _signal.SIG_IGN if sig == _signal.SIGPIPE else _signal.SIG_DFL
                try:
                    _signal.signal(sig, keep)
                except (ValueError, OSError):
                    pass
        _signal.pthread_sigmask(signal.SIG_SETMASK, [])
        sys.settrace(None)
        sys.setprofile(None)
        close_duplicates(conn)
        self.conn = conn
        self.children = {}
        self.tmp_base, self.tmp_taken, self.tmp_view = None, False, None
        self._arm()

    def send(self, msg: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
        try:
            protocol.send_blocking(self.conn, msg, fds)
        except OSError:
            os._exit(0)  # the host is gone

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.children.pop(pid, None) is not None:
                sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
                code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
                self.send({"op": "exited", "pid": pid, "code": code, "signal": sig})

    def serve(self) -> tuple[socket.socket, dict[str, Any]]:
        """Serve the host. Returns only in a freshly forked candidate."""
        while True:
            self.reap()
            try:
                watched: list[Any] = [self.conn, self.wake_r]
                ready, _, _ = select.select(watched, [], [])
            except InterruptedError:
                continue
            if self.wake_r in ready:
                try:
                    os.read(self.wake_r, 512)
                except BlockingIOError:
                    pass
            if self.conn not in ready:
                continue
            msg = protocol.recv_blocking(self.conn)
            if msg is None:
                os._exit(0)  # the host closed the session
            if msg["op"] != "spawn":
                self.handle(msg)
                continue
            # the host sends a step's spawn requests back to back: fork every one already
            # here in one tight loop (each fork write-protects this process's pages again,
            # and what it touches between forks is copied once per fork)
            batch, after = [msg], None
            while len(batch) < SPAWN_BATCH_MAX and select.select([self.conn], [], [], 0)[0]:
                nxt = protocol.recv_blocking(self.conn)
                if nxt is None:
                    os._exit(0)
                if nxt["op"] != "spawn":
                    after = nxt
                    break
                batch.append(nxt)
            child = self.spawn(batch)
            if child is not None:
                return child
            if after is not None:
                self.handle(after)

    def handle(self, msg: dict[str, Any]) -> None:
        """Every control operation but spawn (serve forks those in batches)."""
        op = msg["op"]
        if op == "kill":
            pid = msg.get("pid")
            if isinstance(pid, int) and pid in self.children:
                for kill in (os.killpg, os.kill):
                    try:
                        kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
        elif op == "discard":
            sweep(self.init_pid)
            self.reap()
            self.children.clear()
            if self.tmp_taken:  # no candidate was kept: /tmp as before the step
                restore_tmp(self.tmp_base)
                restore_offsets(self.offsets)
            self.tmp_base, self.tmp_taken = None, False
        elif op == "ping":
            self.send({"op": "pong"})
        elif op == "tools":
            for name in msg.get("names", []):
                self.ns[name] = make_tool(name)

    def spawn(self, msgs: list[dict[str, Any]]) -> tuple[socket.socket, dict[str, Any]] | None:
        """Fork one candidate per spawn request. Returns (socket, request) in a candidate,
        None in the state process once every request is answered (spawned/spawn_failed)."""
        if not self.tmp_taken:  # the first candidate of a step: /tmp as the state left it
            self.tmp_base, self.tmp_taken = snapshot_tmp(), True
            self.offsets = fd_offsets()
        failed: list[tuple[Any, OSError]] = []
        # everything a fork needs is made first, so that the forks follow each other closely
        prepared: list[tuple[dict[str, Any], socket.socket, socket.socket, int, int]] = []
        for msg in msgs:
            try:
                parent_end, child_end = socket.socketpair()
            except OSError as e:
                failed.append((msg.get("cid"), e))
                continue
            try:
                gate_r, gate_w = os.pipe2(os.O_CLOEXEC)
            except OSError as e:
                parent_end.close()
                child_end.close()
                failed.append((msg.get("cid"), e))
                continue
            prepared.append((msg, parent_end, child_end, gate_r, gate_w))
        rnd = sys.modules.get("random")
        rnd_state = rnd.getstate() if rnd is not None else None
        # collect the last step's garbage, then freeze: the child's collector leaves the
        # shared objects (and so their pages) alone
        gc.collect()
        gc.freeze()
        # the gate: a child runs no code before the host has its socket (code that kills
        # the state process at once must not take the "spawned" message with it)
        started: dict[int, int] = {}  # index in prepared -> pid
        for index, (msg, _, _, gate_r, _) in enumerate(prepared):
            pid = self._fork(msg, failed)
            if pid == 0:
                for other, (_, p_end, c_end, g_r, g_w) in enumerate(prepared):
                    p_end.close()
                    os.close(g_w)
                    if other != index:  # a rival's socket or gate: never a candidate's
                        c_end.close()
                        os.close(g_r)
                self.conn.close()
                self._disarm()
                self.gate = _gate(gate_r, rnd, rnd_state)
                return prepared[index][2], msg
            if pid > 0:
                started[index] = pid
        for index, (msg, parent_end, child_end, gate_r, gate_w) in enumerate(prepared):
            child_end.close()
            os.close(gate_r)
            pid = started.get(index, -1)
            cid = msg.get("cid")
            try:
                if pid > 0:
                    self.children[pid] = cid if isinstance(cid, int) else -1
                    self.send(
                        {"op": "spawned", "cid": cid, "pid": pid, "fd": True},
                        (parent_end.fileno(),),
                    )
            finally:
                parent_end.close()
                if pid > 0:
                    os.write(gate_w, b"g")
                os.close(gate_w)
        for cid, err in failed:
            self.send({"op": "spawn_failed", "cid": cid, "error": str(err), "errno": err.errno})
        return None

    def _fork(self, msg: dict[str, Any], failed: list[tuple[Any, OSError]]) -> int:
        """os.fork(), retried a little at the pids limit; -1 (recorded in `failed`) if not."""
        for attempt in range(FORK_RETRIES):
            try:
                return os.fork()
            except OSError as e:
                # at the pids limit: processes just killed free their slots once init has
                # reaped them, so wait a little before giving up
                if e.errno != errno.EAGAIN or attempt == FORK_RETRIES - 1:
                    failed.append((msg.get("cid"), e))
                    return -1
                time.sleep(0.005)
        return -1


def _gate(gate_r: int, rnd: Any, rnd_state: Any) -> Callable[[], None]:
    def through_gate() -> None:
        """Called in a fresh candidate once its code is compiled, before any of it runs."""
        while True:
            try:
                opened = os.read(gate_r, 1)
                break
            except InterruptedError:
                continue
        os.close(gate_r)
        if not opened:  # the state process died before it could announce this one
            os._exit(0)
        if rnd is not None:  # `random` reseeds itself in forked children: undo that
            rnd.setstate(rnd_state)

    return through_gate


def run_candidate(state: State, sock: socket.socket, msg: dict[str, Any]) -> None:
    """In a forked candidate: run the code, report, park; return only when promoted.

    A spawn request without code forks a spare: it passes its gate, warms itself up and
    waits for its code (`run`) on its own socket - the host forks the next step's
    candidates this way while the model generates."""
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    cpu = int(state.cfg.get("cpu_s", 10))
    soft = cpu if hard == resource.RLIM_INFINITY else min(cpu, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    me = os.getpid()
    limit = int(state.cfg.get("output_max_bytes", 1_000_000))
    depth_max = int(state.cfg.get("json_depth_max", 32))
    code = msg.get("code")
    if code is None:
        state.gate()
        state.gate = lambda: None
        warm_up(state.ns, limit, depth_max)
        code = wait_for_code(sock)
    CURRENT[0] = Candidate(sock, state.cfg)
    result = execute(str(code), state.ns, limit, depth_max, state.gate)
    state.gate = lambda: None
    CURRENT[0] = None
    if os.getpid() != me:  # a process the code forked finished the code: it has no say
        os._exit(0)
    threads = len(sys._current_frames()) - 1
    if threads > 0:
        # threads do not survive the next fork: this process cannot carry the state on
        note = (
            f"The code left {threads} thread(s) running; background threads are not "
            "supported in the sandbox, so this step's changes were not kept."
        )
        result["error"] = f"{result['error']}\n{note}" if result["error"] else note
        result["error_kind"] = result["error_kind"] or "exception"
        result["is_final"], result["final_answer"] = False, None
        result["keep"] = False
    # this candidate's view of /tmp: what survives if it is committed (rivals that still
    # run may change /tmp after this; promotion puts this view back)
    state.tmp_view, state.offsets = snapshot_tmp(), fd_offsets(list(state.offsets))
    try:
        send_result(sock, result)
        while True:
            reply = protocol.recv_blocking(sock)
            if reply is None or reply.get("op") == "exit":
                os._exit(0)
            if reply.get("op") == "promote":
                break
    except (OSError, protocol.ProtocolError):
        os._exit(0)
    sweep(state.init_pid)
    restore_tmp(state.tmp_view)
    restore_offsets(state.offsets)
    resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))
    state.become(sock)


WARM_UP_CODE = "_warm = [str(i) * 2 for i in range(8)]\n_warm"


def warm_up(ns: dict[str, Any], limit: int, depth_max: int) -> None:
    """A spare runs a small step of its own (in a scratch namespace, output discarded) so
    that the copy-on-write faults every step takes - the compiler's, the allocator's, the
    result's encoding - are paid before its code arrives, not after."""
    scratch = {"__builtins__": ns.get("__builtins__", builtins.__dict__)}
    result_frames(execute(WARM_UP_CODE, scratch, limit, depth_max))
    linecache.cache.pop(FILENAME, None)


def wait_for_code(sock: socket.socket) -> str:
    """A spare's wait: its code (`run`), acknowledged with `started` (a spare that dies
    before that never ran it: the host runs the code on a fresh fork); end-of-file or
    anything else ends it."""
    try:
        msg = protocol.recv_blocking(sock)
        if msg is None or msg.get("op") != "run" or not isinstance(msg.get("code"), str):
            os._exit(0)
        protocol.send_blocking(sock, {"op": "started"})
    except (OSError, protocol.ProtocolError):
        os._exit(0)
    return str(msg["code"])


def state_main(conn: socket.socket, init: Init) -> None:
    state = State(conn, init.init_pid, init.cfg, init.ns)
    while True:
        sock, msg = state.serve()
        run_candidate(state, sock, msg)


def configure(msg: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[str]]:
    """The namespace model code runs in (guarded imports, no interactive builtins) and
    the preloaded modules: (namespace, loaded, errors)."""
    for d in msg.get("site_dirs", []):
        if d not in sys.path:
            sys.path.append(d)
    safe = dict(builtins.__dict__)
    safe["__import__"] = make_import_guard(msg.get("allowed_imports", []))
    for name in ("breakpoint", "input", "help", "exit", "quit", "copyright", "credits"):
        safe.pop(name, None)
    ns = {"__name__": "__main__", "__builtins__": safe, "final_answer": final_answer}
    loaded, errors = [], []
    for mod in msg.get("preload", []):
        try:
            __import__(mod)
            loaded.append(mod)
        except Exception as e:
            errors.append(f"{mod}: {type(e).__name__}: {e}")
    return ns, loaded, errors


SCRUB_S = 2.0
"""How long init waits for the killed processes of a finished run to be reaped."""


class Init:
    """pid 1 of the jail: configures once, then forks state processes on request."""

    def __init__(self, conn: socket.socket, init_pid: int) -> None:
        self.conn = conn
        self.init_pid = init_pid
        self.cfg: dict[str, Any] = {"output_max_bytes": 1_000_000, "cpu_s": 10}
        self.ns: dict[str, Any] = {}
        self.states = 0
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def send(self, msg: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
        try:
            protocol.send_blocking(self.conn, msg, fds)
        except OSError:
            os._exit(0)  # the host is gone: the jail ends with its init

    def serve(self) -> socket.socket:
        """Serve the host; returns only in a freshly forked state process."""
        self.send({"op": "hello", "pid": os.getpid(), "python": sys.version.split()[0]})
        while True:
            reap_all()
            try:
                watched: list[Any] = [self.conn, self.wake_r]
                ready, _, _ = select.select(watched, [], [])
            except InterruptedError:
                continue
            if self.wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 512)
            if self.conn not in ready:
                continue
            msg = protocol.recv_blocking(self.conn)
            if msg is None:
                os._exit(0)
            op = msg.get("op")
            if op == "config":
                self.cfg = msg
                self.ns, loaded, errors = configure(msg)
                gc.collect()
                gc.freeze()  # every state shares these objects' pages
                self.send({"op": "ready", "preloaded": loaded, "errors": errors})
            elif op == "state":
                child = self.new_state()
                if child is not None:
                    return child

    def new_state(self) -> socket.socket | None:
        """Fork a state process (after scrubbing what an earlier run left). Returns its
        socket in the child, None in init once the host has the other end."""
        if self.states and not self.scrub():
            self.send({"op": "state_failed", "error": "processes of the last run survived"})
            return None
        parent_end, child_end = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            parent_end.close()
            self.conn.close()
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.close(self.wake_r)
            os.close(self.wake_w)
            return child_end
        child_end.close()
        self.states += 1
        try:
            self.send({"op": "state", "pid": pid, "fd": True}, (parent_end.fileno(),))
        finally:
            parent_end.close()
        return None

    def scrub(self) -> bool:
        """Kill every other process of the jail, reap them, empty /tmp. True when none is
        left (the host thawed the jail first: frozen processes do not die)."""
        deadline = time.monotonic() + SCRUB_S
        while True:
            sweep(self.init_pid)
            if reap_all():
                break
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        restore_tmp({})
        return True


def reap_all() -> bool:
    """Reap every exited child; True when init has no child left."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            return False


def low_descriptor(fd: int) -> int:
    """The control socket moved to the lowest free descriptor. The host passes the number
    it had, and a busy gateway holds thousands: select() cannot watch numbers >= 1024."""
    low = os.dup(fd)
    if low < fd:
        os.close(fd)
        return low
    os.close(low)
    return fd


def main() -> None:
    fd = low_descriptor(int(sys.argv[1]))
    JAILED[0] = sys.argv[2:3] == ["jail"]
    if not JAILED[0]:
        TMP_ROOT[0] = os.getcwd()  # unjailed: the worker's own directory stands for /tmp
    if sys.path and sys.path[0] == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)  # nothing next to the worker is importable by user code
    conn = socket.socket(fileno=fd)
    init_pid = os.getpid()
    if init_pid != 1:
        set_subreaper()
    init = Init(conn, init_pid)
    sock = init.serve()  # returns in a new state process only
    try:
        state_main(sock, init)
    finally:
        os._exit(1)


if __name__ == "__main__":
    main()
