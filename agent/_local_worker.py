"""The worker process of agent.local_executor (runs as a script; stdlib only; NOT a sandbox).

Protocol: JSON lines. The host talks to the current *state process* over the worker's
original stdin/stdout (moved to private fds; fd 0 and 1 become /dev/null so user code
cannot corrupt the channel). The state process holds the session's Python namespace and
never runs user code itself: for every code it forks a candidate child (copy-on-write
copy of the state) with a private pipe pair, relays the child's tool calls to the host,
and enforces the step timeout by killing the child.

    host -> state: init | try {codes} | tool_result {cand, call, result|error}
                   | commit {index} | discard | close
    state -> host: ready {pid} | tool {cand, call, name, args, kwargs} | results {results}
                   | committed {pid} (sent by the adopted child) | discarded | error {message}

On commit the chosen child becomes the new state process: it takes over the host
channel, and its parent (the old state) only waits for it and exits with it, so every
process is reaped by its own parent and a clean close unwinds the whole chain.
"""

from __future__ import annotations

import ast
import builtins
import io
import json
import linecache
import os
import select
import signal
import sys
import time
import traceback
from typing import Any, NoReturn

CODE_FILENAME = "<code>"


class Channel:
    """JSON lines over a pair of raw fds (select-friendly: no hidden buffering)."""

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd, self.wfd = rfd, wfd
        self.buf = b""
        self.eof = False

    def send(self, msg: dict[str, Any]) -> None:
        data = (json.dumps(msg, default=str) + "\n").encode()
        view = memoryview(data)
        while view:
            n = os.write(self.wfd, view)
            view = view[n:]

    def pop_lines(self) -> list[dict[str, Any]]:
        out = []
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            if line.strip():
                out.append(json.loads(line))
        return out

    def fill(self) -> None:
        """One read (call when select says readable)."""
        chunk = os.read(self.rfd, 1 << 16)
        if not chunk:
            self.eof = True
        self.buf += chunk

    def recv(self) -> dict[str, Any] | None:
        """Block for the next message; None at EOF."""
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                if line.strip():
                    return json.loads(line)
            if self.eof:
                return None
            self.fill()


