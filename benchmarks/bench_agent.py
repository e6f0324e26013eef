"""Agent loop overhead per step, excluding the model and code execution.

    .venv/bin/python -m benchmarks.bench_agent [--quick]

Rows:
- loop: `run_agent` with an INSTANT IN-PROCESS FAKE model (returns N canned replies, no
  HTTP) and an INSTANT FAKE executor (returns canned results, runs nothing), so what is
  timed is the agent's own work per step: building the request, parsing N candidates,
  choosing, rendering the observation, growing the transcript and the trajectory.
  One sample = the time between two consecutive `on_step` callbacks.
  Targets: p50 < 2 ms at N=1, < 5 ms at N=8.
- baseline: the bare unavoidable work of a step measured in the same process
  (N x parse_action + one render_observation), to show what the loop adds on top.
- unjailed exec (informative, not part of the overhead): one step's try_candidates +
  commit with trivial code on the real sandbox in unjailed mode (what
  DISTILLERY_EXECUTOR=local builds; fork per candidate, no nsjail).
- http (informative): the same loop with the real OpenAIChatClient against the scripted
  server (tests/helpers/scripted_server.py, uvicorn in a thread of this process).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agent.agent import AgentConfig, run_agent
from agent.executor import ExecutionResult, ToolFn
from agent.model_client import Choice, Completion, Message, SamplingParams, Usage
from agent.observation import render_observation
from agent.parsing import parse_action
from agent.trajectory import Step

TARGET_MS = {1: 2.0, 8: 5.0}
REPLY = (
    "Thought: I will add the two numbers and print the result so I can check it.\n"
    "Code:\n```py\ntotal = 17 + 25\nprint(total)\n```"
)
QUESTION = "What is 17 + 25? Then multiply it by the number of days in a week."


class InstantModel:
    """In-process fake ModelClient: N canned replies, no HTTP, no sampling."""

    model_name = "instant"

    async def complete(
        self,
        messages: Sequence[Message],
        params: SamplingParams,
        *,
        continue_final_message: bool = False,
    ) -> Completion:
        return Completion(
            choices=[Choice(REPLY, "stop") for _ in range(params.n)],
            usage=Usage(prompt_tokens=100, completion_tokens=30 * params.n),
            model=self.model_name,
        )

    async def aclose(self) -> None:
        pass


def _printed_42() -> ExecutionResult:
    return ExecutionResult(stdout="42\n", value_repr="None")


class InstantSession:
    """Fake ExecutionSession: canned results (from `result`), nothing runs."""

    def __init__(self, result: Callable[[], ExecutionResult] = _printed_42) -> None:
        self.result = result

    async def run(self, code: str) -> ExecutionResult:
        return self.result()

    async def try_candidates(self, codes: Sequence[str]) -> list[ExecutionResult]:
        return [self.result() for _ in codes]

    async def commit(self, index: int) -> None:
        pass

    async def discard(self) -> None:
        pass

    async def close(self) -> None:
        pass


class InstantExecutor:
    """Fake Executor whose sessions return `result()` for every execution."""

    def __init__(self, result: Callable[[], ExecutionResult] = _printed_42) -> None:
        self.result = result

    async def start(self) -> None:
        pass

    async def open_session(self, tools: Mapping[str, ToolFn]) -> InstantSession:
        return InstantSession(self.result)

    async def aclose(self) -> None:
        pass


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


async def loop_samples(model: Any, n: int, runs: int, steps: int) -> list[float]:
    """Per-step wall times (s) between consecutive on_step calls."""
    samples: list[float] = []
    # the canned model repeats one action: stuck detection would end the run after step 2
    config = AgentConfig(samples=n, max_steps=steps, stuck_detection=False)
    for _ in range(runs):
        stamps: list[float] = []

        async def on_step(step: Step, stamps: list[float] = stamps) -> None:
            stamps.append(time.perf_counter())

        t0 = time.perf_counter()
        traj = await run_agent(
            QUESTION, model=model, executor=InstantExecutor(), tools={}, config=config,
            on_step=on_step,
        )  # fmt: skip
        assert traj.finish_reason == "max_steps", traj.error
        samples.append(stamps[0] - t0)  # the first step includes rendering the prompt
        samples.extend(b - a for a, b in zip(stamps, stamps[1:], strict=False))
    return samples


def baseline_samples(n: int, reps: int) -> list[float]:
    result = ExecutionResult(stdout="42\n", value_repr="None")
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(n):
            parse_action(REPLY)
        render_observation(1, result)
        out.append(time.perf_counter() - t)
    return out


async def unjailed_exec_samples(n: int, reps: int) -> list[float]:
    from sandbox.config import SandboxConfig
    from sandbox.executor import SandboxExecutor

    ex = SandboxExecutor(SandboxConfig(unjailed=True, step_timeout_s=10, pool_size=0))
    session = await ex.open_session({})
    out = []
    try:
        await session.run("total = 0")
        for _ in range(reps):
            t = time.perf_counter()
            await session.try_candidates(["total += 1\nprint(total)"] * n)
            await session.commit(0)
            out.append(time.perf_counter() - t)
    finally:
        await ex.aclose()
    return out


async def http_samples(n: int, runs: int, steps: int) -> list[float]:
    from agent.openai_client import OpenAIChatClient
    from tests.helpers.scripted_server import ScriptedServer

    with ScriptedServer() as srv:
        srv.handler = lambda body: [REPLY] * int(body.get("n", 1))
        client = OpenAIChatClient(srv.url, srv.model)
        try:
            return await loop_samples(client, n, runs, steps)
        finally:
            await client.aclose()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (~5 s)")
    ap.add_argument("--no-http", action="store_true", help="skip the HTTP row")
    args = ap.parse_args()
    runs, steps = (40, 5) if args.quick else (300, 5)
    rows: list[tuple[str, int, list[float], float | None, float | None]] = []
    for n in (1, 8):
        await loop_samples(InstantModel(), n, 5, steps)  # warm-up
        loop = await loop_samples(InstantModel(), n, runs, steps)
        base = baseline_samples(n, runs * steps)
        base_p50 = statistics.median(base)
        rows.append(("baseline: parse N + render", n, base, None, None))
        rows.append(("loop (instant model+executor)", n, loop, TARGET_MS[n], base_p50))
    for n in (1, 8):
        rows.append(
            (
                "unjailed sandbox exec (info)",
                n,
                await unjailed_exec_samples(n, 20 if args.quick else 100),
                None,
                None,
            )
        )
    if not args.no_http:
        for n in (1, 8):
            hs = await http_samples(n, max(runs // 4, 5), steps)
            rows.append(("loop + HTTP scripted (info)", n, hs, None, None))

    mode = "quick" if args.quick else "full"
    print(f"agent loop overhead per step ({mode}; {runs} runs x {steps} steps + final call)")
    head = (
        f"{'case':34} {'N':>2} {'p50 ms':>8} {'p99 ms':>8} {'target':>7} {'p50/tgt':>8} "
        f"{'p50/base':>9}"
    )
    print(head)
    print("-" * len(head))
    for name, n, xs, target, base_s in rows:
        p50, p99 = statistics.median(xs) * 1e3, pct(xs, 0.99) * 1e3
        tgt = f"{target:.1f}" if target else "-"
        ratio = f"{p50 / target:.3f}" if target else "-"
        vs = f"{p50 / (base_s * 1e3):.1f}x" if base_s else "-"
        print(f"{name:34} {n:>2} {p50:8.3f} {p99:8.3f} {tgt:>7} {ratio:>8} {vs:>9}")


if __name__ == "__main__":
    asyncio.run(main())
