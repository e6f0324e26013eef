"""`distillery index build|search`: build a passage index, search it by hand.

Defaults come from Settings (DISTILLERY_ES_URL, DISTILLERY_ES_INDEX, DISTILLERY_INDEX_DIR,
...): with an Elasticsearch URL the backend is `es`, otherwise the embedded index.
`build --dense` also embeds every passage (dense and hybrid search need the vectors);
`search --search-mode` picks bm25, dense or hybrid and prints the mode on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from distillery.options import UsageError, add_settings_flags, settings_from_args


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("index", help="build or search the Wikipedia passage index")
    sub = p.add_subparsers(dest="index_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda _a: (p.print_help(), 2)[1])

    b = sub.add_parser(
        "build",
        help="build (or resume) an index from a passage corpus",
        description=(
            'Stream a JSONL(.gz) corpus of passages ({"id", "contents": "\\"Title\\"\\ntext"} '
            'or {"id", "title", "text"}) into an index. Rerunning an interrupted build '
            "resumes it; a finished one is only verified."
        ),
    )
    b.add_argument(
        "--corpus",
        required=True,
        help="JSONL or JSONL.gz passage file, or 'demo' for the bundled demo corpus",
    )
    _backend_args(b)
    b.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="passages per commit/bulk request (default: 20000 embedded, 2000 es)",
    )
    b.add_argument(
        "--on-bad-line",
        choices=["skip", "abort"],
        default="skip",
        help="skip invalid lines (reported with line numbers) or stop at the first",
    )
    b.add_argument(
        "--rebuild", action="store_true", help="delete the existing index and build from the start"
    )
    b.add_argument("--shards", type=int, default=1, help="es: number of primary shards")
    b.add_argument("--replicas", type=int, default=0, help="es: number of replicas")
    b.add_argument(
        "--dense",
        action="store_true",
        help="also embed every passage (multilingual-e5-small) for search_mode dense/hybrid; "
        "resumable like the BM25 build",
    )
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=_build)

    s = sub.add_parser("search", help="search the index and print what web_search returns")
    s.add_argument("query")
    add_settings_flags(
        s,
        ["search_k", "protocol", "search_mode"],
        flags={"search_k": ["-k", "--search-k"]},
        helps={"protocol": "protocol profile whose web_search layout to print"},
    )
    _backend_args(s)
    s.add_argument("--json", action="store_true", help="print passages as JSON lines")
    s.set_defaults(func=_search)


FIELDS = ["es_url", "es_index", "es_api_key", "index_dir", "search_timeout_s", "cache_dir"]


def _backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        choices=["es", "embedded"],
        default=None,
        help="default: es when an Elasticsearch URL is configured, else embedded",
    )
    add_settings_flags(p, FIELDS, flags={"es_index": ["--index", "--es-index"]})


class _Target:
    def __init__(self, args: argparse.Namespace):
        from retrieval.demo_corpus import demo_index_dir

        try:
            st = settings_from_args(args, [*FIELDS, "search_k", "protocol", "search_mode"])
        except UsageError as e:
            raise SystemExit(f"distillery index: {e}") from None
        self.es_url: str | None = st.es_url
        self.backend: str = args.backend or ("es" if self.es_url else "embedded")
        self.index: str = st.es_index
        # Unset = the demo index (what `solve` and `serve` search when nothing is configured).
        self.index_dir: Path = st.index_dir or demo_index_dir(st.cache_dir)
        self.api_key = st.es_api_key.get_secret_value() if st.es_api_key else None
        self.timeout_s = st.search_timeout_s
        self.k: int = st.search_k
        self.protocol: str | None = st.protocol
        self.cache_dir: Path = st.cache_dir
        self.mode: str = st.search_mode
        if self.backend == "es" and not self.es_url:
            raise SystemExit("distillery index: --backend es needs --es-url or DISTILLERY_ES_URL")


def _err(msg: str) -> int:
    print(f"distillery index: {msg}", file=sys.stderr)
    return 1


def _source(corpus: str) -> Any:
    from retrieval.ingest import FileSource

    if corpus == "demo" and not Path("demo").exists():
        from retrieval.demo_corpus import demo_source

        return demo_source()
    return FileSource(Path(corpus))


def _sink(t: _Target, args: argparse.Namespace, embedder: Any) -> Any:
    """The BM25 sink (for es with --dense, the one sink that also writes the vectors)."""
    if t.backend == "es":
        from retrieval.elastic import ElasticIndexWriter

        assert t.es_url
        return ElasticIndexWriter(
            t.es_url,
            t.index,
            api_key=t.api_key,
            shards=args.shards,
            replicas=args.replicas,
            embedder=embedder,
        )
    from retrieval.demo_corpus import demo_index_dir
    from retrieval.embedded import EmbeddedIndexWriter

    if args.corpus != "demo" and t.index_dir == demo_index_dir(t.cache_dir):
        raise ValueError(
            f"{t.index_dir} holds the demo index (rebuilt at start-up when it differs); "
            "pass --index-dir DIR for this corpus, then serve it with "
            "DISTILLERY_INDEX_DIR=DIR"
        )
    return EmbeddedIndexWriter(t.index_dir)


def _ingest(source: Any, sink: Any, args: argparse.Namespace, batch_size: int | None) -> Any:
    from retrieval.ingest import ingest

    try:
        return ingest(
            source,
            sink,
            batch_size=batch_size,
            on_bad_line=args.on_bad_line,
            rebuild=args.rebuild,
            progress=not args.no_progress,
        )
    finally:
        sink.close()


def _build(args: argparse.Namespace) -> int:
    from retrieval.embedding import EmbeddingError
    from retrieval.ingest import IngestError
    from retrieval.retriever import RetrievalError

    t = _Target(args)
    reports = []
    try:
        embedder = None
        if args.dense:
            from retrieval.embedding import shared_embedder

            embedder = shared_embedder(t.cache_dir)
        source = _source(args.corpus)
        reports.append(_ingest(source, _sink(t, args, embedder), args, args.batch_size))
        if embedder is not None and t.backend == "embedded" and reports[0].count_ok:
            from retrieval.dense import DenseIndexWriter

            dense = DenseIndexWriter(t.index_dir, embedder)
            reports.append(_ingest(_source(args.corpus), dense, args, None))
    except (IngestError, RetrievalError, EmbeddingError, ValueError) as e:
        return _err(str(e))
    for report in reports:
        if _report(report):
            return 1
    return 0


def _report(report: Any) -> bool:
    """Print a build's summary and bad lines; True when its count check failed."""
    print(report.summary())
    if report.bad_lines:
        print(f"bad lines (first {len(report.bad_lines)} of {report.bad}):", file=sys.stderr)
        for n, why in report.bad_lines:
            print(f"  line {n}: {why}", file=sys.stderr)
    if not report.count_ok:
        _err(
            f"count check failed: the corpus has {report.passages} valid passages but the index "
            f"holds {report.indexed} (duplicate ids in the corpus, or another writer?); "
            "rebuild with --rebuild"
        )
        return True
    return False


