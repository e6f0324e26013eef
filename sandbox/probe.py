"""Where the jail's interpreter lives: what must be mounted for it and the allowed packages.

The probe runs in the configured interpreter (a subprocess, so a venv interpreter reports
its own site-packages) and lists: the real executable, the base installation (standard
library and libpython) and, for each allowed non-stdlib module, the top-level entries of
its distribution and of that distribution's requirements (numpy -> numpy/, numpy.libs/;
sympy -> sympy/, mpmath/). Only those entries are mounted into the jail, not the venv.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from dataclasses import dataclass

from sandbox.errors import SandboxSetupError

PROBE_SOURCE = r"""
import importlib.metadata as md, importlib.util, json, os, re, sys
mods = json.loads(sys.argv[1])
exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
out = {"executable": exe, "prefixes": sorted({os.path.realpath(sys.base_prefix),
       os.path.realpath(sys.base_exec_prefix)}), "version": list(sys.version_info[:2]),
       "entries": {}, "missing": []}
dist_of = md.packages_distributions()
seen = set()
def add_path(p):
    name = os.path.basename(p)
    if os.path.exists(p) and not name.endswith((".dist-info", ".egg-info", ".pth")):
        out["entries"].setdefault(name, os.path.realpath(p))
def add_dist(name):
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in seen:
        return
    seen.add(key)
    try:
        d = md.distribution(name)
    except md.PackageNotFoundError:
        return
    for f in d.files or []:
        top = f.parts[0]
        if top in ("..", "__pycache__") or top.endswith((".data", ".dist-info")):
            continue
        add_path(str(d.locate_file(top)))
    for req in d.requires or []:
        spec, _, marker = req.partition(";")
        if "extra" in marker:
            continue
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
        if m:
            add_dist(m.group(1))
for mod in mods:
    top = mod.split(".")[0]
    if top in sys.stdlib_module_names:
        continue
    spec = importlib.util.find_spec(top)
    if spec is None:
        out["missing"].append(mod)
        continue
    if dist_of.get(top):
        for d in dist_of[top]:
            add_dist(d)
    elif spec.submodule_search_locations:
        add_path(list(spec.submodule_search_locations)[0])
    elif spec.origin and os.path.isabs(spec.origin):
        add_path(spec.origin)
print(json.dumps(out))
"""


@dataclass(frozen=True)
class InterpreterLayout:
    executable: str
    """Real path of the interpreter binary (a venv's python resolves to its base)."""
    prefixes: tuple[str, ...]
    """Base installation directories (stdlib, lib-dynload, libpython): mounted read-only."""
    entries: tuple[tuple[str, str], ...]
    """(top-level name, host path) of every package file/dir the allowed imports need."""
    missing: tuple[str, ...]
    """Allowed modules the interpreter does not have."""

    @property
    def site_dirs(self) -> tuple[str, ...]:
        """Host directories holding the entries (unjailed mode puts them on sys.path)."""
        seen: dict[str, None] = {}
        for _, path in self.entries:
            seen.setdefault(path.rsplit("/", 1)[0], None)
        return tuple(seen)


@functools.lru_cache(maxsize=8)
def probe_interpreter(python: str | None, modules: tuple[str, ...]) -> InterpreterLayout:
    exe = python or sys.executable
    try:
        proc = subprocess.run(
            [exe, "-I", "-c", PROBE_SOURCE, json.dumps(list(modules))],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SandboxSetupError(f"cannot run the sandbox interpreter {exe!r}: {e}") from e
    if proc.returncode != 0:
        raise SandboxSetupError(
            f"probing the sandbox interpreter {exe!r} failed (exit {proc.returncode}): "
            f"{proc.stderr.strip()[-2000:]}"
        )
    data = json.loads(proc.stdout)
    if tuple(data["version"]) < (3, 10):
        raise SandboxSetupError(f"the sandbox interpreter {exe!r} is older than Python 3.10")
    return InterpreterLayout(
        executable=data["executable"],
        prefixes=tuple(data["prefixes"]),
        entries=tuple(sorted(data["entries"].items())),
        missing=tuple(data["missing"]),
    )