class FinalAnswer(BaseException):  # noqa: N818 - a control-flow signal, not an error
    """Raised by final_answer(); BaseException so `except Exception` in user code lets it pass."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value


class ToolError(RuntimeError):
    """A host tool failed; user code may catch it."""


class CappedText(io.TextIOBase):
    """A stdout replacement that keeps at most `cap` characters."""

    def __init__(self, cap: int) -> None:
        self.cap, self.size, self.dropped = cap, 0, 0
        self.parts: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        room = self.cap - self.size
        if room > 0:
            self.parts.append(s[:room])
            self.size += min(len(s), room)
        self.dropped += max(len(s) - max(room, 0), 0)
        return len(s)

    def getvalue(self) -> str:
        text = "".join(self.parts)
        if self.dropped:
            text += f"\n[... output limit reached: {self.dropped} more characters dropped ...]\n"
        return text


class Worker:
    def __init__(self, host: Channel) -> None:
        self.host = host
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        self.step_timeout_s = 10.0
        self.max_output_chars = 1_000_000
        self.channel: Channel = host  # where tool calls go (host, or a candidate's private pipe)
        self.children: list[dict[str, Any]] = []
        self.call_seq = 0

    # -- the state process ----------------------------------------------------------
    def serve(self) -> None:
        while True:
            msg = self.host.recv()
            if msg is None or msg.get("op") == "close":
                self.kill_children()
                reap_all_and_exit()
            op = msg.get("op")
            if op == "init":
                self.step_timeout_s = float(msg.get("step_timeout_s", self.step_timeout_s))
                self.max_output_chars = int(msg.get("max_output_chars", self.max_output_chars))
                for name in msg.get("tools", []):
                    self.namespace[name] = self.make_tool(name)
                self.namespace["final_answer"] = final_answer
                self.host.send({"type": "ready", "pid": os.getpid()})
            elif op == "try":
                if self.run_candidates(list(msg["codes"])) == "adopted":
                    continue  # this process is a committed child: it is the state now
            elif op == "commit":
                self.commit(int(msg["index"]))
            elif op == "discard":
                self.kill_children()
                self.host.send({"type": "discarded"})
            else:
                self.host.send({"type": "error", "message": f"unknown op {op!r}"})

    def run_candidates(self, codes: list[str]) -> str | None:
        self.kill_children()
        for i, code in enumerate(codes):
            up_r, up_w = os.pipe()
            down_r, down_w = os.pipe()
            pid = os.fork()
            if pid == 0:  # candidate child
                os.close(up_r)
                os.close(down_w)
                for c in self.children:  # the siblings' ends must not stay open here
                    os.close(c["chan"].rfd)
                    os.close(c["chan"].wfd)
                self.children = []
                return self.candidate(i, code, Channel(down_r, up_w))
            os.close(up_w)
            os.close(down_r)
            self.children.append({
                "pid": pid, "chan": Channel(up_r, down_w), "index": i, "result": None,
                "used_s": 0.0, "since": time.monotonic(), "paused": False, "alive": True,
            })  # fmt: skip
        self.collect()
        self.host.send({"type": "results", "results": [c["result"] for c in self.children]})
        return None

    def collect(self) -> None:
        """Relay tool calls until every child has a result, killing children over time."""
        while True:
            pending = [c for c in self.children if c["result"] is None]
            if not pending:
                return
            now = time.monotonic()
            waits = [
                self.step_timeout_s - c["used_s"] - (now - c["since"])
                for c in pending
                if not c["paused"]
            ]
            timeout = max(min(waits), 0.0) if waits else None
            fds = [c["chan"].rfd for c in pending] + [self.host.rfd]
            ready, _, _ = select.select(fds, [], [], timeout)
            for c in pending:
                if c["chan"].rfd in ready:
                    self.on_child_readable(c)
            if self.host.rfd in ready:
                self.host.fill()
                for msg in self.host.pop_lines():
                    self.on_host_message(msg)
                if self.host.eof:
                    self.kill_children()
                    os._exit(0)
            now = time.monotonic()
            for c in self.children:
                over = c["used_s"] + (now - c["since"]) >= self.step_timeout_s
                if c["result"] is None and not c["paused"] and over:
                    self.kill_child(c)
                    c["result"] = error_result(
                        f"TimeoutError: the code ran longer than {self.step_timeout_s:g} s and "
                        "was stopped. Make it faster (smaller search, fewer iterations).",
                        "timeout",
                        c["used_s"] + (now - c["since"]),
                    )

    def on_child_readable(self, c: dict[str, Any]) -> None:
        chan: Channel = c["chan"]
        chan.fill()
        for msg in chan.pop_lines():
            if msg["type"] == "tool":
                c["used_s"] += time.monotonic() - c["since"]
                c["paused"] = True  # the clock stops while the host runs the tool
                self.host.send({**msg, "cand": c["index"]})
            elif msg["type"] == "result":
                c["result"] = msg["result"]
        if chan.eof and c["result"] is None:
            status = self.kill_child(c)
            c["result"] = error_result(crash_message(status), "crash", c["used_s"])

    def on_host_message(self, msg: dict[str, Any]) -> None:
        if msg.get("op") == "close":  # the host gave up on this step (cancelled, timed out)
            self.kill_children()
            reap_all_and_exit()
        if msg.get("op") != "tool_result":
            self.host.send({"type": "error", "message": f"unexpected {msg.get('op')!r} during try"})
            return
        for c in self.children:
            if c["index"] == msg["cand"] and c["alive"]:
                c["paused"] = False
                c["since"] = time.monotonic()
                try:
                    c["chan"].send({"type": "tool_result", **msg})
                except OSError:
                    pass  # the child died; its EOF is handled by the select loop

    def commit(self, index: int) -> None:
        chosen = next((c for c in self.children if c["index"] == index and c["alive"]), None)
        if chosen is None:
            self.host.send({"type": "error", "message": f"candidate {index} cannot be committed"})
            return
        for c in self.children:
            if c is not chosen:
                self.kill_child(c)
        self.children = []
        chosen["chan"].send({"type": "adopt"})
        os.close(chosen["chan"].rfd)
        os.close(chosen["chan"].wfd)
        # From here on the chosen child owns the host channel; this process only reaps
        # (its successor, and in the first process every orphan of the session) and exits.
        reap_all_and_exit()

    def kill_child(self, c: dict[str, Any]) -> int | None:
        status = None
        if c["alive"]:
            c["alive"] = False
            try:
                os.kill(c["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, status = os.waitpid(c["pid"], 0)
            for fd in (c["chan"].rfd, c["chan"].wfd):
                try:
                    os.close(fd)
                except OSError:
                    pass
        return status

    def kill_children(self) -> None:
        for c in self.children:
            self.kill_child(c)
        self.children = []

    # -- a candidate child ----------------------------------------------------------
    def candidate(self, index: int, code: str, chan: Channel) -> str | None:
        self.channel = chan
        result = execute(code, self.namespace, self.max_output_chars)
        chan.send({"type": "result", "result": result})
        msg = chan.recv()  # wait for the verdict
        if msg is None or msg.get("type") != "adopt":
            os._exit(0)
        os.close(chan.rfd)
        os.close(chan.wfd)
        self.channel = self.host
        self.host.send({"type": "committed", "pid": os.getpid()})
        return "adopted"

    def make_tool(self, name: str) -> Any:
        worker = self

        def tool(*args: Any, **kwargs: Any) -> Any:
            worker.call_seq += 1
            call = worker.call_seq
            worker.channel.send(
                {"type": "tool", "call": call, "name": name, "args": list(args), "kwargs": kwargs}
            )
            while True:
                msg = worker.channel.recv()
                if msg is None:
                    os._exit(3)  # the state process is gone
                if msg.get("type") == "tool_result" and msg.get("call") == call:
                    break
            if msg.get("error") is not None:
                raise ToolError(msg["error"])
            return msg.get("result")

        tool.__name__ = tool.__qualname__ = name
        return tool


def reap_all_and_exit() -> NoReturn:
    """Wait for every child (the first process is a subreaper: orphans come to it), exit."""
    while True:
        try:
            os.wait()
        except ChildProcessError:
            os._exit(0)
        except InterruptedError:
            continue


def become_subreaper() -> None:
    """Orphaned descendants get reparented here instead of to PID 1 (which may not reap)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def final_answer(answer: Any = None) -> None:
    raise FinalAnswer(answer)


