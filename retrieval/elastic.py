"""The Elasticsearch backend (production): index mapping, bulk writer, async retriever.

Client: the official `elasticsearch` package, whose major version must match the
cluster's (the `retrieval` extra pins 8.x; for a 9.x cluster install
`elasticsearch>=9,<10`: only APIs common to both are used, and `ping` reports a
mismatch). Searches use `AsyncElasticsearch` over httpx (already a core dependency, so
no aiohttp), with a pooled connection per node, a request timeout and retries on
connection errors and timeouts. Index building uses the sync client (a CLI or Job).

Mapping: `id` keyword; `title` and `text` analysed with retrieval.analysis's custom
analyzer and BM25 (k1/b from there); `_source` keeps both strings byte-exact. Queries
are `multi_match` of type `most_fields` over title and text (one sum of per-field BM25
scores, as the embedded index does). The build checkpoint lives in the mapping's `_meta`,
so a restarted indexing Job resumes from any machine.

Dense and hybrid (`index build --dense`): the mapping gains an `embedding` field
(`dense_vector`, 384 dims, cosine, Elasticsearch's default HNSW index), filled by the
writer with retrieval.embedding's passage vectors, and `_meta` records the model's name
and digest. The gateway embeds queries itself (no ML node): `dense` sends a `knn` search
(the printed score is the cosine, recovered from Elasticsearch's (1 + cosine) / 2), and
`hybrid` an `rrf` retriever over the BM25 query and the kNN search with the same window
and rank constant as the embedded backend (retrieval.dense). The first dense search checks
the index's model and refuses another one, saying how to rebuild.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from retrieval.analysis import (
    ANALYZER_NAME,
    SEARCH_FIELDS,
    check_k,
    es_analysis_settings,
    prepare_query,
)
from retrieval.ingest import CorpusPassage
from retrieval.retriever import Passage, RetrievalError, SearchMode, check_mode

if TYPE_CHECKING:
    from retrieval.dense import EmbedderFactory
    from retrieval.embedding import Embedder

META_KEY = "distillery"
VECTOR_FIELD = "embedding"
KNN_MIN_CANDIDATES = 100


def redact_url(url: str) -> str:
    """The URL without user:password (safe for messages and logs)."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return url


def index_body(*, shards: int = 1, replicas: int = 0, dims: int | None = None) -> dict[str, Any]:
    """Settings and mappings for a passage index (created empty, refresh off while loading);
    with `dims`, also the `dense_vector` field for dense and hybrid search."""
    text_field = {"type": "text", "analyzer": ANALYZER_NAME, "similarity": "wiki_bm25"}
    vector = (
        {
            VECTOR_FIELD: {
                "type": "dense_vector",
                "dims": dims,
                "index": True,
                "similarity": "cosine",
            }
        }
        if dims
        else {}
    )
    return {
        "settings": {
            "number_of_shards": shards,
            "number_of_replicas": replicas,
            "refresh_interval": "-1",
            **es_analysis_settings(),
        },
        "mappings": {
            "dynamic": "strict",
            "properties": {
                "id": {"type": "keyword"},
                **{name: dict(text_field) for name in SEARCH_FIELDS},
                **vector,
            },
        },
    }


def _bm25_query(query_text: str) -> dict[str, Any]:
    return {
        "multi_match": {"query": query_text, "fields": list(SEARCH_FIELDS), "type": "most_fields"}
    }


def _knn(vector: Sequence[float], k: int) -> dict[str, Any]:
    return {
        "field": VECTOR_FIELD,
        "query_vector": [float(x) for x in vector],
        "k": k,
        "num_candidates": max(KNN_MIN_CANDIDATES, k),
    }


