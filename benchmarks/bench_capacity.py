"""Capacity with an instant model: what the agent layer costs per run, per core and per GiB.

    .venv/bin/python -m benchmarks.bench_capacity [--quick] [--tokens-per-s R]

A SIMULATION of GPU-speed serving: the model is the project's scripted server
(tests/helpers/scripted_server.py, in a thread of this process) answering every request
at once, or at R tokens/s per sequence (a reply of W words takes W / R seconds). Every
other part is real: `distillery serve` in its own process, the jailed nsjail sandbox
with its defaults (pool, spares, freezer), the embedded BM25 index behind `web_search`.

Workload: runs of 1-5 steps (uniform, seeded), alternating a code step (a sum over a
range, printed) and a `web_search` step (the top passages printed), the last step a
`final_answer`; N=1 and N=8 candidates per step (`samples` on the request). With the
default policy (`early`) the first complete valid candidate runs and the rest are
cancelled, so an instant model makes N=8 cost about what N=1 does in the sandbox;
`8:first` (policy `first`) executes all eight, the sandbox's worst case.

1. Baseline: one client, runs one after another: time per step with nothing queued.
2. Saturation: closed loop with C clients: runs/s and steps/s, and CPU-seconds per run
   of the gateway process and of its sandbox (nsjail and every jailed process, from
   /proc: live processes plus what their reapers collected), so "runs/s per core" =
   1 / CPU-seconds per run and does not depend on what else the machine runs.
3. Latency added per step at ~50% and ~90% of the saturation rate: open loop (Poisson
   arrivals); (run latency - model time) / steps, p50 and p95, against the baseline.
4. Memory per concurrent run: K runs held open after their first step (the model holds
   its second reply; K stays under 64, the model requests one gateway process makes at
   once, see agent/openai_client.py: a held reply holds one), PSS of the sandbox's
   processes (nsjail, jail init, the state process, parked spares) and of the gateway,
   at K = 0 and growing K. Held runs take the pool's idle jails first, so a run's figure
   is what is left after the jails beyond K are counted at an idle jail's cost (measured
   at K = 0); it extrapolates to 1,000 runs.
5. Overload (`--overload X`): a gateway with the default limits (16 running + 64 queued)
   gets X times what it serves from one client while another sends one run every 0.5 s:
   every answer counted by status (nothing may hang), per client.

Phases 1-2 run against two gateways started side by side: "one jail per run"
(`--sandbox-reuse-idle 0`, jails closed after their run: the baseline) and "reused
jails" (finished runs' jails scrubbed and reused, up to 32 idle); phases 3-4 against the
latter.

Ratios are to the baseline measured in the same process; absolute numbers depend on the
machine and its load (printed with uptime's load average).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.bench_service import MODEL, GatewayProcess, pct
from tests.helpers.scripted_server import Reply, ScriptedServer

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
TOPICS = ["river", "castle", "violin", "glacier", "comet", "harbor", "orchid", "volcano"]


# --------------------------------------------------------------------------- the model
def step_code(run: int, i: int, total: int, cand: int) -> str:
    """Step i (0-based) of a run of `total` steps: code, web_search, ..., final_answer."""
    tag = f"# candidate {cand}\n"
    if i == total - 1:
        return tag + f"final_answer(str({run} + {i}))"
    if i % 2 == 0:
        return tag + f"v{i} = sum(j * j for j in range({2000 + 37 * run % 500}))\nprint(v{i})"
    topic = TOPICS[(run + i) % len(TOPICS)]
    return tag + f"r = web_search({topic + ' history'!r})\nprint(r[:400])"


def reply_text(code: str) -> str:
    return f"Thought: next step.\nCode:\n```py\n{code}\n```<end_code>"


class CapacityModel(ScriptedServer):
    """The scripted server with the capacity workload as its handler. A question with
    `park` holds its second model call until `release()` (memory phase)."""

    def __init__(self, tokens_per_s: float) -> None:
        super().__init__(MODEL)
        self.tokens_per_s = tokens_per_s
        self.handler = self._reply
        self.parked = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._release: asyncio.Event | None = None
        self._count_lock = threading.Lock()

    def _reply(self, body: dict[str, Any]) -> Reply:
        task = next(m["content"] for m in body["messages"] if m["role"] == "user")
        match = re.search(r"capacity run (\d+) steps (\d+)", task)
        if match is None:  # the gateway's self-check or a probe
            return Reply(reply_text("final_answer(0)"))
        run, total = int(match.group(1)), int(match.group(2))
        done = sum(1 for m in body["messages"] if m["role"] == "assistant")
        n = int(body.get("n") or 1)
        texts = [reply_text(step_code(run, done, total, c)) for c in range(n)]
        words = len(texts[0].split())
        delay = words / self.tokens_per_s if self.tokens_per_s > 0 else 0.0
        return Reply(texts, delay_s=delay)

    async def _respond(self, send: Any, body: Any, item: Any, receive: Any = None) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._release = asyncio.Event()
        msgs = body.get("messages") if isinstance(body, dict) else None
        if isinstance(msgs, list) and any("park" in str(m.get("content")) for m in msgs[:3]):
            if sum(1 for m in msgs if m.get("role") == "assistant") == 1:
                with self._count_lock:
                    self.parked += 1
                assert self._release is not None
                await self._release.wait()
        await super()._respond(send, body, item, receive)

    def release(self) -> None:
        """Let every held reply go (from any thread)."""
        if self._loop is not None and self._release is not None:
            self._loop.call_soon_threadsafe(self._release.set)

    def rearm(self) -> None:
        if self._loop is not None and self._release is not None:
            ev = self._release
            self._loop.call_soon_threadsafe(ev.clear)
        self.parked = 0


def model_seconds(steps: int, n: int, tokens_per_s: float) -> float:
    """Model time of a run of `steps` steps (each reply's words / rate)."""
    if tokens_per_s <= 0:
        return 0.0
    words = len(reply_text(step_code(0, 0, 3, n - 1)).split())
    return steps * words / tokens_per_s


def build_search_index(folder: Path) -> Path:
    """A small embedded BM25 index: 400 synthetic passages over the workload's topics."""
    from retrieval.embedded import EmbeddedIndexWriter
    from retrieval.ingest import IterSource, ingest

    rng = random.Random(7)
    words = ["ancient", "trade", "empire", "music", "winter", "science", "ocean", "map"]
    rows = []
    for i in range(400):
        topic = TOPICS[i % len(TOPICS)]
        text = " ".join(rng.choice(words) for _ in range(60))
        rows.append({"id": str(i), "title": f"{topic.title()} {i}",
                     "text": f"The {topic} has a long history. {text}."})
    ingest(IterSource("capacity", rows, "1"), EmbeddedIndexWriter(folder / "index"),
           progress=False, log=lambda _m: None)
    return folder / "index"


# --------------------------------------------------------------------------- accounting
def _stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, cpu ticks incl. reaped children, comm) of a live process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    comm = raw[raw.index(b"(") + 1 : raw.rindex(b")")].decode(errors="replace")
    fields = raw[raw.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[1]), sum(int(x) for x in fields[11:15]), comm


