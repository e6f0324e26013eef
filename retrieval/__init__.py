"""The web_search tool: Elasticsearch backend (production) and an embedded tantivy index.

The names below are what other packages may import (checked by tests/test_architecture.py);
they load lazily (tantivy and the ES client only when used).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ElasticIndexWriter",
    "ElasticRetriever",
    "EmbeddedIndexWriter",
    "EmbeddedRetriever",
    "FileSource",
    "IngestError",
    "IterSource",
    "Passage",
    "RetrievalError",
    "Retriever",
    "demo_index_dir",
    "demo_source",
    "ensure_demo_index",
    "format_documents",
    "ingest",
    "make_web_search",
    "no_results",
    "open_retriever",
]

_EXPORTS = {
    "ElasticIndexWriter": "retrieval.elastic",
    "ElasticRetriever": "retrieval.elastic",
    "EmbeddedIndexWriter": "retrieval.embedded",
    "EmbeddedRetriever": "retrieval.embedded",
    "FileSource": "retrieval.ingest",
    "IngestError": "retrieval.ingest",
    "IterSource": "retrieval.ingest",
    "Passage": "retrieval.retriever",
    "RetrievalError": "retrieval.retriever",
    "Retriever": "retrieval.retriever",
    "demo_index_dir": "retrieval.demo_corpus",
    "demo_source": "retrieval.demo_corpus",
    "ensure_demo_index": "retrieval.demo_corpus",
    "format_documents": "retrieval.tool",
    "ingest": "retrieval.ingest",
    "make_web_search": "retrieval.tool",
    "no_results": "retrieval.tool",
    "open_retriever": "retrieval.factory",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
