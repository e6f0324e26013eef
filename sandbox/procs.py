"""Host-side process-tree helpers (/proc): used for the unjailed mode and leak checks."""

from __future__ import annotations

import contextlib
import os
import signal


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live process (zombies left out)."""
    out: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
            fields = stat[stat.rindex(b")") + 2 :].split()
            if fields[0] not in (b"Z", b"X"):
                out[int(name)] = int(fields[1])
        except (OSError, ValueError, IndexError):
            continue
    return out


def descendants(root: int) -> list[int]:
    """Every live process below `root` (not `root` itself, not zombies)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parents().items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def is_alive(pid: int) -> bool:
    """True for a running process (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 :][:1] not in (b"Z", b"X")


def kill_tree(root: int) -> None:
    """SIGKILL `root` and everything below it (children first seen, then the root)."""
    for _ in range(3):
        victims = descendants(root)
        for pid in victims:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if not victims:
            break
    with contextlib.suppress(OSError):
        os.kill(root, signal.SIGKILL)