def _search(args: argparse.Namespace) -> int:
    from agent.protocol import ProtocolError, load_protocol
    from retrieval.embedding import EmbeddingError
    from retrieval.factory import open_retriever
    from retrieval.retriever import RetrievalError

    t = _Target(args)
    try:
        layout = load_protocol(t.protocol).web_search
    except ProtocolError as e:
        return _err(str(e))
    k = t.k
    retriever = open_retriever(
        es_url=t.es_url if t.backend == "es" else None,
        es_index=t.index,
        index_dir=t.index_dir,
        es_api_key=t.api_key,
        timeout_s=t.timeout_s,
        mode=t.mode,  # type: ignore[arg-type]  # validated by Settings
        cache_dir=t.cache_dir,
    )
    where = t.index if t.backend == "es" else str(t.index_dir)
    print(f"search mode: {t.mode} ({t.backend} index {where})", file=sys.stderr)

    async def go() -> list[Any]:
        try:
            return await retriever.search(args.query, k)
        finally:
            await retriever.aclose()

    try:
        passages = asyncio.run(go())
    except (RetrievalError, EmbeddingError, ValueError) as e:
        return _err(str(e))
    if args.json:
        for p in passages:
            print(json.dumps({**p.__dict__, "mode": t.mode}, ensure_ascii=False))
    else:
        print(
            layout.format_documents(passages) if passages else layout.format_no_results(args.query)
        )
    return 0
