"""Sandbox speed on the cgroup v1 host next to the cgroup v2 VM, in one report.

    python -m tests.cgroup2.bench                 # host run, then the VM run, then the table
    python -m tests.cgroup2.bench --measure OUT   # one measurement here (what the VM runs)

Rows: worker start (pool miss: nsjail + interpreter + numpy + handshake), warm step
(`run("x = 1")` on a started session), N=8 forks + commit, and two baselines that need no
sandbox, measured in the same process: fork + exit + wait of this process (what a step's
fork costs on this machine) and spawning `python -S -c pass` (exec + file reads: over 9p in
the VM). The VM runs under software emulation (TCG) on a shared host, so its absolute times
are not comparable with the host's; the "x fork" columns divide by the fork baseline
measured alongside, which is the fairer way to ask whether v2 costs more than v1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sandbox.config import SandboxConfig
from sandbox.executor import SandboxExecutor

N = 8


def _ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1000


async def measure(reps: int) -> dict[str, Any]:
    config = SandboxConfig(pool_size=0, start_timeout_s=600, control_timeout_s=120,
                           step_timeout_s=120)
    ex = SandboxExecutor(config)
    baseline, fork = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-S", "-c", "pass"], check=True)
        baseline.append(time.perf_counter() - t0)
    for _ in range(20):
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        fork.append(time.perf_counter() - t0)
    starts, steps, forks = [], [], []
    try:
        for _ in range(3):
            t0 = time.perf_counter()
            s = await ex.open_session({})
            await s.run("x = 0")
            starts.append(time.perf_counter() - t0)
            for _ in range(reps):
                t0 = time.perf_counter()
                r = await s.run("x = 1")
                steps.append(time.perf_counter() - t0)
                assert r.error is None, r.error
            for _ in range(max(2, reps // 4)):
                t0 = time.perf_counter()
                results = await s.try_candidates(["x = 1"] * N)
                await s.commit(0)
                forks.append(time.perf_counter() - t0)
                assert all(x.error is None for x in results)
            await s.close()
        limits = ex.describe()
    finally:
        await ex.aclose()
    return {
        "limits": limits,
        "kernel": os.uname().release,
        "load": os.getloadavg()[0],
        "baseline_ms": _ms(baseline),
        "fork_ms": _ms(fork),
        "worker_start_ms": _ms(starts),
        "warm_step_ms": _ms(steps),
        "forks_ms": _ms(forks),
        "samples": {"steps": len(steps), "forks": len(forks), "starts": len(starts)},
    }


def table(rows: dict[str, dict[str, Any]]) -> str:
    names = [("worker start", "worker_start_ms"), ("warm step", "warm_step_ms"),
             (f"N={N} forks + commit", "forks_ms"), ("baseline: fork + wait", "fork_ms"),
             ("baseline: spawn python -S", "baseline_ms")]
    cols = list(rows)
    out = ["| | " + " | ".join(f"{c} ms | {c} x fork" for c in cols) + " |",
           "|---|" + "---|---|" * len(cols)]
    for label, key in names:
        cells = []
        for c in cols:
            r = rows[c]
            cells.append(f"{r[key]:.1f} | {r[key] / r['fork_ms']:.1f}")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    for c in cols:
        r = rows[c]
        out.append(f"\n{c}: {r['limits']}; kernel {r['kernel']}; load {r['load']:.1f}; "
                   f"samples {r['samples']}")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--measure", type=Path, help="measure here and write JSON to this path")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--host-json", type=Path, help="reuse a host measurement")
    ap.add_argument("--tree", type=Path, help="checkout the VM measures (default: this one)")
    args = ap.parse_args()
    if args.measure:
        args.measure.write_text(json.dumps(asyncio.run(measure(args.reps)), indent=1))
        return 0
    from tests.cgroup2 import vm

    host = (json.loads(args.host_json.read_text()) if args.host_json
            else asyncio.run(measure(args.reps)))
    python = str(vm.REPO / ".venv" / "bin" / "python")
    job = {"steps": [{
        "name": "bench", "scenario": "container", "cwd": str((args.tree or vm.REPO).resolve()),
        "timeout_s": 3000,
        "argv": [python, "-m", "tests.cgroup2.bench", "--measure", "/tmp/out/bench-v2.json",
                 "--reps", str(args.reps)],
        "env": {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"},
    }]}
    cache = vm.REPO / ".cache" / "cgroup2-vm"
    cache.mkdir(parents=True, exist_ok=True)
    job_file = cache / "bench-job.json"
    job_file.write_text(json.dumps(job))
    run_dir = cache / "runs" / time.strftime("bench-%Y%m%d-%H%M%S")
    rc = vm.main(["--job", str(job_file), "--run-dir", str(run_dir)])
    if rc != 0:
        print(f"the VM run failed (rc {rc}); host only:\n{table({'v1 host': host})}")
        return rc
    guest = json.loads((run_dir / "bench-v2.json").read_text())
    print(table({"v1 host": host, "v2 VM (TCG)": guest}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