def process_tree(root: int) -> dict[int, tuple[int, int, str]]:
    """root and every live process below it: pid -> (ppid, ticks, comm)."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                table[int(name)] = st
    out, todo = {}, [root]
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _t, _c) in table.items():
        kids.setdefault(ppid, []).append(pid)
    while todo:
        pid = todo.pop()
        if pid in table:
            out[pid] = table[pid]
            todo.extend(kids.get(pid, []))
    return out


@dataclass
class Cpu:
    gateway: float
    sandbox: float


def cpu_seconds(root: int) -> Cpu:
    """CPU of the gateway process alone and of everything below it (the sandbox)."""
    tree = process_tree(root)
    own = _own_ticks(root)
    total = sum(t for _p, t, _c in tree.values())
    return Cpu(own / CLK_TCK, (total - own) / CLK_TCK)


def _own_ticks(pid: int) -> int:
    """utime + stime of `pid` alone: the gateway's reaped children (nsjail) belong to the
    sandbox, so they are moved there by the caller's subtraction."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return 0
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


@dataclass
class Memory:
    gateway_kib: int
    nsjail_kib: int
    jail_kib: int
    jail_procs: int
    jails: int
    cgroup_kib: int
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def sandbox_kib(self) -> int:
        return self.nsjail_kib + self.jail_kib


