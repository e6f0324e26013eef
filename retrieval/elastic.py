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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from retrieval.analysis import (
    ANALYZER_NAME,
    SEARCH_FIELDS,
    check_k,
    es_analysis_settings,
    prepare_query,
)
from retrieval.ingest import CorpusPassage
from retrieval.retriever import Passage, RetrievalError

META_KEY = "distillery"


def redact_url(url: str) -> str:
    """The URL without user:password (safe for messages and logs)."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return url


def index_body(*, shards: int = 1, replicas: int = 0) -> dict[str, Any]:
    """Settings and mappings for a passage index (created empty, refresh off while loading)."""
    text_field = {"type": "text", "analyzer": ANALYZER_NAME, "similarity": "wiki_bm25"}
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
            },
        },
    }


def search_body(query_text: str, k: int) -> dict[str, Any]:
    return {
        "query": {
            "multi_match": {
                "query": query_text,
                "fields": list(SEARCH_FIELDS),
                "type": "most_fields",
            }
        },
        "size": k,
        "_source": ["title", "text"],
        "track_total_hits": False,
    }


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


def _passage(hit: dict[str, Any]) -> Passage:
    src = hit.get("_source") or {}
    return Passage(
        id=str(hit["_id"]),
        title=str(src.get("title", "")),
        text=str(src.get("text", "")),
        score=float(hit.get("_score") or 0.0),
    )


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
    ):
        if not url:
            raise ValueError("an Elasticsearch URL is required")
        self.url = url
        self.index = index
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

    async def search(self, query: str, k: int = 3) -> list[Passage]:
        check_k(k)
        text = prepare_query(query)
        if not text:
            return []
        try:
            body = search_body(text, k)
            resp = await self._client().search(
                index=self.index,
                query=body["query"],
                size=k,
                source=body["_source"],
                track_total_hits=False,
            )
        except Exception as e:
            raise translate_error(e, self.url, self.index) from e
        return [_passage(h) for h in resp["hits"]["hits"]]

    async def search_batch(self, queries: Sequence[str], k: int = 3) -> list[list[Passage]]:
        """One `_msearch` round trip for the whole batch."""
        check_k(k)
        texts = [prepare_query(q) for q in queries]
        wanted = [i for i, t in enumerate(texts) if t]
        out: list[list[Passage]] = [[] for _ in texts]
        if not wanted:
            return out
        searches: list[dict[str, Any]] = []
        for i in wanted:
            searches += [{"index": self.index}, search_body(texts[i], k)]
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
            out[i] = [_passage(h) for h in r["hits"]["hits"]]
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
    ):
        from elasticsearch import Elasticsearch

        self.url = url
        self.index = index
        self.description = f"Elasticsearch index {index!r} at {redact_url(url)}"
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
        return meta if isinstance(meta, dict) else {"format": None}

    def reset(self) -> None:
        if self._call(self._es.indices.exists, index=self.index):
            self._call(self._es.indices.delete, index=self.index)
        body = index_body(shards=self._shards, replicas=self._replicas)
        self._call(
            self._es.indices.create,
            index=self.index,
            settings=body["settings"],
            mappings=body["mappings"],
        )

    def add(self, batch: Sequence[CorpusPassage], *, replace: bool) -> None:
        # `index` operations with _id = passage id overwrite: replace needs nothing more.
        from elasticsearch import helpers

        actions = (
            {
                "_op_type": "index",
                "_index": self.index,
                "_id": p.id,
                "_source": {"id": p.id, "title": p.title, "text": p.text},
            }
            for p in batch
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
