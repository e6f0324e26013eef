"""A cpio "newc" archive writer (the initramfs format; the host has no cpio binary).

Contract: `Archive` collects directories, files, symlinks and device nodes and `write(path)`
writes a newc archive the Linux kernel unpacks as its initial rootfs. Parent directories of
an added entry must be added first (the kernel creates entries in archive order).
`module_closure(kernel_dir, names)` lists the .ko files of `names` and every module they
depend on (from each module's .modinfo `depends=`), dependencies first: a dpkg -x'd kernel
package has no modules.dep.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO


class Archive:
    def __init__(self) -> None:
        self._entries: list[tuple[str, int, bytes, int, int]] = []
        self._names: set[str] = set()

    def _add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        name = name.strip("/")
        if name in self._names:
            raise ValueError(f"duplicate initramfs entry {name}")
        parent = name.rpartition("/")[0]
        if parent and parent not in self._names:
            raise ValueError(f"add the directory {parent} before {name}")
        self._names.add(name)
        self._entries.append((name, mode, data, *rdev))

    def dir(self, name: str) -> None:
        self._add(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._add(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._add(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._add(name, stat.S_IFCHR | mode, b"", (major, minor))

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(".part")
        with open(tmp, "wb") as out:
            for ino, (name, mode, data, major, minor) in enumerate(self._entries, start=1):
                _entry(out, ino, name, mode, data, major, minor)
            _entry(out, 0, "TRAILER!!!", 0, b"", 0, 0)
        os.replace(tmp, path)


def _entry(
    out: BinaryIO, ino: int, name: str, mode: int, data: bytes, rmaj: int, rmin: int
) -> None:
    encoded = name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(mode) else 1
    fields = [ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmaj, rmin, len(encoded), 0]
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    out.write(header + encoded)
    out.write(b"\0" * (-out.tell() % 4))
    out.write(data)
    out.write(b"\0" * (-out.tell() % 4))


def _modinfo(path: Path, key: str) -> list[str]:
    blob = path.read_bytes()
    needle = b"\0" + key.encode() + b"="
    at = blob.find(needle)
    if at < 0:
        return []
    end = blob.index(b"\0", at + 1)
    value = blob[at + len(needle) : end].decode()
    return [v for v in value.split(",") if v]


def module_closure(kernel_dir: Path, names: list[str]) -> list[Path]:
    """The .ko files for `names` plus their dependencies, each after what it needs."""
    by_name: dict[str, Path] = {}
    for dirpath, _, files in os.walk(kernel_dir):
        for f in files:
            if f.endswith(".ko"):
                by_name[f[:-3].replace("-", "_")] = Path(dirpath, f)
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        key = name.replace("-", "_")
        if key in seen:
            return
        seen.add(key)
        path = by_name.get(key)
        if path is None:
            raise FileNotFoundError(f"kernel module {name} not found under {kernel_dir}")
        for dep in _modinfo(path, "depends"):
            visit(dep)
        order.append(path)

    for n in names:
        visit(n)
    return order