def search_body(
    query_text: str, k: int, mode: SearchMode = "bm25", vector: Sequence[float] | None = None
) -> dict[str, Any]:
    """The `_search` body of one query in `mode` (dense and hybrid need the query's vector)."""
    from retrieval.dense import RRF_RANK_CONSTANT, RRF_WINDOW

    body: dict[str, Any] = {"size": k, "_source": ["title", "text"], "track_total_hits": False}
    if mode == "bm25":
        body["query"] = _bm25_query(query_text)
        return body
    if vector is None:
        raise ValueError(f"search mode {mode!r} needs the query vector")
    if mode == "dense":
        body["knn"] = _knn(vector, k)
        return body
    window = max(k, RRF_WINDOW)
    body["retriever"] = {
        "rrf": {
            "retrievers": [
                {"standard": {"query": _bm25_query(query_text)}},
                {"knn": _knn(vector, window)},
            ],
            "rank_window_size": window,
            "rank_constant": RRF_RANK_CONSTANT,
        }
    }
    return body


def translate_error(e: Exception, url: str, index: str) -> RetrievalError:
    """An Elasticsearch client exception as a RetrievalError that says what to do."""
    import elastic_transport
    import elasticsearch

    where = redact_url(url)
    if isinstance(e, elastic_transport.ConnectionTimeout):
        return RetrievalError(
            f"Elasticsearch at {where} timed out: the cluster is overloaded or unreachable; "
            "retry later or raise the timeout"
        )
    if isinstance(e, elastic_transport.ConnectionError | elastic_transport.TlsError):
        return RetrievalError(
            f"Elasticsearch at {where} is unreachable ({type(e).__name__}): check that the "
            "cluster is up and DISTILLERY_ES_URL / --es-url points at it"
        )
    if isinstance(e, elasticsearch.NotFoundError) and e.error == "index_not_found_exception":
        return RetrievalError(
            f"index {index!r} does not exist at {where}: build it with `distillery index build "
            f"--backend es --es-url URL --index {index} --corpus PATH`"
        )
    if isinstance(e, elasticsearch.AuthenticationException | elasticsearch.AuthorizationException):
        return RetrievalError(
            f"Elasticsearch at {where} refused the credentials ({e.meta.status}): "
            "check DISTILLERY_ES_API_KEY"
        )
    if isinstance(e, elasticsearch.UnsupportedProductError):
        return RetrievalError(f"{where} is not an Elasticsearch server: check the URL")
    if isinstance(e, elasticsearch.ApiError):
        return RetrievalError(f"Elasticsearch at {where} answered {e.meta.status}: {e.message}")
    return RetrievalError(f"Elasticsearch at {where} failed: {type(e).__name__}: {e}")


def _passage(hit: dict[str, Any], mode: SearchMode = "bm25") -> Passage:
    src = hit.get("_source") or {}
    score = float(hit.get("_score") or 0.0)
    if mode == "dense":  # Elasticsearch scores cosine similarity as (1 + cosine) / 2
        score = 2.0 * score - 1.0
    return Passage(
        id=str(hit["_id"]),
        title=str(src.get("title", "")),
        text=str(src.get("text", "")),
        score=score,
    )


def check_index_model(meta: object, embedder: Embedder, where: str, index: str) -> None:
    """Refuse an index whose vectors were made by another model (or that has none)."""
    from retrieval.dense import check_model

    hint = f"`distillery index build --backend es --dense --rebuild --index {index} --corpus PATH`"
    if not isinstance(meta, dict) or "model" not in meta:
        raise RetrievalError(
            f"index {index!r} at {where} holds no dense vectors (built without --dense): "
            f"search it with search_mode bm25, or rebuild it with {hint}"
        )
    check_model(meta, embedder, f"index {index!r} at {where}", hint)


def _client_major() -> int:
    import elasticsearch

    return int(elasticsearch.__versionstr__.split(".")[0])


