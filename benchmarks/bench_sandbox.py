"""Speed and cost of the jailed sandbox.

    .venv/bin/python -m benchmarks.bench_sandbox [--quick]

Rows (all on the real nsjail jail, default SandboxConfig limits, numpy preloaded):
- fresh nsjail: the baseline - a new jail with the same mounts running `python -c pass`
  (what a sandbox without persistent workers pays per step).
- warm step: `session.run("x = 1")` round trip on a started session (the candidate - a
  spare forked when the last step ended, or a fork made now - runs the code, reports, is
  promoted), after MODEL_S of "model time" as in an agent loop (the model generates the
  next step's code between two steps). Target p50 < 3 ms.
- N=8 candidates: `try_candidates` of 8 trivial candidates + `commit`, after MODEL_S of
  model time. Target < 15 ms.
- the same two back to back (no model time: every fork, spare or not, is on the path).
  These are sampled interleaved (one fresh jail, ten warm steps, one N=8 round, ...) so
  that their ratios compare them under the same machine load.
- worker start: nsjail + interpreter + numpy import + handshake (what the pool hides).
- first step, pool miss / pool hit: open_session + first `run` with pool_size 0 vs 2.
- pool under load: concurrent runs (open, 3 steps, close) against a pool of 2, without and
  with 0.2 s of "model time" before each step (a real run spends seconds in the model).
- memory: cgroup memory of one worker after some steps, and its resident processes.
- hostile tenant: the worst event-loop stall and the latency of another
  tenant's `1 + 1` while one tenant sends the largest legal output, forged maximum-size
  frames, or huge tool-call arguments from 4 candidates at a time; and the CPU a jail
  uses between steps after a step that armed a spinning timer and left a spinner behind.
Timings depend on machine load: the header prints the load average.

`--compare REF` measures the same rows for the sandbox package of git revision REF
(`before`) and of the working tree (`after`) in one run: the two run in alternating
subprocesses, chunk by chunk, so that both see the same machine load.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from sandbox.config import SandboxConfig
from sandbox.executor import SandboxExecutor
from sandbox.jail import nsjail_argv
from sandbox.process import WorkerProcess

TARGET_STEP_MS = 3.0
TARGET_FORKS_MS = 15.0
N = 8
MODEL_S = 0.05
"""Model time before each step of the main rows: a lower bound (a 0.5B model generating a
step of ~100 tokens takes a few hundred ms on a GPU, seconds on a CPU)."""
ROWS = ("fresh", "step", "step_b2b", "forks", "forks_b2b")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


CPUACCT = Path("/sys/fs/cgroup/cpuacct")


def own_cpuacct_group() -> Path | None:
    """Move this process into a cgroup v1 cpuacct group of its own (removed at exit), so
    that `cpuacct.usage` counts it and every process it starts - nsjail moves the jails
    only in the memory, pids and cpu hierarchies - to the nanosecond. None where there is
    no writable cpuacct hierarchy (then CPU is counted in ticks, see total_cpu_s)."""
    group = CPUACCT / f"distillery-bench-{os.getpid()}"
    try:
        group.mkdir(exist_ok=True)
        (group / "cgroup.procs").write_text(str(os.getpid()))
    except OSError:
        return None

    def leave() -> None:
        with contextlib.suppress(OSError):
            (CPUACCT / "cgroup.procs").write_text(str(os.getpid()))
            group.rmdir()

    atexit.register(leave)
    return group


CPU_GROUP: list[Path | None] = [None]


def total_cpu_s(worker: WorkerProcess) -> float:
    """CPU time of this process and of the jail: exact with our own cpuacct group, else
    this process's plus the jail's live processes' (10 ms ticks; it misses processes whose
    reaper died before them)."""
    group = CPU_GROUP[0]
    if group is not None:
        return int((group / "cpuacct.usage").read_text()) / 1e9
    return time.process_time() + worker.cpu_seconds()


async def quiet(worker: WorkerProcess) -> None:
    """Wait until only init, the state process and its parked spares are left (killed ones
    reaped). The spares of older trees: none."""
    spares = getattr(worker, "spare_forks", list)
    for _ in range(200):
        if len(worker.process_ids()) == 2 + len(spares()):
            return
        await asyncio.sleep(0.005)


async def interleaved(ex: SandboxExecutor, rounds: int) -> dict[str, list[float]]:
    """fresh jail vs warm steps vs N=8 rounds (after model time, back to back), sampled
    alternately; wall and CPU time (the CPU of a step includes forking its spares)."""
    assert ex._nsjail is not None
    out: dict[str, list[float]] = {k: [] for k in ROWS}
    cpu: dict[str, list[float]] = {k: [] for k in ROWS}
    codes = [f"y = {i}\ny * 2" for i in range(N)]
    session = await ex.open_session({})
    worker = session.worker
    assert worker is not None
    for _ in range(3):  # warm-up
        await session.run("x = 1")
        await session.try_candidates(codes)
        await session.commit(0)

    # CPU per sample is the steady state: from right after a first, unmeasured step (so
    # the window holds the spares forked for the measured steps, in their model time) to
    # right after the last measured step (before the spares forked for a next one)
    async def steps(key: str, think_s: float) -> None:
        await quiet(worker)
        await session.run("x = 1")
        c0 = total_cpu_s(worker)
        for _ in range(10):
            await asyncio.sleep(think_s)
            t0 = time.perf_counter()
            res = await session.run("x = 1")
            out[key].append(time.perf_counter() - t0)
            assert res.ok, res.error
        cpu[key].append((total_cpu_s(worker) - c0) / 10)

    async def forks(key: str, think_s: float, i: int) -> None:
        await quiet(worker)
        await session.try_candidates(codes)
        await session.commit(i % N)
        c0 = total_cpu_s(worker)
        await asyncio.sleep(think_s)
        t0 = time.perf_counter()
        results = await session.try_candidates(codes)
        await session.commit((i + 1) % N)
        out[key].append(time.perf_counter() - t0)
        cpu[key].append(total_cpu_s(worker) - c0)
        assert all(x.ok for x in results)

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
            await steps("step", MODEL_S)
            await steps("step_b2b", 0.0)
            await forks("forks", MODEL_S, i)
            await forks("forks_b2b", 0.0, i)
        os.close(r)
        os.close(w)
    await session.close()
    return {**out, **{f"cpu_{k}": v for k, v in cpu.items()}}


MODEL_MS = f"{MODEL_S * 1000:g} ms model time"
STEP_ROWS = (
    ("fresh", "fresh nsjail `python -c pass`", ""),
    ("step", f"warm step `x = 1` ({MODEL_MS})", f"p50 < {TARGET_STEP_MS:g} ms idle"),
    ("step_b2b", "warm step `x = 1`, back to back", ""),
    ("forks", f"N={N} candidates + commit ({MODEL_MS})", f"< {TARGET_FORKS_MS:g} ms idle"),
    ("forks_b2b", f"N={N} candidates + commit, back to back", ""),
)


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
    CPU_GROUP[0] = own_cpuacct_group()
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
        *[(name, samples[key], mean_ms(key), note) for key, name, note in STEP_ROWS[1:]],
        ("worker start (hidden by the pool)", starts, "", ""),
        ("first step, pool miss (size 0)", misses, "", "open_session + run"),
        ("first step, pool hit (size 2)", hits, "", "open_session + run"),
    ]
    print(f"\n{'what':44} {'p50 ms':>9} {'p99 ms':>9} {'CPU ms':>8}  note")
    for name, xs, cpu_ms, note in rows:
        print(f"{name:44} {pct(xs, 0.5):9.2f} {pct(xs, 0.99):9.2f} {cpu_ms:>8}  {note}")
    print(
        "(CPU ms: mean CPU time of host + every jail process per sample, "
        + ("exact (cpuacct)" if CPU_GROUP[0] else "in 10 ms ticks for the jail")
        + "; a step's includes forking the spares it ran on)"
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


# --- hostile tenant ------------------------------------------------------------------------

HOSTILE = {
    "largest legal output": "print('\\x01' * {cap_minus})",
    "forged max-size frames": (
        "import os, socket, stat, struct\n"
        "for fd in range(3, 64):\n"
        "    try:\n"
        "        if stat.S_ISSOCK(os.fstat(fd).st_mode):\n"
        "            s = socket.socket(fileno=os.dup(fd)); break\n"
        "    except OSError:\n        pass\n"
        "n = {frame} // 2 - 8\n"
        "body = b'{{\"op\":\"text\",\"field\":\"stdout\",\"data\":[' + b'0,' * n + b'0]}}'\n"
        "s.sendall(struct.pack('>I', len(body)) + body)\nimport time\ntime.sleep(5)"
    ),
    "huge tool-call arguments": "web_search([{{}}] * 1_000_000)",
}


async def _echo(*args: object, **kwargs: object) -> str:
    return "ok"


async def _probe(stop: asyncio.Event, lags: list[float]) -> None:
    """How late a 1 ms sleep wakes up: the event loop's stalls."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        t = loop.time()
        await asyncio.sleep(0.001)
        lags.append(loop.time() - t - 0.001)


