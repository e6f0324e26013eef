"""What a worker's jail uses: its processes, memory, CPU, limit hits and log.

`JailAccounting` is a base of `WorkerProcess` (read-only figures, no state of its own):
cgroup counters where the jail has cgroups, /proc otherwise (unjailed or rlimit-only).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from sandbox import procs
from sandbox.cgroups import JailCounters

CLK_TCK = os.sysconf("SC_CLK_TCK")


class JailAccounting:
    """Figures of one worker's jail (mixed into WorkerProcess, which sets the fields)."""

    cgroups: JailCounters | None
    popen: subprocess.Popen[bytes]
    tmpdir: str

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

    def cpu_seconds(self) -> float:
        """CPU time of the jail's live processes and of the children they reaped (utime,
        stime, cutime, cstime from /proc, in clock ticks: a process whose reaper died
        before it is not counted)."""
        ticks = 0
        for pid in self.process_ids():
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rindex(b")") + 2 :].split()
            ticks += sum(int(x) for x in fields[11:15])
        return ticks / CLK_TCK

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return Path(self.tmpdir, "worker.log").read_text(errors="replace")[-limit:]
        except OSError:
            return "(no log)"


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0
