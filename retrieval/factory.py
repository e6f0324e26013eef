"""Pick the backend from configuration: Elasticsearch when a URL is set, else the embedded index.

`mode` is the search mode (bm25, dense, hybrid); dense and hybrid embed queries with the
model prepared under `cache_dir` (retrieval.embedding), loaded on the first search.
"""

from __future__ import annotations

from pathlib import Path

from retrieval.retriever import Retriever, SearchMode, check_mode


def open_retriever(
    *,
    es_url: str | None,
    es_index: str,
    index_dir: Path | None,
    es_api_key: str | None = None,
    timeout_s: float = 10.0,
    retries: int = 3,
    mode: SearchMode = "bm25",
    cache_dir: Path | None = None,
) -> Retriever:
    """An unopened retriever (nothing is contacted or loaded until the first search or ping)."""
    mode = check_mode(mode)
    embedder = None
    if mode != "bm25":
        if cache_dir is None:
            raise ValueError(f"search mode {mode!r} needs a cache folder for the embedding model")
        from retrieval.embedding import shared_embedder

        folder = cache_dir
        embedder = lambda: shared_embedder(folder)  # noqa: E731
    if es_url:
        from retrieval.elastic import ElasticRetriever

        return ElasticRetriever(
            es_url,
            es_index,
            api_key=es_api_key,
            timeout_s=timeout_s,
            retries=retries,
            mode=mode,
            embedder=embedder,
        )
    from retrieval.embedded import EmbeddedRetriever

    if index_dir is None:
        raise ValueError("the embedded backend needs an index folder (or set an Elasticsearch URL)")
    return EmbeddedRetriever(index_dir, mode=mode, embedder=embedder)