async def _attack(stop: asyncio.Event, hostile: Any, code: str) -> None:
    while not stop.is_set():
        await hostile.try_candidates([code] * 4)
        await hostile.discard()


async def hostile_stall(config: SandboxConfig, seconds: float) -> dict[str, dict[str, float]]:
    """Per attack: victim `1 + 1` p50/p99/max and the event loop's worst lag (ms)."""
    ex = SandboxExecutor(replace(config, pool_size=0, fork_width=4))
    out: dict[str, dict[str, float]] = {}
    cap, frame = ex.config.output_max_bytes, ex.config.max_frame_bytes
    for name in ["none", *HOSTILE]:
        victim = await ex.open_session({})
        hostile = await ex.open_session({"web_search": _echo})
        await victim.run("1 + 1")
        code = HOSTILE.get(name, "1").format(cap_minus=cap - 100, frame=frame - 64)
        stop = asyncio.Event()
        lags: list[float] = []
        tasks = [asyncio.create_task(_probe(stop, lags))]
        if name != "none":
            tasks.append(asyncio.create_task(_attack(stop, hostile, code)))
        await asyncio.sleep(0.2)
        times: list[float] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(times) < 3:
            t0 = time.perf_counter()
            r = await victim.run("1 + 1")
            times.append(time.perf_counter() - t0)
            assert r.value_repr == "2", r.error
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        out[name] = {
            "p50": pct(times, 0.5),
            "p99": pct(times, 0.99),
            "max": max(times) * 1000,
            "lag_max": max(lags) * 1000 if lags else 0.0,
        }
        await victim.close()
        await hostile.close()
    await ex.aclose()
    return out


