"""Per-jail host uids: every live jail runs as its own uid/gid, drawn from a configured range.

The kernel keeps several limits per uid, not per process or namespace: descriptors in
flight over unix sockets (SCM_RIGHTS, bounded by the sender's RLIMIT_NOFILE against the
whole uid), inotify instances and watches, epoll watches, pending signals, POSIX message
queue bytes, pipe buffer pages, locked shared memory. When every tenant shared uid 65534,
one tenant could use them all up and break the others. With one uid per jail, a tenant
can only exhaust its own.

Contract:
- `acquire()` returns a uid from `[base, base + count)` that no live jail of this process
  holds and - when a lock directory is usable - that no other process on this host holds
  (an exclusive `flock` on `<lock_dir>/<uid>.lock`, kept while the jail lives; the kernel
  drops it when the holder dies, so a crashed service leaks nothing);
- `release(uid)` is called only after every process of that jail is gone (the worker
  checks its cgroup first); until then the uid is not handed out again;
- uids are handed out round-robin, so a released uid is the last to be reused;
- an exhausted range raises `SandboxSetupError` saying which setting to raise.

The same number is used as the gid. The range must not overlap real users or the
subordinate id ranges of user namespaces on the host (README / docs/sandbox.md, chart).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading

from sandbox.errors import SandboxSetupError

DEFAULT_LOCK_DIR = os.path.join(tempfile.gettempdir(), "distillery-sandbox-uids")


class UidAllocator:
    def __init__(self, base: int, count: int, lock_dir: str | None = DEFAULT_LOCK_DIR) -> None:
        if base < 1 or count < 1 or base + count > 2**31 - 1:
            raise ValueError(f"bad uid range {base}..{base + count - 1}")
        self.base = base
        self.count = count
        self._held: dict[int, int | None] = {}  # uid -> lock fd (None: no lock directory)
        self._cursor = 0
        self._mutex = threading.Lock()
        self._lock_dir = self._usable_lock_dir(lock_dir)

    @staticmethod
    def _usable_lock_dir(lock_dir: str | None) -> str | None:
        if lock_dir is None:
            return None
        try:
            os.makedirs(lock_dir, mode=0o700, exist_ok=True)
        except OSError:
            return None  # process-local allocation only (documented)
        return lock_dir if os.access(lock_dir, os.W_OK) else None

    @property
    def in_use(self) -> int:
        return len(self._held)

    def held(self) -> set[int]:
        return set(self._held)

    def acquire(self) -> int:
        with self._mutex:
            for _ in range(self.count):
                uid = self.base + self._cursor
                self._cursor = (self._cursor + 1) % self.count
                if uid in self._held:
                    continue
                lock = self._lock(uid)
                if lock is False:
                    continue  # another process on this host holds it
                self._held[uid] = lock
                return uid
        raise SandboxSetupError(
            f"all {self.count} sandbox uids ({self.base}..{self.base + self.count - 1}) are in "
            "use by live jails: raise SandboxConfig.uid_count (DISTILLERY_SANDBOX_UID_COUNT) or "
            "lower the number of concurrent runs / pool_size"
        )

    def _lock(self, uid: int) -> int | None | bool:
        if self._lock_dir is None:
            return None
        path = os.path.join(self._lock_dir, f"{uid}.lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        return fd

    def release(self, uid: int) -> None:
        with self._mutex:
            if uid not in self._held:
                return
            fd = self._held.pop(uid)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)  # closing drops the flock


_ALLOCATORS: dict[tuple[int, int, str | None], UidAllocator] = {}
_ALLOCATORS_MUTEX = threading.Lock()


def allocator_for(base: int, count: int, lock_dir: str | None = DEFAULT_LOCK_DIR) -> UidAllocator:
    """The process-wide allocator of one range (every executor of a range shares it)."""
    key = (base, count, lock_dir)
    with _ALLOCATORS_MUTEX:
        alloc = _ALLOCATORS.get(key)
        if alloc is None:
            for b, c, _ in _ALLOCATORS:
                if b < base + count and base < b + c:
                    raise SandboxSetupError(
                        f"sandbox uid range {base}..{base + count - 1} overlaps the range "
                        f"{b}..{b + c - 1} of another executor in this process; use one range"
                    )
            alloc = _ALLOCATORS[key] = UidAllocator(base, count, lock_dir)
        return alloc
