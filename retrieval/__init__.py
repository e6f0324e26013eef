"""The web_search tool: Elasticsearch backend (production) and an embedded tantivy index.

The names below are what other packages may import (checked by tests/test_architecture.py);
importing the package loads no heavy dependency.
"""

from retrieval.demo_corpus import demo_index_dir, demo_source, ensure_demo_index
from retrieval.elastic import ElasticIndexWriter, ElasticRetriever
from retrieval.embedded import EmbeddedIndexWriter, EmbeddedRetriever
from retrieval.factory import open_retriever
from retrieval.ingest import FileSource, IngestError, IterSource, ingest
from retrieval.retriever import Passage, RetrievalError, Retriever
from retrieval.tool import SearchLayout, format_documents, make_web_search, no_results

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
    "SearchLayout",
    "demo_index_dir",
    "demo_source",
    "ensure_demo_index",
    "format_documents",
    "ingest",
    "make_web_search",
    "no_results",
    "open_retriever",
]
