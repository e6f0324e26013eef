"""Pick the backend from configuration: Elasticsearch when a URL is set, else the embedded index."""

from __future__ import annotations

from pathlib import Path

from retrieval.retriever import Retriever


def open_retriever(
    *,
    es_url: str | None,
    es_index: str,
    index_dir: Path | None,
    es_api_key: str | None = None,
    timeout_s: float = 10.0,
    retries: int = 3,
) -> Retriever:
    """An unopened retriever (nothing is contacted until the first search or ping)."""
    if es_url:
        from retrieval.elastic import ElasticRetriever

        return ElasticRetriever(
            es_url, es_index, api_key=es_api_key, timeout_s=timeout_s, retries=retries
        )
    from retrieval.embedded import EmbeddedRetriever

    if index_dir is None:
        raise ValueError("the embedded backend needs an index folder (or set an Elasticsearch URL)")
    return EmbeddedRetriever(index_dir)
