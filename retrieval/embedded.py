"""The embedded on-disk index (tantivy): the default when no Elasticsearch URL is configured.

Schema: `id` (raw, stored), `title` and `text` (analysed by retrieval.analysis, term
frequencies only, stored byte-exact). A query is analysed with the same analyzer and
becomes one SHOULD clause per token and field, summed: Elasticsearch's `multi_match`
of type `most_fields` over title and text, the same BM25 (k1=1.2, b=0.75).

The build checkpoint and metadata live in `distillery.json` inside the index folder.

Search modes (retrieval.retriever): `bm25` needs only the tantivy index; `dense` and
`hybrid` also need the dense vectors beside it (retrieval.dense, built by `distillery
index build --dense`) and an embedder for the queries, made on first use by the
`embedder` factory. Dense hits are looked up by id in tantivy for their stored text.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrieval.analysis import (
    ANALYZER_NAME,
    ANALYZER_VERSION,
    SEARCH_FIELDS,
    check_k,
    prepare_query,
    tantivy_analyzer,
)
from retrieval.ingest import CorpusPassage, write_json_atomic
from retrieval.retriever import Passage, RetrievalError, SearchMode, check_mode

if TYPE_CHECKING:
    from retrieval.dense import DenseIndex, EmbedderFactory
    from retrieval.embedding import Embedder

STATE_FILE = "distillery.json"
_TANTIVY_META = "meta.json"


def _schema() -> Any:
    import tantivy

    sb = tantivy.SchemaBuilder()
    sb.add_text_field("id", stored=True, tokenizer_name="raw", index_option="basic")
    for name in SEARCH_FIELDS:
        sb.add_text_field(name, stored=True, tokenizer_name=ANALYZER_NAME, index_option="freq")
    return sb.build()


def read_state(index_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(index_dir) / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise RetrievalError(f"cannot read {Path(index_dir) / STATE_FILE}: {e}") from e
    return data if isinstance(data, dict) else None


class EmbeddedIndexWriter:
    """IndexSink for retrieval.ingest: builds the tantivy index in `index_dir`."""

    default_batch_size = 20_000

    def __init__(self, index_dir: Path, *, heap_mb: int = 256, threads: int | None = None):
        self.index_dir = Path(index_dir)
        self.description = f"embedded index {self.index_dir}"
        self._heap = heap_mb * 1_000_000
        self._threads = threads or min(4, os.cpu_count() or 1)
        self._index: Any = None
        self._writer: Any = None

    def load_state(self) -> dict[str, Any] | None:
        if not (self.index_dir / _TANTIVY_META).exists():
            return None
        try:
            return read_state(self.index_dir)
        except RetrievalError:
            return {"format": None}

    def reset(self) -> None:
        d = self.index_dir
        if d.exists() and any(d.iterdir()):
            if not ((d / _TANTIVY_META).exists() or (d / STATE_FILE).exists()):
                raise RetrievalError(
                    f"{d} is not empty and holds no index: refusing to delete it; "
                    "choose an empty or new --index-dir"
                )
            self.close()
            shutil.rmtree(d)
        d.mkdir(parents=True, exist_ok=True)
        self._open()

    def _open(self) -> Any:
        if self._writer is None:
            import tantivy

            self._index = tantivy.Index(_schema(), path=str(self.index_dir), reuse=True)
            self._index.register_tokenizer(ANALYZER_NAME, tantivy_analyzer())
            self._writer = self._index.writer(self._heap, self._threads)
        return self._writer

    def add(self, batch: Sequence[CorpusPassage], *, replace: bool) -> None:
        import tantivy

        writer = self._open()
        if replace:
            for p in batch:
                writer.delete_documents_by_term("id", p.id)
        for p in batch:
            writer.add_document(tantivy.Document(id=p.id, title=p.title, text=p.text))
        writer.commit()

    def save_state(self, state: dict[str, Any]) -> None:
        write_json_atomic(self.index_dir / STATE_FILE, state)

    def count(self) -> int:
        self._open()
        self._index.reload()
        return int(self._index.searcher().num_docs)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.wait_merging_threads()
        self._writer = None
        self._index = None


class _Opened:
    def __init__(self, index: Any, analyzer: Any, state: dict[str, Any]):
        self.index = index
        self.searcher = index.searcher()
        self.schema = index.schema
        self.analyzer = analyzer
        self.state = state
        self.dense: DenseIndex | None = None
        self.embedder: Embedder | None = None

    def passage(self, addr: Any, score: float) -> Passage:
        doc = self.searcher.doc(addr)
        return Passage(
            id=doc.get_first("id"),
            title=doc.get_first("title"),
            text=doc.get_first("text"),
            score=score,
        )

    def by_id(self, pid: str, score: float) -> Passage:
        import tantivy

        hits = self.searcher.search(tantivy.Query.term_query(self.schema, "id", pid), 1).hits
        if not hits:
            raise RetrievalError(f"passage {pid!r} of the dense vectors is not in the index")
        return self.passage(hits[0][1], score)


class EmbeddedRetriever:
    """Retriever over a tantivy index folder built by `distillery index build`.

    Opens lazily: a missing or unfinished index is reported by search/ping as a
    RetrievalError that says how to build it.
    """

    def __init__(
        self,
        index_dir: Path,
        *,
        mode: SearchMode = "bm25",
        embedder: EmbedderFactory | None = None,
    ):
        self.index_dir = Path(index_dir)
        self.mode: SearchMode = check_mode(mode)
        if self.mode != "bm25" and embedder is None:
            raise ValueError(f"search mode {mode!r} needs an embedder factory")
        self._embedder_factory = embedder
        self._opened: _Opened | None = None
        self._lock = threading.Lock()

    def _open(self) -> _Opened:
        with self._lock:
            if self._opened is None:
                self._opened = self._open_locked()
            return self._opened

    def _open_locked(self) -> _Opened:
        import tantivy

        d = self.index_dir
        build = f"build it with `distillery index build --corpus PATH --index-dir {d}`"
        if not (d / _TANTIVY_META).exists():
            raise RetrievalError(f"no search index at {d}: {build} (or run `make demo`)")
        state = read_state(d)
        if state is None:
            raise RetrievalError(f"{d} holds no distillery index ({STATE_FILE} missing): {build}")
        if state.get("analyzer_version") != ANALYZER_VERSION:
            raise RetrievalError(
                f"the index at {d} uses analyzer version {state.get('analyzer_version')}, "
                f"this code needs {ANALYZER_VERSION}: rebuild it (`distillery index build "
                f"--rebuild ...`)"
            )
        if not state.get("complete"):
            raise RetrievalError(
                f"the index at {d} is unfinished (built up to line {state.get('lines_done')}): "
                "rerun the same `distillery index build` command to resume it"
            )
        try:
            index = tantivy.Index.open(str(d))
        except (OSError, ValueError) as e:
            raise RetrievalError(f"cannot open the index at {d}: {e}; {build}") from e
        analyzer = tantivy_analyzer()
        index.register_tokenizer(ANALYZER_NAME, analyzer)
        opened = _Opened(index, analyzer, state)
        if self.mode != "bm25":
            from retrieval.dense import DenseIndex

            assert self._embedder_factory is not None
            opened.embedder = self._embedder_factory()
            opened.dense = DenseIndex(d, opened.embedder, state.get("corpus"))
        return opened

    def _bm25(self, o: _Opened, query: str, k: int) -> list[tuple[float, Any]]:
        """(score, doc address) of the BM25 top k."""
        import tantivy

        text = prepare_query(query)
        tokens = o.analyzer.analyze(text) if text else []
        if not tokens:
            return []
        clauses = [
            (tantivy.Occur.Should, tantivy.Query.term_query(o.schema, field, tok))
            for tok in tokens
            for field in SEARCH_FIELDS
        ]
        hits = o.searcher.search(tantivy.Query.boolean_query(clauses), k, count=False).hits
        return [(float(score), addr) for score, addr in hits]

    def _search_many(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        o = self._open()
        if self.mode == "bm25":
            return [[o.passage(a, s) for s, a in self._bm25(o, q, k)] for q in queries]
        from retrieval.dense import RRF_WINDOW, rrf

        assert o.dense is not None and o.embedder is not None
        wanted = [i for i, q in enumerate(queries) if prepare_query(q)]
        out: list[list[Passage]] = [[] for _ in queries]
        vectors = o.embedder.embed_queries([queries[i] for i in wanted])
        for i, vec in zip(wanted, vectors, strict=True):
            if self.mode == "dense":
                out[i] = [o.by_id(pid, s) for pid, s in o.dense.search(vec, k)]
                continue
            lexical = self._bm25(o, queries[i], max(k, RRF_WINDOW))
            ids = [o.searcher.doc(a).get_first("id") for _, a in lexical]
            semantic = [pid for pid, _ in o.dense.search(vec, max(k, RRF_WINDOW))]
            out[i] = [o.by_id(pid, s) for pid, s in rrf([ids, semantic], k)]
        return out

    def _search_sync(self, query: str, k: int) -> list[Passage]:
        return self._search_many([query], k)[0]

    def search_sync(self, query: str, k: int = 3) -> list[Passage]:
        """Blocking search (benchmarks, CLI); `search` runs this in a worker thread."""
        check_k(k)
        return self._search_sync(query, k)

    async def search(self, query: str, k: int = 3) -> list[Passage]:
        check_k(k)
        return await asyncio.to_thread(self._search_sync, query, k)

    async def search_batch(self, queries: Sequence[str], k: int = 3) -> list[list[Passage]]:
        check_k(k)
        qs = list(queries)
        return await asyncio.to_thread(self._search_many, qs, k)

    async def ping(self) -> dict[str, object]:
        o = await asyncio.to_thread(self._open)
        info: dict[str, object] = {
            "backend": "embedded",
            "index_dir": str(self.index_dir),
            "documents": int(o.searcher.num_docs),
            "search_mode": self.mode,
        }
        if o.embedder is not None:
            info["embedding_model"] = o.embedder.name
        return info

    async def aclose(self) -> None:
        with self._lock:
            self._opened = None
