"""Dense and hybrid retrieval against BM25: recall, latency, build cost, memory.

    .venv/bin/python -m benchmarks.bench_retrieval_dense [--quick] [--data-dir ../shared/data]
        [--index-dir DIR] [--cache-dir DIR] [--sizes 14266,1000000] [--ann-size 100000]

Every ratio is to BM25 measured in the same process on the same passages.

1. Recall@1/3/10 of each mode (bm25, dense, hybrid) through the product's retriever, on
   the HotpotQA part of the mini-Wikipedia (`../shared/data/wiki`, passages 1-4937: the
   gold passages of the 400 covered HotpotQA questions and their questions' distractor
   paragraphs; `--passages 0`: every passage embedded in `--index-dir`). Three query sets: the
   question itself; short entity queries (the gold passage's title, as agents write
   `web_search("Scott Derrickson")`; derived from the gold titles, since the teacher
   trajectories cover few questions); and the queries the study's teacher really wrote
   (`--trajectories`: chosen steps' `web_search("...")` calls, read from run files or the
   study archives under benchmarks/study/runs). Recall = share of gold passages in the top
   k; for the teacher's queries, which target one hop each, the share of queries with a
   gold passage of their question in the top k. BM25 over the whole 14,266-passage corpus
   is printed too, to show what the smaller corpus changes. `--index-dir` takes a
   mini-Wikipedia index built with `distillery index build --dense` (finished or not: its
   first embedded rows are used); without it, the passages are embedded here (~0.2 CPU-s
   each).
2. Latency p50/p99 of one top-10 search (blocking call): BM25 (tantivy) and the query
   embedding on the real index; exact dense search (numpy) at each size in `--sizes`, the
   real vectors padded with synthetic ones (mixtures of two real vectors plus noise, unit
   length: exact search costs the same for any vectors); an HNSW index (faiss) at
   `--ann-size` against exact search on the same vectors: build time, latency, recall@10.
3. Build: embedding rate (passages per wall second and per CPU second) measured on 128
   real passages; disk size per passage of the vectors.
4. Memory: peak and final RSS (VmHWM, VmRSS) of a fresh process that builds the
   gateway's retriever from Settings (distillery.components.build_retriever) over the real
   index and answers 20 searches, per mode.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_retrieval import ms, pct, table

REPO = Path(__file__).resolve().parent.parent
HOTPOT_PART = 4937
"""Passages 1..4937 of the mini-Wikipedia are the HotpotQA part (every gold passage)."""
MODES = ("bm25", "dense", "hybrid")


# --------------------------------------------------------------------------- data


def read_passages(wiki: Path, limit: int | None = None) -> list[dict[str, str]]:
    rows = []
    with gzip.open(wiki / "passages.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            obj = json.loads(line)
            title, _, text = obj["contents"].partition("\n")
            rows.append({"id": str(obj["id"]), "title": title[1:-1], "text": text})
            if limit and len(rows) >= limit:
                break
    return rows


def gold_questions(data_dir: Path) -> list[dict[str, Any]]:
    """The covered HotpotQA test questions: text, gold passage ids and titles."""
    gold = [
        json.loads(x)
        for x in (data_dir / "wiki" / "gold.jsonl").read_text().splitlines()
        if x.strip()
    ]
    gold = [g for g in gold if g["question_file"].startswith("hotpotqa_500")]
    qs = json.loads((data_dir / "questions" / gold[0]["question_file"]).read_text())
    text = {q["id"]: q["question"] for q in qs["examples"]}
    return [
        {
            "id": g["question_id"],
            "question": text[g["question_id"]],
            "gold": [str(p) for p in g["passage_ids"]],
            "titles": list(g["gold_titles"]),
        }
        for g in gold
    ]


def _trajectory_lines(paths: list[Path]) -> Iterator[str]:
    for path in paths:
        if path.is_dir():
            for f in sorted(path.rglob("attempt-*.jsonl")):
                yield from f.read_text().splitlines()
        elif path.name.endswith(".tar.gz"):
            with tarfile.open(path) as tar:
                for m in tar.getmembers():
                    if m.isfile() and "/agent/" in m.name and m.name.endswith(".jsonl"):
                        member = tar.extractfile(m)
                        yield from (member.read().decode().splitlines() if member else [])
        elif path.is_file():
            yield from path.read_text().splitlines()


def teacher_queries(paths: list[Path], qids: set[str]) -> dict[str, set[str]]:
    """The web_search queries of chosen teacher steps, per HotpotQA question id."""
    pattern = re.compile(r"""web_search\(\s*(?:query\s*=\s*)?["']([^"'\n]+)["']""")
    out: dict[str, set[str]] = {}
    for line in _trajectory_lines(paths):
        if not line.strip():
            continue
        run = json.loads(line)
        if run.get("id") not in qids:
            continue
        for step in (run.get("trajectory") or {}).get("steps", []):
            cands, chosen = step.get("candidates") or [], step.get("chosen")
            if isinstance(chosen, int) and chosen < len(cands):
                found = pattern.findall(cands[chosen].get("code") or "")
                out.setdefault(run["id"], set()).update(found)
    return {k: v for k, v in out.items() if v}


# --------------------------------------------------------------------------- index


def prefix_index(
    rows: list[dict[str, str]], src: Path | None, tmp: Path, embedder: Any
) -> tuple[Path, float]:
    """An embedded index (tantivy + dense) of `rows`; vectors copied from `src`'s first
    rows when given (it must hold them in the same order), else embedded here.
    Returns the folder and the embedding seconds (0 when copied)."""
    from retrieval.dense import IDS_FILE, VECTORS_FILE, DenseIndexWriter
    from retrieval.embedded import EmbeddedIndexWriter
    from retrieval.ingest import IterSource, ingest

    idx = tmp / "prefix-index"
    source = IterSource("mini-wiki-prefix", rows, f"{len(rows)}")
    report = ingest(source, EmbeddedIndexWriter(idx), progress=False, log=lambda _m: None)
    assert report.count_ok, report.summary()
    if src is None:
        t = time.perf_counter()
        writer = DenseIndexWriter(idx, embedder)
        ingest(source, writer, progress=sys.stderr.isatty(), log=lambda _m: None)
        return idx, time.perf_counter() - t
    ids = [json.loads(x) for x in (src / IDS_FILE).read_text().splitlines()[: len(rows)]]
    assert ids == [r["id"] for r in rows], "the vectors' rows are not the corpus' first lines"
    with (src / VECTORS_FILE).open("rb") as f:
        (idx / VECTORS_FILE).write_bytes(f.read(len(rows) * 4 * embedder.dim))
    (idx / IDS_FILE).write_text("".join(json.dumps(i) + "\n" for i in ids))
    state = json.loads((idx / "distillery.json").read_text())
    DenseIndexWriter(idx, embedder).save_state(state)  # same corpus identity, complete
    return idx, 0.0


def embedded_rows(index_dir: Path) -> int:
    from retrieval.dense import IDS_FILE

    path = index_dir / IDS_FILE
    return len(path.read_text().splitlines()) if path.exists() else 0


# --------------------------------------------------------------------------- recall


def recall_at(
    retriever: Any, queries: list[str], gold: list[set[str]], ks: tuple[int, ...] = (1, 3, 10)
) -> dict[int, float]:
    results = asyncio.run(retriever.search_batch(queries, k=max(ks)))
    total = sum(len(g) for g in gold)
    return {
        k: sum(len(g & {p.id for p in hits[:k]}) for g, hits in zip(gold, results, strict=True))
        / total
        for k in ks
    }


def hit_at(
    retriever: Any, queries: list[str], gold: list[set[str]], ks: tuple[int, ...] = (1, 3, 10)
) -> dict[int, float]:
    """Share of queries with at least one gold passage in the top k."""
    results = asyncio.run(retriever.search_batch(queries, k=max(ks)))
    return {
        k: sum(bool(g & {p.id for p in hits[:k]}) for g, hits in zip(gold, results, strict=True))
        / len(queries)
        for k in ks
    }


def bench_recall(
    idx: Path, questions: list[dict[str, Any]], embedder: Any, teacher: dict[str, set[str]]
) -> list[list[Any]]:
    from retrieval.embedded import EmbeddedRetriever

    title_of = {}
    for q in questions:
        for pid, title in zip(q["gold"], q["titles"], strict=False):
            title_of[pid] = title
    gold_of = {q["id"]: set(q["gold"]) for q in questions}
    pairs = [(query, gold_of[qid]) for qid, qs in teacher.items() for query in sorted(qs)]
    sets = {
        "question": ([q["question"] for q in questions], [set(q["gold"]) for q in questions]),
        "entity (gold title)": (list(title_of.values()), [{p} for p in title_of]),
        f"teacher's queries ({len(teacher)} questions), any gold": (
            [p[0] for p in pairs],
            [p[1] for p in pairs],
        ),
    }
    rows = []
    for name, (queries, gold) in sets.items():
        if not queries:
            continue
        base: dict[int, float] = {}
        for mode in MODES:
            r = EmbeddedRetriever(idx, mode=mode, embedder=lambda: embedder)  # type: ignore[arg-type]
            t = time.perf_counter()
            measure = hit_at if name.startswith("teacher") else recall_at
            rec = measure(r, queries, gold)
            seconds = time.perf_counter() - t
            base = base or rec
            rows.append(
                [name, len(queries), mode]
                + [f"{rec[k]:.3f}" for k in (1, 3, 10)]
                + [f"{rec[3] / base[3]:.2f}", f"{seconds:.1f}"]
            )
    return rows


# --------------------------------------------------------------------------- latency


def timed(fn: Any, items: list[Any]) -> tuple[float, float]:
    for x in items[:10]:
        fn(x)
    xs = []
    for x in items:
        t = time.perf_counter()
        fn(x)
        xs.append(time.perf_counter() - t)
    return pct(xs, 50), pct(xs, 99)


def synthetic(real: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """`n` unit vectors: the real ones, then mixtures of two real vectors plus noise."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, real.shape[1]), dtype=np.float32)
    m = min(n, len(real))
    out[:m] = real[:m]
    for start in range(m, n, 100_000):
        end = min(n, start + 100_000)
        a = real[rng.integers(0, len(real), end - start)]
        b = real[rng.integers(0, len(real), end - start)]
        noise = rng.standard_normal((end - start, real.shape[1]), dtype=np.float32) * 0.02
        v = a + rng.uniform(0.2, 0.8, (end - start, 1)).astype(np.float32) * b + noise
        out[start:end] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def bench_latency(
    idx: Path, queries: list[str], embedder: Any, sizes: list[int], ann_size: int
) -> tuple[list[list[Any]], list[list[Any]]]:
    from retrieval.dense import VECTORS_FILE, exact_top_k
    from retrieval.embedded import EmbeddedRetriever

    bm25 = EmbeddedRetriever(idx)
    b50, b99 = timed(lambda q: bm25.search_sync(q, 10), queries)
    rows = [["bm25 (tantivy), real index", embedded_rows(idx), ms(b50), ms(b99), "1.00"]]
    e50, e99 = timed(lambda q: embedder.embed_queries([q]), queries)
    rows.append(["query embedding (e5-small q4)", "", ms(e50), ms(e99), f"{e50 / b50:.2f}"])
    qv = embedder.embed_queries(queries)
    real = np.fromfile(idx / VECTORS_FILE, dtype="<f4").reshape(-1, embedder.dim)
    for n in sizes:
        vecs = synthetic(real, n)
        s50, s99 = timed(lambda v: exact_top_k(vecs, v, 10), list(qv))  # noqa: B023
        rows.append([f"exact dense top-10 (numpy), {n:,}", n, ms(s50), ms(s99), f"{s50 / b50:.2f}"])
    return rows, bench_ann(real, qv, ann_size)


def bench_ann(real: np.ndarray, qv: np.ndarray, n: int) -> list[list[Any]]:
    try:
        import faiss
    except ImportError:
        return [["faiss not installed: pip install faiss-cpu", "", "", "", "", ""]]
    from retrieval.dense import exact_top_k

    vecs = synthetic(real, n, seed=1)
    exact = [{i for i, _ in exact_top_k(vecs, v, 10)} for v in qv]
    e50, e99 = timed(lambda v: exact_top_k(vecs, v, 10), list(qv))
    rows = [[f"exact numpy, {n:,}", "-", ms(e50), ms(e99), "1.000", "1.00"]]
    t = time.perf_counter()
    index = faiss.IndexHNSWFlat(vecs.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 80
    index.add(vecs)
    build = time.perf_counter() - t
    for ef in (32, 64, 128, 256):
        index.hnsw.efSearch = ef
        got = [set(index.search(v[None, :], 10)[1][0].tolist()) for v in qv]
        rec = sum(len(g & x) for g, x in zip(got, exact, strict=True)) / (10 * len(qv))
        a50, a99 = timed(lambda v: index.search(v[None, :], 10), list(qv))  # noqa: B023
        rows.append(
            [
                f"faiss HNSW32 ef={ef}, {n:,}",
                f"{build:.0f}",
                ms(a50),
                ms(a99),
                f"{rec:.3f}",
                f"{a50 / e50:.2f}",
            ]  # fmt: skip
        )
    return rows


# --------------------------------------------------------------------------- build, memory


def bench_build(rows: list[dict[str, str]], embedder: Any) -> dict[str, float]:
    from retrieval.embedding import passage_text

    texts = [passage_text(r["title"], r["text"]) for r in rows[:128]]
    wall, cpu = time.perf_counter(), time.process_time()
    embedder.embed_passages(texts)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"n": len(texts), "per_wall_s": len(texts) / wall, "per_cpu_s": len(texts) / cpu}


MEMORY_PROBE = """
import asyncio, sys
from pathlib import Path
from distillery.components import build_retriever
from distillery.settings import Settings
st = Settings(index_dir=Path(sys.argv[1]), cache_dir=Path(sys.argv[2]), search_mode=sys.argv[3])
r = build_retriever(st)
async def go():
    for q in ["Scott Derrickson", "Who directed Doctor Strange?"] * 10:
        await r.search(q, 3)
asyncio.run(go())
status = dict(x.split(":", 1) for x in open("/proc/self/status").read().splitlines())
print(status["VmHWM"].split()[0], status["VmRSS"].split()[0])
"""


def bench_memory(idx: Path, cache_dir: Path) -> list[list[Any]]:
    rows, base = [], 0.0
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
    for mode in MODES:
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, str(idx), str(cache_dir), mode],
            capture_output=True, text=True, check=True, cwd=REPO, env=env,
        )  # fmt: skip
        hwm, rss = (int(x) / 1024 for x in out.stdout.split()[-2:])
        base = base or hwm
        rows.append([mode, f"{hwm:.0f}", f"{rss:.0f}", f"{hwm - base:+.0f}", f"{hwm / base:.2f}"])
    return rows


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100 questions, smaller sizes")
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--index-dir", type=Path, default=None, help="a --dense mini-wiki index")
    ap.add_argument("--cache-dir", type=Path, default=None, help="embedding model cache")
    ap.add_argument("--sizes", default=None, help="exact-search sizes (default 14266,1000000)")
    ap.add_argument("--ann-size", type=int, default=None, help="HNSW size (default 100000)")
    ap.add_argument(
        "--trajectories",
        type=Path,
        nargs="*",
        default=sorted((REPO / "benchmarks" / "study" / "runs").glob("*.tar.gz")),
        help="teacher runs (attempt-*.jsonl, folders, study .tar.gz) to take agents' queries from",
    )
    ap.add_argument(
        "--passages",
        type=int,
        default=HOTPOT_PART,
        help="corpus prefix measured (default: the HotpotQA part; 0: every embedded passage)",
    )
    args = ap.parse_args(argv)
    from retrieval.embedding import shared_embedder

    wiki = args.data_dir / "wiki"
    if not (wiki / "gold.jsonl").exists():
        print(f"no mini-Wikipedia under {wiki}: nothing to measure", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-dense-") as tmpdir:
        tmp = Path(tmpdir)
        cache = args.cache_dir or tmp / "cache"
        embedder = shared_embedder(cache)
        have = embedded_rows(args.index_dir) if args.index_dir else 0
        want = args.passages
        if args.index_dir and have < (want or 1):
            print(f"{args.index_dir} holds {have} vectors (< {want}): embedding here")
        n = want or have
        rows = read_passages(wiki, n)
        src = args.index_dir if have >= n else None
        idx, embed_s = prefix_index(rows, src, tmp, embedder)
        questions = gold_questions(args.data_dir)
        questions = [q for q in questions if all(int(p) <= n for p in q["gold"])]
        if args.quick:
            questions = questions[:100]
        report(args, idx, rows, questions, embedder, cache, embed_s)
    return 0


def report(
    args: argparse.Namespace,
    idx: Path,
    rows: list[dict[str, str]],
    questions: list[dict[str, Any]],
    embedder: Any,
    cache: Path,
    embed_s: float,
) -> None:
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else ([14_266, 100_000] if args.quick else [14_266, 1_000_000])
    )
    ann = args.ann_size or (20_000 if args.quick else 100_000)
    teacher = teacher_queries(args.trajectories, {q["id"] for q in questions})
    table(
        f"Recall of gold passages, {len(rows):,} passages (mini-Wikipedia passages "
        f"1-{len(rows)}), ratio = recall@3 / bm25's",
        ["queries", "n", "mode", "R@1", "R@3", "R@10", "R@3 ratio", "s"],
        bench_recall(idx, questions, embedder, teacher),
    )
    full = args.index_dir
    if full is not None and (full / "meta.json").exists():
        from retrieval.embedded import EmbeddedRetriever

        r = EmbeddedRetriever(full)
        rec = recall_at(r, [q["question"] for q in questions], [set(q["gold"]) for q in questions])
        table(
            "BM25 on the whole mini-Wikipedia (14,266 passages), same questions",
            ["queries", "R@1", "R@3", "R@10"],
            [["question"] + [f"{rec[k]:.3f}" for k in (1, 3, 10)]],
        )
    queries = [q["question"] for q in questions] + [t for q in questions for t in q["titles"]]
    lat, ann_rows = bench_latency(idx, queries[: 200 if args.quick else 400], embedder, sizes, ann)
    table(
        "Top-10 latency, one query (ms), ratio to bm25 p50",
        ["path", "passages", "p50", "p99", "ratio"],
        lat,
    )
    table(
        "ANN vs exact on the same synthetic vectors (top-10; ratio = p50 / exact p50)",
        ["index", "build s", "p50", "p99", "recall@10 vs exact", "ratio"],
        ann_rows,
    )
    b = bench_build(rows, embedder)
    vec_bytes = 4 * embedder.dim + 8
    table(
        "Dense build (embedding is the whole cost; BM25 builds 14k passages in ~1 s)",
        [
            "measured on",
            "passages/wall s",
            "passages/CPU s",
            "14,266 passages, CPU min",
            "disk per passage",
            "14,266 / 1M passages",
        ],  # fmt: skip
        [
            [
                f"{b['n']} passages",
                f"{b['per_wall_s']:.1f}",
                f"{b['per_cpu_s']:.1f}",
                f"{14_266 / b['per_cpu_s'] / 60:.0f}",
                f"{vec_bytes} B",
                f"{14_266 * vec_bytes / 1e6:.0f} MB / {1e6 * vec_bytes / 1e9:.2f} GB",
            ]
        ],  # fmt: skip
    )
    if embed_s:
        print(f"\n(the {len(rows):,} passages were embedded here in {embed_s:.0f} s wall)")
    table(
        "Memory of a process holding the gateway's retriever after 20 searches (MB)",
        ["search_mode", "peak RSS", "RSS", "peak vs bm25", "ratio"],
        bench_memory(idx, cache),
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n(this process: peak RSS {peak:.0f} MB)")
    shutil.rmtree(idx, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