def memory(root: int, cgroup_root: str = "/sys/fs/cgroup/memory/NSJAIL") -> Memory:
    """PSS by part: the gateway, the nsjail supervisors, everything inside the jails; and
    the jails' own memory cgroups (charged pages incl. their tmpfs and kernel memory)."""
    tree = process_tree(root)
    m = Memory(pss_kib(root), 0, 0, 0, 0, 0)
    for pid, (ppid, _t, comm) in tree.items():
        if pid == root:
            continue
        if comm == "nsjail" and ppid == root:
            m.nsjail_kib += pss_kib(pid)
            m.jails += 1
            init = next((p for p, (pp, _t2, _c) in tree.items() if pp == pid), None)
            if init is not None:
                try:
                    usage = Path(cgroup_root, f"NSJAIL.{init}", "memory.usage_in_bytes")
                    m.cgroup_kib += int(usage.read_text()) // 1024
                except (OSError, ValueError):
                    pass
        else:
            m.jail_kib += pss_kib(pid)
            m.jail_procs += 1
    return m


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --------------------------------------------------------------------------- phases
@dataclass
class RunRecord:
    latency_s: float
    steps: int
    status: int


class Workload:
    def __init__(self, url: str, n: int, seed: int, policy: str | None = None) -> None:
        self.url = url
        self.n = n
        self.policy = policy
        self.rng = random.Random(seed)
        self.counter = 0

    def question(self, park: bool = False) -> tuple[str, int]:
        self.counter += 1
        steps = self.rng.randint(1, 5) if not park else 2
        tag = " park" if park else ""
        return f"capacity run {self.counter} steps {steps}{tag}", steps

    async def one(self, client: httpx.AsyncClient, park: bool = False) -> RunRecord:
        question, steps = self.question(park)
        t0 = time.perf_counter()
        req: dict[str, Any] = {"question": question, "samples": self.n}
        if self.policy:
            req["policy"] = self.policy
        r = await client.post("/v1/solve", json=req)
        dt = time.perf_counter() - t0
        if r.status_code != 200:
            return RunRecord(dt, 0, r.status_code)
        body = r.json()
        if body["finish_reason"] != "answer" or len(body["steps"]) != steps:
            raise RuntimeError(f"unexpected run: {body['finish_reason']} {body.get('error')} "
                               f"{len(body['steps'])} of {steps} steps")
        return RunRecord(dt, steps, 200)