class ElasticRetriever:
    """Async retriever over an index built by `distillery index build --backend es`."""

    def __init__(
        self,
        url: str,
        index: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 10.0,
        retries: int = 3,
        connections: int = 16,
        mode: SearchMode = "bm25",
        embedder: EmbedderFactory | None = None,
    ):
        if not url:
            raise ValueError("an Elasticsearch URL is required")
        self.url = url
        self.index = index
        self.mode: SearchMode = check_mode(mode)
        if self.mode != "bm25" and embedder is None:
            raise ValueError(f"search mode {mode!r} needs an embedder factory")
        self._embedder_factory = embedder
        self._embedder: Embedder | None = None
        self._api_key = api_key
        self._timeout_s = timeout_s
        self._retries = retries
        self._connections = connections
        self._es: Any = None

    def _client(self) -> Any:
        if self._es is None:
            from elastic_transport import HttpxAsyncHttpNode
            from elasticsearch import AsyncElasticsearch

            self._es = AsyncElasticsearch(
                self.url,
                api_key=self._api_key,
                node_class=HttpxAsyncHttpNode,
                connections_per_node=self._connections,
                request_timeout=self._timeout_s,
                max_retries=self._retries,
                retry_on_timeout=True,
            )
        return self._es

    async def _checked_embedder(self) -> Embedder:
        """The query embedder, loaded on first use after checking the index's model."""
        if self._embedder is None:
            assert self._embedder_factory is not None
            embedder = await asyncio.to_thread(self._embedder_factory)
            try:
                mapping = await self._client().indices.get_mapping(index=self.index)
            except Exception as e:
                raise translate_error(e, self.url, self.index) from e
            mappings = mapping.get(self.index, {}).get("mappings", {})
            meta = (mappings.get("_meta") or {}).get(META_KEY)
            check_index_model(meta, embedder, redact_url(self.url), self.index)
            self._embedder = embedder
        return self._embedder

    async def _query_vectors(self, texts: Sequence[str]) -> list[list[float] | None]:
        """The query vectors of `texts` (None each in bm25 mode)."""
        if self.mode == "bm25":
            return [None for _ in texts]
        embedder = await self._checked_embedder()
        vectors = await asyncio.to_thread(embedder.embed_queries, list(texts))
        return [v.tolist() for v in vectors]

    async def search(self, query: str, k: int = 3) -> list[Passage]:
        check_k(k)
        text = prepare_query(query)
        if not text:
            return []
        (vector,) = await self._query_vectors([query])
        try:
            body = search_body(text, k, self.mode, vector)
            resp = await self._client().search(index=self.index, **body)
        except Exception as e:
            raise translate_error(e, self.url, self.index) from e
        return [_passage(h, self.mode) for h in resp["hits"]["hits"]]

    async def search_batch(self, queries: Sequence[str], k: int = 3) -> list[list[Passage]]:
        """One `_msearch` round trip for the whole batch."""
        check_k(k)
        texts = [prepare_query(q) for q in queries]
        wanted = [i for i, t in enumerate(texts) if t]
        out: list[list[Passage]] = [[] for _ in texts]
        if not wanted:
            return out
        vectors = await self._query_vectors([queries[i] for i in wanted])
        searches: list[dict[str, Any]] = []
        for i, vector in zip(wanted, vectors, strict=True):
            searches += [{"index": self.index}, search_body(texts[i], k, self.mode, vector)]
        try:
            resp = await self._client().msearch(searches=searches)
        except Exception as e:
            raise translate_error(e, self.url, self.index) from e
        for i, r in zip(wanted, resp["responses"], strict=True):
            if "error" in r:
                err = r["error"]
                if isinstance(err, dict) and err.get("type") == "index_not_found_exception":
                    import elasticsearch

                    raise translate_error(
                        elasticsearch.NotFoundError("index_not_found_exception", resp.meta, r),
                        self.url,
                        self.index,
                    )
                raise RetrievalError(f"Elasticsearch search failed for query {i}: {err}")
            out[i] = [_passage(h, self.mode) for h in r["hits"]["hits"]]
        return out

    async def ping(self) -> dict[str, object]:
        es = self._client()
        try:
            info = await es.info()
            count = await es.count(index=self.index)
        except Exception as e:
            raise translate_error(e, self.url, self.index) from e
        version = str(info.get("version", {}).get("number", "?"))
        server_major = int(version.split(".")[0]) if version[:1].isdigit() else None
        if server_major is not None and server_major != _client_major():
            raise RetrievalError(
                f"Elasticsearch at {redact_url(self.url)} is version {version} but the client "
                f"library is {_client_major()}.x: install 'elasticsearch>={server_major},"
                f"<{server_major + 1}'"
            )
        return {
            "backend": "elasticsearch",
            "url": redact_url(self.url),
            "index": self.index,
            "server_version": version,
            "documents": int(count["count"]),
            "search_mode": self.mode,
            **(
                {"embedding_model": (await self._checked_embedder()).name}
                if self.mode != "bm25"
                else {}
            ),
        }

    async def aclose(self) -> None:
        if self._es is not None:
            es, self._es = self._es, None
            await es.close()


