"""The web_search tool: Elasticsearch backend (production) and an embedded tantivy index,
each searchable by BM25, dense e5 embeddings or a hybrid of both.

The names below are what other packages may import (checked by tests/test_architecture.py);
importing the package loads no heavy dependency.
"""

from retrieval.demo_corpus import demo_index_dir, demo_source, ensure_demo_index
from retrieval.dense import DenseIndexWriter
from retrieval.elastic import ElasticIndexWriter, ElasticRetriever
from retrieval.embedded import EmbeddedIndexWriter, EmbeddedRetriever
from retrieval.embedding import Embedder, EmbeddingError, prepare_embedder, shared_embedder
from retrieval.factory import open_retriever
from retrieval.ingest import FileSource, IngestError, IterSource, ingest
from retrieval.retriever import SEARCH_MODES, Passage, RetrievalError, Retriever, SearchMode
from retrieval.tool import SearchLayout, format_documents, make_web_search, no_results

__all__ = [
    "SEARCH_MODES",
    "DenseIndexWriter",
    "ElasticIndexWriter",
    "ElasticRetriever",
    "EmbeddedIndexWriter",
    "EmbeddedRetriever",
    "Embedder",
    "EmbeddingError",
    "FileSource",
    "IngestError",
    "IterSource",
    "Passage",
    "RetrievalError",
    "Retriever",
    "SearchMode",
    "SearchLayout",
    "demo_index_dir",
    "demo_source",
    "ensure_demo_index",
    "format_documents",
    "ingest",
    "make_web_search",
    "no_results",
    "open_retriever",
    "prepare_embedder",
    "shared_embedder",
]