def client_for(url: str, conns: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
    return httpx.AsyncClient(base_url=url, timeout=300, limits=limits)


async def baseline(wl: Workload, runs: int) -> list[RunRecord]:
    async with client_for(wl.url, 1) as client:
        return [await wl.one(client) for _ in range(runs)]


@dataclass
class Saturation:
    clients: int
    wall_s: float
    records: list[RunRecord]
    cpu: Cpu
    started: int = 0
    """Jails started during the phase (the gateway's sandbox statistics)."""

    @property
    def ok(self) -> list[RunRecord]:
        return [r for r in self.records if r.status == 200]

    @property
    def runs_per_s(self) -> float:
        return len(self.ok) / self.wall_s

    @property
    def steps_per_s(self) -> float:
        return sum(r.steps for r in self.ok) / self.wall_s


async def saturate(wl: Workload, pid: int, clients: int, duration_s: float,
                   warmup_s: float = 3.0) -> Saturation:
    """Closed loop; the first `warmup_s` are not counted (the pool grows to the level)."""
    records: list[RunRecord] = []
    counting = False
    stop_at = time.perf_counter() + warmup_s + duration_s
    async with client_for(wl.url, clients + 1) as client:

        async def loop() -> None:
            while time.perf_counter() < stop_at:
                r = await wl.one(client)
                if counting:
                    records.append(r)

        tasks = [asyncio.create_task(loop()) for _ in range(clients)]
        await asyncio.sleep(warmup_s)
        s0 = await jails_started(client)
        c0, t0 = cpu_seconds(pid), time.perf_counter()
        counting = True
        await asyncio.gather(*tasks)
        wall, c1 = time.perf_counter() - t0, cpu_seconds(pid)
        s1 = await jails_started(client)
    return Saturation(clients, wall, records,
                      Cpu(c1.gateway - c0.gateway, c1.sandbox - c0.sandbox), s1 - s0)


async def jails_started(client: httpx.AsyncClient) -> int:
    """Jails the gateway's sandbox has started so far (its readiness detail)."""
    r = await client.get("/readyz")
    detail = r.json()["checks"]["sandbox"].get("detail") or {}
    return int(detail.get("workers_started", 0))


async def open_loop(wl: Workload, rate: float, duration_s: float) -> list[RunRecord]:
    """Poisson arrivals at `rate` runs/s for `duration_s`; every run is awaited."""
    rng = random.Random(11)
    tasks: list[asyncio.Task[RunRecord]] = []
    async with client_for(wl.url, 512) as client:
        t_next = time.perf_counter()
        stop_at = t_next + duration_s
        while t_next < stop_at:
            await asyncio.sleep(max(0.0, t_next - time.perf_counter()))
            tasks.append(asyncio.create_task(wl.one(client)))
            t_next += rng.expovariate(rate)
        return list(await asyncio.gather(*tasks))


def per_step_ms(records: list[RunRecord], n: int, tokens_per_s: float) -> list[float]:
    return [(r.latency_s - model_seconds(r.steps, n, tokens_per_s)) / r.steps * 1000
            for r in records if r.status == 200 and r.steps]


async def hold_runs(wl: Workload, model: CapacityModel, pid: int, counts: list[int],
                    settle_s: float) -> list[tuple[int, Memory]]:
    """Park runs after their first step, measuring memory at each count; then release."""
    model.rearm()
    points = [(0, memory(pid))]
    tasks: list[asyncio.Task[RunRecord]] = []
    async with client_for(wl.url, max(counts) + 4) as client:
        try:
            for k in counts:
                while len(tasks) < k:
                    tasks.append(asyncio.create_task(wl.one(client, park=True)))
                t0 = time.monotonic()
                while model.parked < k:
                    if time.monotonic() > t0 + 60 + 3 * k:
                        raise RuntimeError(f"only {model.parked} of {k} runs parked")
                    await asyncio.sleep(0.1)
                print(f"  {k} runs held after {time.monotonic() - t0:.0f} s", flush=True)
                await asyncio.sleep(settle_s)  # spares forked and the jails frozen
                points.append((k, memory(pid)))
        finally:
            model.release()
            try:
                done = await asyncio.wait_for(
                    asyncio.gather(*tasks, return_exceptions=True), 300)
            except TimeoutError:
                raise RuntimeError("held runs did not finish within 300 s of release") from None
    bad = [d for d in done if not isinstance(d, RunRecord) or d.status != 200]
    if bad:
        raise RuntimeError(f"{len(bad)} parked runs failed: {bad[:3]}")
    return points


# --------------------------------------------------------------------------- report
def per_core(s: Saturation) -> float:
    """Runs per CPU-second of the gateway and its sandbox (= runs/s per core)."""
    cpu = s.cpu.gateway + s.cpu.sandbox
    return len(s.ok) / cpu if cpu else float("nan")


def print_saturation(n: int, rows: dict[str, tuple[list[RunRecord], list[Saturation]]]) -> None:
    first = next(iter(rows))
    ref = max(rows[first][1], key=lambda s: s.runs_per_s)
    print(f"{'gateway':<24} {'clients':>7} {'runs':>5} {'runs/s':>7} {'steps/s':>8} "
          f"{'x 1 client':>10} {'gw CPU ms/run':>13} {'sandbox CPU ms/run':>18} "
          f"{'runs/s/core':>11} {'steps/s/core':>12} {'x ' + first:>22} {'non-200':>7} "
          f"{'jails started/run':>17}")
    for name, (base, sats) in rows.items():
        base_rps = 1 / (sum(r.latency_s for r in base) / len(base))
        print(f"{name:<24} {'1 (seq.)':>7} {len(base):>5} {base_rps:>7.1f}")
        for s in sats:
            runs = max(1, len(s.ok))
            gw, sb = s.cpu.gateway / runs * 1000, s.cpu.sandbox / runs * 1000
            steps_per_run = sum(r.steps for r in s.ok) / runs
            ratio = f"{s.runs_per_s / ref.runs_per_s:.2f} / {per_core(s) / per_core(ref):.2f}"
            print(f"{'':<24} {s.clients:>7} {len(s.ok):>5} {s.runs_per_s:>7.1f} "
                  f"{s.steps_per_s:>8.1f} {s.runs_per_s / base_rps:>10.2f} {gw:>13.1f} "
                  f"{sb:>18.1f} {per_core(s):>11.1f} {per_core(s) * steps_per_run:>12.1f} "
                  f"{ratio:>22} {len(s.records) - len(s.ok):>7} {s.started / runs:>17.2f}")
    print(f"(x {first}: runs/s and runs/s per core against its best closed-loop level)")


def print_latency(n: int, base: list[RunRecord], rows: list[tuple[float, float,
                  list[RunRecord]]], tokens_per_s: float) -> None:
    b = per_step_ms(base, n, tokens_per_s)
    b50, b95 = pct(b, 0.5), pct(b, 0.95)
    print(f"{'load':>6} {'rate runs/s':>11} {'runs':>5} {'ms/step p50':>11} {'p95':>8} "
          f"{'added p50':>9} {'added p95':>9} {'p50 x base':>10} {'non-200':>7}")
    print(f"{'base':>6} {'1 client':>11} {len(base):>5} {b50:>11.1f} {b95:>8.1f} {0:>9.1f} "
          f"{0:>9.1f} {1:>10.2f} {0:>7}")
    for frac, rate, recs in rows:
        s = per_step_ms(recs, n, tokens_per_s)
        bad = sum(1 for r in recs if r.status != 200)
        print(f"{frac:>6.0%} {rate:>11.1f} {len(recs):>5} {pct(s, 0.5):>11.1f} "
              f"{pct(s, 0.95):>8.1f} {pct(s, 0.5) - b50:>9.1f} {pct(s, 0.95) - b95:>9.1f} "
              f"{pct(s, 0.5) / b50:>10.2f} {bad:>7}")


def print_memory(n: int, points: list[tuple[int, Memory]]) -> None:
    """Per held run: the jails beyond the held runs are idle ones (the pool's), each
    costing what an idle jail costs at K = 0; the rest is the held runs'."""
    _, m0 = points[0]
    idle_kib = m0.sandbox_kib / max(1, m0.jails)
    print(f"{'runs':>5} {'jails':>5} {'jail procs':>10} {'gateway MiB':>11} "
          f"{'nsjail MiB':>10} {'in jails MiB':>12} {'sandbox MiB':>11} {'cgroups MiB':>11} "
          f"{'MiB per held run':>16}")
    per_run = []
    for k, m in points:
        held = (m.sandbox_kib - (m.jails - k) * idle_kib) / k / 1024 if k else float("nan")
        if k:
            per_run.append(held)
        print(f"{k:>5} {m.jails:>5} {m.jail_procs:>10} {m.gateway_kib / 1024:>11.1f} "
              f"{m.nsjail_kib / 1024:>10.1f} {m.jail_kib / 1024:>12.1f} "
              f"{m.sandbox_kib / 1024:>11.1f} {m.cgroup_kib / 1024:>11.1f} {held:>16.1f}")
    if not per_run:
        return
    run_mib = sum(per_run) / len(per_run)
    gw = points[-1][1].gateway_kib / 1024
    print(f"N={n}: {run_mib:.1f} MiB PSS per held run (its jail: nsjail, init, state, spares), "
          f"{idle_kib / 1024:.1f} MiB per idle jail, gateway {gw:.0f} MiB; 1,000 runs -> "
          f"{(gw + 1000 * run_mib) / 1024:.1f} GiB plus the idle jails (extrapolated)")


# --------------------------------------------------------------------------- overload
@dataclass
class Tally:
    statuses: dict[str, int] = field(default_factory=dict)
    ok_s: list[float] = field(default_factory=list)
    retry_after: int = 0

    def add(self, status: str, seconds: float, retry: bool) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == "200":
            self.ok_s.append(seconds)
        self.retry_after += retry


async def overload(url: str, rate: float, duration_s: float) -> dict[str, Tally]:
    """Client "flood" sends `rate` runs/s (open loop), client "single" one run every 0.5 s,
    both for `duration_s`; every request is awaited to its answer (or the client's 330 s
    timeout, counted as "hung")."""
    tallies = {"flood": Tally(), "single": Tally()}
    wl = Workload(url, 1, seed=99)
    async with client_for(url, 2048) as client:

        async def one(who: str) -> None:
            question, _ = wl.question()
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/solve", json={"question": question}, timeout=330)
                status, retry = str(r.status_code), "retry-after" in r.headers
            except httpx.TimeoutException:
                status, retry = "hung", False
            except httpx.HTTPError as e:
                status, retry = type(e).__name__, False
            tallies[who].add(status, time.perf_counter() - t0, retry)

        async def arrivals(who: str, gap: Any) -> list[asyncio.Task[None]]:
            tasks, t_next = [], time.perf_counter()
            stop_at = t_next + duration_s
            while t_next < stop_at:
                await asyncio.sleep(max(0.0, t_next - time.perf_counter()))
                tasks.append(asyncio.create_task(one(who)))
                t_next += gap()
            return tasks

        rng = random.Random(5)
        flood, single = await asyncio.gather(arrivals("flood", lambda: rng.expovariate(rate)),
                                             arrivals("single", lambda: 0.5))
        await asyncio.gather(*flood, *single)
    return tallies


def print_overload(rate: float, tallies: dict[str, Tally]) -> None:
    print(f"{'client':<7} {'sent':>5} {'200':>5} {'429':>5} {'with Retry-After':>16} "
          f"{'other':>20} {'200 p50 s':>9} {'200 max s':>9}")
    for who, t in tallies.items():
        sent = sum(t.statuses.values())
        other = {k: v for k, v in t.statuses.items() if k not in ("200", "429")}
        print(f"{who:<7} {sent:>5} {t.statuses.get('200', 0):>5} {t.statuses.get('429', 0):>5} "
              f"{t.retry_after:>16} {str(other or '-'):>20} {pct(t.ok_s, 0.5):>9.2f} "
              f"{max(t.ok_s, default=float('nan')):>9.2f}")


# --------------------------------------------------------------------------- main
OVERLOAD_BASE_RPS = 15.0
"""About what the reused-jail gateway serves on the 2-core benchmark VM (N=1): the
overload phase sends a multiple of it."""

GATEWAYS = {"one jail per run": ["--sandbox-reuse-idle", "0"],
            "reused jails": ["--sandbox-reuse-idle", "32"]}
"""The baseline first: jails closed after their run, as before jails were reused. The
other keeps up to 32 idle (the most clients of the default levels; the setting's
advice: about max_concurrency)."""


async def measure(gws: dict[str, GatewayProcess], model: CapacityModel, spec: str,
                  args: Any) -> None:
    n_text, _, policy = spec.partition(":")
    n = int(n_text)
    print(f"\n=== N={n}, policy {policy or 'the default (early)'} (load {load_average()}) ===")
    rows = {}
    for name, gw in gws.items():
        wl = Workload(gw.url, n, seed=n, policy=policy or None)
        await baseline(wl, 3)  # warm-up: pool, imports, index pages
        base = await baseline(wl, 10 if args.quick else 30)
        sats = [await saturate(wl, gw.proc.pid, c, args.duration) for c in args.clients]
        rows[name] = (base, sats)
    print_saturation(n, rows)
    name, gw = list(gws.items())[-1]
    base, sats = rows[name]
    best = max(sats, key=lambda s: s.runs_per_s)
    wl = Workload(gw.url, n, seed=n + 100, policy=policy or None)
    lat = []
    for frac in (0.5, 0.9):
        rate = best.runs_per_s * frac
        lat.append((frac, rate, await open_loop(wl, rate, args.duration)))
    print(f"N={n}, {name}: latency added per step (run latency minus model time, per step), "
          f"open loop at a fraction of the best saturated rate {best.runs_per_s:.1f}/s")
    print_latency(n, base, lat, args.tokens_per_s)
    if any(k > 0 for k in args.memory_counts) and (not args.quick or spec == args.samples[0]):
        print(f"N={n}, {name}: memory with runs held open after their first step "
              f"(load {load_average()})")
        points = await hold_runs(wl, model, gw.proc.pid, args.memory_counts, settle_s=3.0)
        print_memory(n, points)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short phases, fewer held runs")
    ap.add_argument("--tokens-per-s", type=float, default=0.0,
                    help="simulated decoding speed per sequence; 0 = instant (default)")
    ap.add_argument("--samples", nargs="+", default=["1", "8", "8:first"],
                    help="N values, N:POLICY for a policy other than the server's")
    ap.add_argument("--memory-counts", type=int, nargs="+",
                    help="held runs per point (0: no memory phase)")
    ap.add_argument("--clients", type=int, nargs="+", help="closed-loop levels")
    ap.add_argument("--duration", type=float, help="seconds per throughput phase")
    ap.add_argument("--overload", type=float, default=10.0,
                    help=f"overload phase at this multiple of {OVERLOAD_BASE_RPS} runs/s "
                    "(0: none)")
    args = ap.parse_args(argv)
    if args.memory_counts is None:
        args.memory_counts = [12, 24] if args.quick else [20, 40, 60]
    args.clients = args.clients or ([8] if args.quick else [8, 32])
    args.duration = args.duration or (6.0 if args.quick else 10.0)
    most = max(args.memory_counts + args.clients)
    print(f"capacity benchmark ({'quick' if args.quick else 'full'}; SIMULATED model: the "
          f"scripted server, {args.tokens_per_s or 'instant'} tokens/s; real gateway and "
          f"nsjail sandbox; {os.cpu_count()} CPUs; load {load_average()})", flush=True)
    index_dir = build_search_index(Path(tempfile.mkdtemp(prefix="bench-capacity-")))
    # held runs wait for their second reply longer than the default model timeout (120 s)
    extra = ["--index-dir", str(index_dir), "--model-timeout-s", "900",
             "--max-concurrency", str(most + 8), "--max-queue", "4096"]
    model = CapacityModel(args.tokens_per_s)
    model.start()
    gws: dict[str, GatewayProcess] = {}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the gateways on the way out
    try:
        for name, flags in GATEWAYS.items():
            gws[name] = GatewayProcess(model.url, "sandbox", extra + flags)
        for gw in gws.values():
            gw.wait_ready()
        for spec in args.samples:
            asyncio.run(measure(gws, model, spec, args))
        if args.overload > 0:
            for gw in gws.values():
                gw.stop()
            gw = GatewayProcess(model.url, "sandbox", extra[:4] + ["--sandbox-reuse-idle", "16"])
            gws["overload"] = gw
            gw.wait_ready()
            rate = args.overload * OVERLOAD_BASE_RPS
            print(f"\noverload: the default limits (16 running + 64 queued), N=1, runs of 1-5 "
                  f"steps, {rate:.0f} runs/s for {args.duration:.0f} s from one client (about "
                  f"{args.overload:g}x what the gateway serves), one run every 0.5 s from "
                  f"another (load {load_average()})")
            print_overload(rate, asyncio.run(overload(gw.url, rate, args.duration)))
    finally:
        for gw in gws.values():
            gw.stop()
        model.stop()
    print(f"\nload at the end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
