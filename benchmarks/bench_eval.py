"""Evaluation harness: overhead per question, report generation, the HTML report in Chromium.

    .venv/bin/python -m benchmarks.bench_eval [--quick]

Rows (and their targets):
- harness: `evaluation.runner.run_eval` over Q questions with an INSTANT IN-PROCESS FAKE
  model (one canned `final_answer` reply, no HTTP) and an INSTANT FAKE executor (canned
  result, runs nothing), concurrency 1, reports off; baseline: `run_agent` over the same
  questions with the same fakes, in the same process. Overhead per question = (harness -
  baseline) / Q: the record (built, JSON-encoded, written, fsynced), grading with the math
  grader, config.json, resume bookkeeping. Target < 5 ms.
- report: `write_reports` (report.json, report.md, report.html) of a synthetic 4,000-record
  run (8 sets x 500, 3 action steps x 4 candidates, web_search results on factual sets);
  baseline: reading and JSON-decoding records.jsonl alone. Target < 5 s.
- chromium: that report.html in headless Chromium (`--dump-dom`, fresh profile): the page's
  own marks, `data-first-chart-painted-ms` (the first animation frame after the charts)
  and `data-question-opened-ms` (a question opened from `#q=`), both from navigation
  start; baseline: a page with one inline SVG chart and the same mark. Target: first
  chart < 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.agent import AgentConfig, run_agent
from agent.executor import ExecutionResult
from agent.model_client import Choice, Completion, Message, SamplingParams, Usage
from agent.runtime import Runtime
from benchmarks.bench_agent import InstantExecutor
from evaluation.datasets import EvalSet
from evaluation.report import write_reports
from evaluation.runner import EvalConfig, run_eval
from training.questions import Question

REPLY = "Thought: The answer is 42.\nCode:\n```py\nfinal_answer(42)\n```"


class InstantModel:
    model_name = "instant"

    async def complete(
        self, messages: Sequence[Message], params: SamplingParams, *,
        continue_final_message: bool = False,
    ) -> Completion:
        return Completion([Choice(REPLY, "stop") for _ in range(params.n)],
                          Usage(100, 12 * params.n), self.model_name)

    async def aclose(self) -> None:
        pass


def _final_42() -> ExecutionResult:
    return ExecutionResult(is_final=True, final_answer=42)


def _questions(n: int) -> list[Question]:
    return [Question(id=f"bench/q{i}", question=f"What is 6 * 7 (case {i})?", answer="42",
                     task="math", source="bench") for i in range(n)]


async def harness(n: int, work: Path) -> tuple[float, float]:
    qs = _questions(n)
    cfg = AgentConfig(samples=1, max_steps=3)
    model, executor = InstantModel(), InstantExecutor(_final_42)
    t0 = time.perf_counter()
    for q in qs:
        await run_agent(q.question, model=model, executor=executor, tools={}, config=cfg)
    base = time.perf_counter() - t0
    s = EvalSet(name="bench", label="bench", domain="math", path=work / "bench.jsonl",
                sha256="0", questions=qs, total=n)
    runtime = Runtime(model=model, executor=executor)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    await run_eval([s], work / "run", EvalConfig(agent=cfg, concurrency=1, progress=False),
                   runtime=runtime, html=False)
    total = time.perf_counter() - t0
    # run_eval also wrote report.json/.md once; time that alone to leave it out
    t0 = time.perf_counter()
    write_reports(work / "run", html=False)
    report = time.perf_counter() - t0
    return base / n, (total - report) / n


def _cand(i: int, code: str, result: str | None, final: Any = None) -> dict[str, Any]:
    calls: list[dict[str, Any]] = []
    if result is not None:
        calls.append({"name": "web_search", "args": ["q"], "kwargs": {}, "result": result,
                      "error": None, "duration_s": 0.01, "cached": False})
    ok = i != 3
    return {"index": i, "text": f"Thought: step thinking {i}\nCode:\n```py\n{code}\n```",
            "thought": f"step thinking {i} " * 8, "code": code, "parse_error": None,
            "finish_reason": "stop", "valid": ok,
            "execution": {"stdout": "x" * 200, "value_repr": None,
                          "error": None if ok else "Traceback: NameError", "error_kind":
                          None if ok else "exception", "is_final": final is not None,
                          "final_answer": final, "duration_s": 0.01, "tool_calls": calls,
                          "state_lost": False, "ok": ok}}


def synthetic_run(out: Path, per_set: int, rng: random.Random) -> int:
    from evaluation.datasets import PAPER_SETS

    out.mkdir(parents=True, exist_ok=True)
    doc = "\n===== Document 1, similarity: 9.100 =====\n" + '"Title"\n' + "passage text " * 100
    sets, n = [], 0
    with (out / "records.jsonl").open("w") as f:
        for ps in PAPER_SETS.values():
            sets.append({"name": ps.name, "label": ps.label, "domain": ps.domain, "file": ps.file,
                         "sha256": "0", "n": per_set, "total": per_set})
            for i in range(per_set):
                res = doc if ps.domain == "factual" else None
                steps = []
                for k in range(1, 4):
                    fin = 42 if k == 3 else None
                    cands = [_cand(c, "print(web_search('q'))" if res else "x = 1\nprint(x)",
                                   res, fin) for c in range(4)]
                    steps.append({"number": k, "kind": "action", "chosen": 0,
                                  "candidates": cands, "observation": "Observation:\n" + "y" * 300,
                                  "request": {"messages": [{"role": "user", "content": "m" * 2000}],
                                              "params": {}},
                                  "usage": {"prompt_tokens": 900, "completion_tokens": 200},
                                  "model_s": 0.5, "exec_s": 0.01, "total_s": 0.51})
                correct = rng.random() < 0.4
                rec = {"id": f"{ps.name}/{i}", "question": "What is the question number "
                       f"{i}? " * 4, "gold": "42", "task": ps.domain, "source": ps.name,
                       "mode": "agent", "status": "ok", "prediction": 42 if correct else 41,
                       "correct": correct, "grade": {"correct": correct, "method": "exact"},
                       "trajectory": {"finish_reason": "answer", "steps": steps, "answer": 42},
                       "usage": {"prompt_tokens": 2700, "completion_tokens": 600},
                       "elapsed_s": rng.uniform(1, 20)}
                f.write(json.dumps(rec) + "\n")
                n += 1
    (out / "config.json").write_text(json.dumps({"version": 1, "name": "synthetic",
                                                 "mode": "agent", "sets": sets, "judge": None}))
    (out / "gold.json").write_text("{}")
    return n


def chromium_marks(url: str) -> dict[str, float]:
    exe = shutil.which("chromium")
    if exe is None:
        raise RuntimeError("chromium is not installed: `make browser` (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as prof:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-quic", f"--user-data-dir={prof}", "--dump-dom", url],
            capture_output=True, text=True, timeout=300, check=False)
        wall = time.perf_counter() - t0
    head = proc.stdout[:3000]
    marks = {k: float(v) / 1000 for k, v in re.findall(r'data-([a-z-]+-ms)="([\d.]+)"', head)}
    marks["wall"] = wall
    return marks


def fsync_cost(work: Path, n: int = 50) -> float:
    import os

    with (work / "fsync.jsonl").open("a") as f:
        t0 = time.perf_counter()
        for _ in range(n):
            f.write("x" * 2000 + "\n")
            f.flush()
            os.fsync(f.fileno())
        return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer questions (~20 s)")
    args = ap.parse_args()
    nq, per_set = (100, 125) if args.quick else (500, 500)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base_q, eval_q = asyncio.run(harness(nq, work))
        over = max(0.0, eval_q - base_q)
        fsync = fsync_cost(work)
        rows.append((f"harness overhead / question (Q={nq})", f"{1000 * over:.2f} ms",
                     f"run_agent {1000 * base_q:.2f} ms, eval {1000 * eval_q:.2f} ms",
                     f"{eval_q / base_q:.2f}x", "< 5 ms", over < 0.005))

        rows.append(("  of which: one fsynced record write", f"{1000 * fsync:.2f} ms",
                     "(this disk)", "", "informative", True))
        run = work / "synthetic"
        n = synthetic_run(run, per_set, random.Random(0))
        t0 = time.perf_counter()
        with (run / "records.jsonl").open() as f:
            for line in f:
                json.loads(line)
        base = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_reports(run, html=True)
        rep = time.perf_counter() - t0
        size = (run / "report.html").stat().st_size / 1e6
        rows.append((f"report.json/.md/.html, {n:,} records", f"{rep:.2f} s",
                     f"decode records {base:.2f} s", f"{rep / base:.1f}x", "< 5 s", rep < 5))

        page = work / "baseline.html"
        page.write_text(
            "<!DOCTYPE html><html><body><svg width='200' height='100'><rect width='50' "
            "height='80' fill='#4e79a7'/></svg><script>"
            "document.documentElement.dataset.firstChartMs=performance.now().toFixed(1);"
            "requestAnimationFrame(function(){"
            "document.documentElement.setAttribute('data-first-chart-painted-ms',"
            "performance.now().toFixed(1))})</script></body></html>")
        b = chromium_marks(f"file://{page}")
        m = chromium_marks(f"file://{run}/report.html#q=0:{'hotpotqa/7'}")
        nan = float("nan")
        # painted: the first animation frame after the charts (parsed: the script after them
        # ran) - a tiny page can be dumped before its first frame, then only parsed exists
        first = m.get("first-chart-painted-ms", m.get("first-chart-ms", nan))
        b_first = b.get("first-chart-painted-ms", b.get("first-chart-ms", nan))
        rows.append((f"chromium: first chart, {size:.0f} MB page", f"{first:.2f} s",
                     f"one-SVG page {b_first:.2f} s", f"{first / b_first:.1f}x", "< 2 s",
                     first < 2))
        opened = m.get("question-opened-ms", float("nan"))
        rows.append(("chromium: question opened from #q=", f"{opened:.2f} s",
                     f"dump-dom wall {m['wall']:.1f} s (one-SVG page {b['wall']:.1f} s)", "",
                     "informative", True))
    w = [max(len(str(r[i])) for r in rows) for i in range(5)]
    print(f"bench_eval ({'quick' if args.quick else 'full'}; python {sys.version.split()[0]})")
    head = ("measure", "value", "baseline (same process)", "ratio", "target")
    w = [max(w[i], len(head[i])) for i in range(5)]
    print("  ".join(h.ljust(w[i]) for i, h in enumerate(head)) + "  met")
    for r in rows:
        print("  ".join(str(r[i]).ljust(w[i]) for i in range(5)) + f"  {'yes' if r[5] else 'NO'}")


if __name__ == "__main__":
    main()