def json_safe(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def error_result(message: str, kind: str, duration_s: float = 0.0) -> dict[str, Any]:
    return {"stdout": "", "value_repr": None, "error": message, "error_kind": kind,
            "is_final": False, "final_answer": None, "duration_s": duration_s}  # fmt: skip


def crash_message(status: int | None) -> str:
    if status is not None and os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        return f"the code's process died ({sig}); if it used much memory, use less"
    code = os.waitstatus_to_exitcode(status) if status is not None else "?"
    return f"the code's process exited unexpectedly (exit status {code})"


def execute(code: str, namespace: dict[str, Any], max_output_chars: int) -> dict[str, Any]:
    """Run `code` in `namespace`; capture prints and the last expression's value."""
    out = CappedText(max_output_chars)
    t0 = time.perf_counter()
    result: dict[str, Any] = error_result("", "exception")
    result["error"] = None
    result["error_kind"] = None
    lines = code.splitlines(keepends=True)
    linecache.cache[CODE_FILENAME] = (len(code), None, lines, CODE_FILENAME)
    saved = sys.stdout, sys.stdin
    sys.stdout, sys.stdin = out, io.StringIO("")
    try:
        try:
            tree = ast.parse(code, CODE_FILENAME, "exec")
        except SyntaxError as e:
            result["error"] = "".join(traceback.format_exception_only(type(e), e)).rstrip("\n")
            result["error_kind"] = "syntax"
            return result
        last = None
        tail = tree.body[-1] if tree.body else None
        if isinstance(tail, ast.Expr):
            tree.body.pop()
            last = ast.Expression(tail.value)
        try:
            exec(compile(tree, CODE_FILENAME, "exec"), namespace)
            if last is not None:
                value = eval(compile(last, CODE_FILENAME, "eval"), namespace)
                result["value_repr"] = repr(value)
        except FinalAnswer as fa:
            result["is_final"] = True
            result["final_answer"] = json_safe(fa.value)
        except SystemExit:
            result["error"] = "SystemExit: the code called exit(); call final_answer(...) to finish"
            result["error_kind"] = "exception"
        except BaseException as e:  # noqa: BLE001 - every user error becomes an observation
            result["error"] = format_user_traceback(e)
            result["error_kind"] = "exception"
    finally:
        sys.stdout, sys.stdin = saved
        result["stdout"] = out.getvalue()
        result["duration_s"] = time.perf_counter() - t0
    return result


def format_user_traceback(e: BaseException) -> str:
    """The traceback with only the frames of the user's code (library internals dropped)."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == CODE_FILENAME]
    text = "Traceback (most recent call last):\n"
    text += "".join(traceback.format_list(frames))
    text += "".join(traceback.format_exception_only(type(e), e))
    return text.rstrip("\n")


def main() -> None:
    # Keep the host channel on private fds; user code sees /dev/null on fd 0 and 1.
    rfd, wfd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    become_subreaper()
    Worker(Channel(rfd, wfd)).serve()


if __name__ == "__main__":
    main()