class ElasticIndexWriter:
    """IndexSink for retrieval.ingest: bulk-loads passages into an Elasticsearch index."""

    default_batch_size = 2_000

    def __init__(
        self,
        url: str,
        index: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        retries: int = 3,
        shards: int = 1,
        replicas: int = 0,
        embedder: Embedder | None = None,
    ):
        from elasticsearch import Elasticsearch

        self.url = url
        self.index = index
        self.description = f"Elasticsearch index {index!r} at {redact_url(url)}"
        self.embedder = embedder
        """With an embedder, passages get vectors (dense/hybrid search); the batches shrink."""
        if embedder is not None:
            self.default_batch_size = 256
        self._shards = shards
        self._replicas = replicas
        self._es = Elasticsearch(
            url,
            api_key=api_key,
            request_timeout=timeout_s,
            max_retries=retries,
            retry_on_timeout=True,
        )

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise translate_error(e, self.url, self.index) from e

    def load_state(self) -> dict[str, Any] | None:
        if not self._call(self._es.indices.exists, index=self.index):
            return None
        mapping = self._call(self._es.indices.get_mapping, index=self.index)
        meta = (mapping.get(self.index, {}).get("mappings", {}).get("_meta") or {}).get(META_KEY)
        if not isinstance(meta, dict):
            return {"format": None}
        if self.embedder is not None and meta.get("complete") is not None:
            check_index_model(meta, self.embedder, redact_url(self.url), self.index)
        elif self.embedder is None and "model" in meta:
            raise RetrievalError(
                f"{self.description} holds dense vectors: pass --dense to resume or verify it, "
                "or --rebuild to replace it with a BM25-only index"
            )
        return meta

    def reset(self) -> None:
        if self._call(self._es.indices.exists, index=self.index):
            self._call(self._es.indices.delete, index=self.index)
        dims = self.embedder.dim if self.embedder is not None else None
        body = index_body(shards=self._shards, replicas=self._replicas, dims=dims)
        self._call(
            self._es.indices.create,
            index=self.index,
            settings=body["settings"],
            mappings=body["mappings"],
        )

    def add(self, batch: Sequence[CorpusPassage], *, replace: bool) -> None:
        # `index` operations with _id = passage id overwrite: replace needs nothing more.
        from elasticsearch import helpers

        sources: list[dict[str, Any]] = [
            {"id": p.id, "title": p.title, "text": p.text} for p in batch
        ]
        if self.embedder is not None:
            from retrieval.embedding import passage_text

            vectors = self.embedder.embed_passages([passage_text(p.title, p.text) for p in batch])
            for src, vec in zip(sources, vectors, strict=True):
                src[VECTOR_FIELD] = vec.tolist()
        actions = (
            {"_op_type": "index", "_index": self.index, "_id": p.id, "_source": src}
            for p, src in zip(batch, sources, strict=True)
        )
        try:
            helpers.bulk(
                self._es, actions, chunk_size=len(batch), max_retries=3, raise_on_error=True
            )
        except helpers.BulkIndexError as e:
            first = e.errors[0] if e.errors else {}
            raise RetrievalError(
                f"{self.description}: {len(e.errors)} passages failed: {first}"
            ) from e
        except Exception as e:
            raise translate_error(e, self.url, self.index) from e

    def save_state(self, state: dict[str, Any]) -> None:
        if self.embedder is not None:
            e = self.embedder
            state = {**state, "model": e.name, "digest": e.digest, "dim": e.dim}
        self._call(self._es.indices.put_mapping, index=self.index, meta={META_KEY: state})
        if state.get("complete"):
            self._call(
                self._es.indices.put_settings,
                index=self.index,
                settings={"index": {"refresh_interval": None}},
            )

    def count(self) -> int:
        self._call(self._es.indices.refresh, index=self.index)
        return int(self._call(self._es.count, index=self.index)["count"])

    def close(self) -> None:
        self._es.close()