BURN = """
import os, signal, time
def spin(*_):
    t = time.process_time()
    while time.process_time() - t < 0.2:
        pass
signal.signal(signal.SIGALRM, spin)
signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
if os.fork() == 0:
    os.setsid()
    while True:
        pass
"""


async def between_steps_cpu(config: SandboxConfig, wait_s: float = 1.0) -> dict[str, float]:
    """CPU seconds per second the jail uses while no step runs: after an honest step, and
    after a step that armed a spinning timer and left a detached spinner."""
    ex = SandboxExecutor(replace(config, pool_size=0))
    out: dict[str, float] = {}
    for name, code in (("honest step", "x = 1"), ("hostile step", BURN)):
        s = await ex.open_session({})
        await s.run(code)
        w = s.worker
        assert w is not None
        await asyncio.sleep(0.3)
        c0 = w.cpu_seconds()
        await asyncio.sleep(wait_s)
        out[name] = (w.cpu_seconds() - c0) / wait_s
        await s.close()
    await ex.aclose()
    return out


# hostile code reaches these modules anyway (random._os is os): open the allow-list up
HOSTILE_IMPORTS = ["os", "signal", "socket", "stat", "struct", "time"]


async def part(name: str, rounds: int, seconds: float) -> object:
    import sandbox

    print(f"sandbox package: {Path(sandbox.__file__).parent}", file=sys.stderr)
    CPU_GROUP[0] = own_cpuacct_group()
    base = SandboxConfig(pool_size=0)
    base.allowed_imports = [*base.allowed_imports, *HOSTILE_IMPORTS]
    if name == "interleaved":
        ex = SandboxExecutor(base)
        data = await interleaved(ex, rounds)
        await ex.aclose()
        return data
    if name == "stall":
        return await hostile_stall(base, seconds)
    if name == "idle_cpu":
        return await between_steps_cpu(base)
    raise SystemExit(f"unknown part {name!r}")


