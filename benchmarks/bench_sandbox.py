"""Speed and cost of the jailed sandbox.

    .venv/bin/python -m benchmarks.bench_sandbox [--quick]

Rows (all on the real nsjail jail, default SandboxConfig limits, numpy preloaded):
- fresh nsjail: the baseline - a new jail with the same mounts running `python -c pass`
  (what a sandbox without persistent workers pays per step).
- warm step: `session.run("x = 1")` round trip on a started session (fork of the state
  process, code, result, promotion). Target p50 < 3 ms.
- N=8 forks: `try_candidates` of 8 trivial candidates + `commit`. Target < 15 ms.
  These three are sampled interleaved (one fresh jail, ten warm steps, one N=8 round, ...)
  so that their ratios compare them under the same machine load.
- worker start: nsjail + interpreter + numpy import + handshake (what the pool hides).
- first step, pool miss / pool hit: open_session + first `run` with pool_size 0 vs 2.
- pool under load: concurrent runs (open, 3 steps, close) against a pool of 2, without and
  with 0.2 s of "model time" before each step (a real run spends seconds in the model).
- memory: cgroup memory of one worker after some steps, and its resident processes.
Timings depend on machine load: the header prints the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import tempfile
import time
from dataclasses import replace

from sandbox.config import SandboxConfig
from sandbox.executor import SandboxExecutor
from sandbox.jail import nsjail_argv
from sandbox.process import WorkerProcess

TARGET_STEP_MS = 3.0
TARGET_FORKS_MS = 15.0
N = 8
CLK_TCK = os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


def jail_cpu_s(worker: WorkerProcess) -> float:
    """CPU time of every process the jail ever ran: the live ones plus what they reaped."""
    total = 0
    for pid in worker.process_ids():
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / CLK_TCK


async def quiet(worker: WorkerProcess) -> None:
    """Wait until only init and the state process are left (killed ones reaped)."""
    for _ in range(200):
        if len(worker.process_ids()) == 2:
            return
        await asyncio.sleep(0.005)


async def interleaved(ex: SandboxExecutor, rounds: int) -> dict[str, list[float]]:
    """fresh jail vs warm step vs N=8 forks, sampled alternately; wall and CPU time."""
    assert ex._nsjail is not None
    out: dict[str, list[float]] = {k: [] for k in ("fresh", "step", "forks")}
    cpu: dict[str, list[float]] = {k: [] for k in ("fresh", "step", "forks")}
    codes = [f"y = {i}\ny * 2" for i in range(N)]
    session = await ex.open_session({})
    worker = session.worker
    assert worker is not None
    for _ in range(3):  # warm-up
        await session.run("x = 1")
        await session.try_candidates(codes)
        await session.commit(0)
    with tempfile.TemporaryDirectory() as tmp:
        r, w = os.pipe()
        argv = nsjail_argv(ex.config, ex.layout, ex._nsjail, w, os.path.join(tmp, "log"))
        argv = argv[: argv.index("--") + 1] + [ex.layout.executable, "-E", "-s", "-S", "-c", "pass"]
        for i in range(rounds):
            c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            subprocess.run(argv, check=True, pass_fds=(w,), stdin=subprocess.DEVNULL)
            out["fresh"].append(time.perf_counter() - t0)
            c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu["fresh"].append(c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime)

            await quiet(worker)
            j0, h0 = jail_cpu_s(worker), time.process_time()
            for _ in range(10):
                t0 = time.perf_counter()
                res = await session.run("x = 1")
                out["step"].append(time.perf_counter() - t0)
                assert res.ok, res.error
            h1 = time.process_time()
            await quiet(worker)
            cpu["step"].append((jail_cpu_s(worker) - j0 + h1 - h0) / 10)

            j0, h0 = jail_cpu_s(worker), time.process_time()
            t0 = time.perf_counter()
            results = await session.try_candidates(codes)
            await session.commit(i % N)
            out["forks"].append(time.perf_counter() - t0)
            h1 = time.process_time()
            assert all(x.ok for x in results)
            await quiet(worker)
            cpu["forks"].append(jail_cpu_s(worker) - j0 + h1 - h0)
        os.close(r)
        os.close(w)
    await session.close()
    return {**out, **{f"cpu_{k}": v for k, v in cpu.items()}}


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


async def pool_under_load(
    config: SandboxConfig, clients: int, runs: int, think_s: float
) -> dict[str, float]:
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
                await asyncio.sleep(think_s)
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
    rs = await s.try_candidates([f"b = a * {i}" for i in range(N)])
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
    rounds, n_start, n_runs = (10, 5, 8) if quick else (60, 20, 24)
    base = SandboxConfig(pool_size=0, nice=nice)
    ex = SandboxExecutor(base)
    print(
        f"sandbox benchmark ({'quick' if quick else 'full'}), {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}, niceness {os.nice(0)} (jail {nice}), "
        f"python {ex.layout.executable}"
    )
    samples = await interleaved(ex, rounds)
    current, peak, rss = await worker_memory(ex)
    await ex.aclose()
    starts = await worker_starts(base, n_start)
    misses = await first_steps(replace(base, pool_size=0), n_start)
    hits = await first_steps(replace(base, pool_size=2), n_start)
    loads = [
        (c, think, await pool_under_load(replace(base, pool_size=2), c, n_runs, think))
        for think in (0.0, 0.2)
        for c in (1, 4)
    ]
    fresh, step, forks = samples["fresh"], samples["step"], samples["forks"]

    def mean_ms(key: str) -> str:
        xs = samples[f"cpu_{key}"]
        return f"{1000 * sum(xs) / len(xs):8.2f}"

    rows = [
        ("fresh nsjail `python -c pass` (baseline)", fresh, mean_ms("fresh"), ""),
        ("warm step `x = 1`", step, mean_ms("step"), f"target p50 < {TARGET_STEP_MS:g}"),
        (
            f"N={N} forked candidates + commit",
            forks,
            mean_ms("forks"),
            f"target < {TARGET_FORKS_MS:g}",
        ),
        ("worker start (hidden by the pool)", starts, "", ""),
        ("first step, pool miss (size 0)", misses, "", "open_session + run"),
        ("first step, pool hit (size 2)", hits, "", "open_session + run"),
    ]
    print(f"\n{'what':44} {'p50 ms':>9} {'p99 ms':>9} {'CPU ms':>8}  note")
    for name, xs, cpu_ms, note in rows:
        print(f"{name:44} {pct(xs, 0.5):9.2f} {pct(xs, 0.99):9.2f} {cpu_ms:>8}  {note}")
    print(
        "(CPU ms: mean CPU time of host + every jail process per sample, in 10 ms ticks for "
        "the jail - close to the latency on an idle machine for the sequential rows)"
    )
    print(
        f"\nratios of p50s, same load: fresh jail / warm step = "
        f"{pct(fresh, 0.5) / pct(step, 0.5):.1f}x; "
        f"N={N} round / fresh jail = {pct(forks, 0.5) / pct(fresh, 0.5):.2f}"
    )
    print("\npool of 2 under load (runs of open + 3 steps + close):")
    print(
        f"{'concurrent runs':>16} {'model s/step':>13} {'hit rate':>9} {'open p50 ms':>12} "
        f"{'open p99 ms':>12} {'runs/s':>7}"
    )
    for c, think, r in loads:
        print(
            f"{c:16d} {think:13.1f} {r['hit_rate']:9.2f} {r['open_p50_ms']:12.2f} "
            f"{r['open_p99_ms']:12.2f} {r['runs_per_s']:7.1f}"
        )
    print(
        f"\nmemory of one worker (cgroup, numpy loaded, after an N={N} step): "
        f"now {current / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB; "
        f"resident set of its processes {rss / 2**20:.1f} MiB"
    )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (~20 s)")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness of the jailed processes (run this process under `nice -n N` too)",
    )
    args = parser.parse_args()
    asyncio.run(main(args.quick, args.nice))


if __name__ == "__main__":
    cli()
