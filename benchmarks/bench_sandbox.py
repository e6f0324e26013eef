"""Speed and cost of the jailed sandbox.

    .venv/bin/python -m benchmarks.bench_sandbox [--quick]

Rows (all on the real nsjail jail, default SandboxConfig limits, numpy preloaded):
- fresh nsjail: the baseline - a new jail with the same mounts running `python -c pass`
  (what a sandbox without persistent workers pays per step). Target ratio: warm step < 1/5.
- warm step: `session.run("x = 1")` round trip on a started session (fork of the state
  process, code, result, promotion). Target p50 < 3 ms.
- N=8 forks: `try_candidates` of 8 trivial candidates + `commit`. Target < 15 ms.
- worker start: nsjail + interpreter + numpy import + handshake (what the pool hides).
- first step, pool miss / pool hit: open_session + first `run` with pool_size 0 vs 2.
- pool under load: C concurrent runs (open, 3 steps, close) against a pool of 2.
- memory: peak cgroup memory of one worker after some steps, and its resident processes.
Timings depend on machine load: the table prints the load average next to them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
import time
from dataclasses import replace

from sandbox.config import SandboxConfig
from sandbox.executor import SandboxExecutor
from sandbox.jail import nsjail_argv

TARGET_STEP_MS = 3.0
TARGET_FORKS_MS = 15.0


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


def fresh_jail_ms(ex: SandboxExecutor, n: int) -> list[float]:
    """A new jail per execution: the same mounts and limits, `python -c pass`."""
    assert ex._nsjail is not None
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        r, w = os.pipe()
        argv = nsjail_argv(ex.config, ex.layout, ex._nsjail, w, os.path.join(tmp, "log"))
        argv = argv[: argv.index("--") + 1] + [ex.layout.executable, "-E", "-s", "-S", "-c", "pass"]
        for _ in range(n):
            t0 = time.perf_counter()
            subprocess.run(argv, check=True, pass_fds=(w,), stdin=subprocess.DEVNULL)
            out.append(time.perf_counter() - t0)
        os.close(r)
        os.close(w)
    return out


async def warm_steps(ex: SandboxExecutor, n: int) -> list[float]:
    s = await ex.open_session({})
    for _ in range(10):
        await s.run("x = 1")
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = await s.run("x = 1")
        out.append(time.perf_counter() - t0)
        assert r.ok, r.error
    await s.close()
    return out


async def fork_rounds(ex: SandboxExecutor, n: int, width: int = 8) -> list[float]:
    s = await ex.open_session({})
    codes = [f"y = {i}\ny * 2" for i in range(width)]
    for _ in range(3):
        await s.try_candidates(codes)
        await s.commit(0)
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        rs = await s.try_candidates(codes)
        await s.commit(i % width)
        out.append(time.perf_counter() - t0)
        assert all(r.ok for r in rs)
    await s.close()
    return out


async def worker_starts(config: SandboxConfig, n: int) -> list[float]:
    ex = SandboxExecutor(replace(config, pool_size=0))
    out = []
    for _ in range(n):
        w = await ex.pool.acquire()
        out.append(w.started_s)
        await w.close()
    await ex.aclose()
    return out


async def first_steps(config: SandboxConfig, n: int) -> list[float]:
    ex = SandboxExecutor(config)
    await ex.start()
    out = []
    for _ in range(n):
        await ex.pool.fill()  # a quiet moment between runs lets the pool refill
        t0 = time.perf_counter()
        s = await ex.open_session({})
        await s.run("x = 1")
        out.append(time.perf_counter() - t0)
        await s.close()
    await ex.aclose()
    return out


async def pool_under_load(config: SandboxConfig, clients: int, runs: int) -> dict[str, float]:
    ex = SandboxExecutor(config)
    await ex.start()
    waits: list[float] = []
    queue = list(range(runs))

    async def client() -> None:
        while queue:
            queue.pop()
            t0 = time.perf_counter()
            s = await ex.open_session({})
            waits.append(time.perf_counter() - t0)
            for code in ("import math\nx = 2", "y = math.sqrt(x)", "final_answer(y)"):
                await s.run(code)
            await s.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    stats = ex.stats()
    await ex.aclose()
    return {
        "hit_rate": stats["pool_hit_rate"],
        "open_p50_ms": pct(waits, 0.5),
        "open_p99_ms": pct(waits, 0.99),
        "runs_per_s": runs / wall,
    }


async def worker_memory(ex: SandboxExecutor) -> tuple[int, int, int]:
    s = await ex.open_session({})
    await s.run("import numpy as np\na = np.arange(1000)\nimport math, json, re")
    rs = await s.try_candidates([f"b = a * {i}" for i in range(8)])
    assert all(r.ok for r in rs)
    await s.commit(0)
    w = s.worker
    assert w is not None
    await asyncio.sleep(0.2)
    current, peak = w.memory_bytes()
    rss = 0
    for pid in w.process_ids():
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1]) * 1024
        except OSError:
            pass
    await s.close()
    return current, peak, rss


async def main(quick: bool, nice: int) -> None:
    n_steps, n_rounds, n_fresh, n_first = (100, 20, 10, 5) if quick else (1000, 100, 50, 20)
    base = SandboxConfig(pool_size=0, nice=nice)
    ex = SandboxExecutor(base)
    load = os.getloadavg()[0]
    print(
        f"sandbox benchmark ({'quick' if quick else 'full'}), {os.cpu_count()} CPUs, "
        f"load average {load:.1f}, niceness {os.nice(0)} (jail {nice}), "
        f"python {ex.layout.executable}"
    )
    fresh = fresh_jail_ms(ex, n_fresh)
    steps = await warm_steps(ex, n_steps)
    rounds = await fork_rounds(ex, n_rounds)
    current, peak, rss = await worker_memory(ex)
    await ex.aclose()
    misses = await first_steps(replace(base, pool_size=0), n_first)
    hits = await first_steps(replace(base, pool_size=2), n_first)
    starts = await worker_starts(base, n_first)
    load_rows = {
        c: await pool_under_load(replace(base, pool_size=2), c, 8 if quick else 30) for c in (1, 4)
    }

    rows = [
        ("fresh nsjail `python -c pass` (baseline)", pct(fresh, 0.5), pct(fresh, 0.99), ""),
        ("warm step `x = 1`", pct(steps, 0.5), pct(steps, 0.99), f"target p50 < {TARGET_STEP_MS}"),
        (
            "N=8 forked candidates + commit",
            pct(rounds, 0.5),
            pct(rounds, 0.99),
            f"target < {TARGET_FORKS_MS}",
        ),
        ("worker start (pool fill)", pct(starts, 0.5), pct(starts, 0.99), ""),
        ("first step, pool miss (size 0)", pct(misses, 0.5), pct(misses, 0.99), ""),
        ("first step, pool hit (size 2)", pct(hits, 0.5), pct(hits, 0.99), ""),
    ]
    print(f"\n{'what':44} {'p50 ms':>9} {'p99 ms':>9}  note")
    for name, p50, p99, note in rows:
        print(f"{name:44} {p50:9.2f} {p99:9.2f}  {note}")
    print(
        f"\nwarm step / fresh jail (p50): {pct(steps, 0.5) / pct(fresh, 0.5):.3f} "
        f"(fresh jail is {pct(fresh, 0.5) / pct(steps, 0.5):.1f}x slower)"
    )
    print("\npool of 2 under load (runs of open + 3 steps + close):")
    print(
        f"{'concurrent runs':>16} {'hit rate':>9} {'open p50 ms':>12} {'open p99 ms':>12} "
        f"{'runs/s':>7}"
    )
    for c, r in load_rows.items():
        print(
            f"{c:16d} {r['hit_rate']:9.2f} {r['open_p50_ms']:12.2f} {r['open_p99_ms']:12.2f} "
            f"{r['runs_per_s']:7.1f}"
        )
    print(
        f"\nmemory of one worker (cgroup, numpy loaded): now {current / 2**20:.1f} MiB, "
        f"peak {peak / 2**20:.1f} MiB; resident set of its processes {rss / 2**20:.1f} MiB"
    )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (~15 s)")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness of the jailed processes; with `nice -n N` on this process it measures "
        "with less interference from other load on a shared machine",
    )
    args = parser.parse_args()
    asyncio.run(main(args.quick, args.nice))


if __name__ == "__main__":
    cli()