def run_part(tree: Path, name: str, rounds: int, seconds: float) -> object:
    """One part in a subprocess whose `sandbox` package is the one under `tree`."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(repo)])}
    cmd = [sys.executable, "-m", "benchmarks.bench_sandbox", "--part", name,
           "--rounds", str(rounds), "--seconds", str(seconds)]
    # cwd = tree: `-m` puts the cwd first on sys.path, so `sandbox` comes from the tree
    proc = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"part {name} for {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(ref: str, quick: bool) -> None:
    """Before (REF's sandbox package) and after (this tree's), alternating, same load."""
    repo = Path(__file__).resolve().parents[1]
    chunks, rounds, seconds = (2, 5, 2.0) if quick else (6, 10, 4.0)
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-before-") as tmp:
        archive = subprocess.run(
            ["git", "archive", ref, "sandbox"], cwd=repo, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        trees = {"before": Path(tmp), "after": repo}
        print(
            f"sandbox before/after benchmark: before = {ref}'s sandbox/, after = the working "
            f"tree; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start"
        )
        samples: dict[str, dict[str, list[float]]] = {k: {} for k in trees}
        for i in range(chunks):  # alternate so both versions see the same load
            order = list(trees) if i % 2 == 0 else list(reversed(trees))
            for label in order:
                data = run_part(trees[label], "interleaved", rounds, seconds)
                assert isinstance(data, dict)
                for key, xs in data.items():
                    samples[label].setdefault(key, []).extend(xs)
        stall = {label: run_part(tree, "stall", rounds, seconds) for label, tree in trees.items()}
        idle = {label: run_part(tree, "idle_cpu", rounds, seconds) for label, tree in trees.items()}
        load_end = os.getloadavg()[0]
    print(f"load average at the end {load_end:.1f}\n")
    print(
        f"{'row':44} {'before p50':>11} {'after p50':>10} {'after/before':>13} "
        f"{'CPU ms before':>14} {'after':>6}  target"
    )
    for key, name, target in STEP_ROWS:
        b, a = pct(samples["before"][key], 0.5), pct(samples["after"][key], 0.5)
        cpu_b, cpu_a = (
            1000 * sum(xs) / len(xs)
            for xs in (samples["before"][f"cpu_{key}"], samples["after"][f"cpu_{key}"])
        )
        print(
            f"{name:44} {b:9.2f}ms {a:8.2f}ms {a / b:13.2f} {cpu_b:14.2f} {cpu_a:6.2f}  {target}"
        )
    print(
        "(CPU ms: host + every jail process per sample, exact where the machine has a cgroup "
        "v1 cpuacct hierarchy, else the jail in 10 ms ticks; a step's includes forking the "
        "spares it ran on, made in the model time before it)"
    )
    print("\nhostile tenant (4 candidates at a time) vs another tenant's `1 + 1`, ms:")
    print(f"{'attack':28} {'version':>7} {'1+1 p50':>8} {'p99':>8} {'max':>8} {'loop lag max':>13}")
    for name in ["none", *HOSTILE]:
        for label in trees:
            r = stall[label][name]  # type: ignore[index]
            print(
                f"{name:28} {label:>7} {r['p50']:8.2f} {r['p99']:8.2f} {r['max']:8.1f} "
                f"{r['lag_max']:13.1f}"
            )
    print("\njail CPU between steps (CPU-s per s, while no step runs):")
    for name in ("honest step", "hostile step"):
        b = idle["before"][name]  # type: ignore[index]
        a = idle["after"][name]  # type: ignore[index]
        print(f"{'after ' + name:28} before {b:6.3f}  after {a:6.3f}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (~20 s)")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness of the jailed processes (run this process under `nice -n N` too)",
    )
    parser.add_argument(
        "--compare",
        metavar="REF",
        help="before/after: REF's sandbox package vs the working tree's, in one run",
    )
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=10, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=3.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        print(json.dumps(asyncio.run(part(args.part, args.rounds, args.seconds))))
    elif args.compare:
        compare(args.compare, args.quick)
    else:
        asyncio.run(main(args.quick, args.nice))


if __name__ == "__main__":
    cli()
