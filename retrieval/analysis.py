"""One text analysis and one BM25 setting for both backends (the single source of truth).

Tokens are maximal runs of letters and digits (Unicode L and N; combining marks split words,
as in the ES-API test server, which lacks \\p{M}: Wikipedia text is NFC, so Latin accents are
precomposed letters, but some Indic vowel signs split words); tokens are lowercased, the 33
English stop words of Lucene's classic list are dropped, the rest ASCII-folded ("Café"
matches "cafe": small models often drop diacritics), tokens of 100+ bytes are dropped, and
the rest are stemmed with Snowball English (Porter2).

Stop words: questions are full of "the", "of", "in", which occur in nearly every passage.
Scoring them barely changes rankings but costs the most (their posting lists are the
longest): on a 1M-passage corpus they made top-3 queries several times slower.

The embedded index builds this chain with tantivy's analyzer builder; Elasticsearch gets the
equivalent custom analyzer (pattern tokenizer, lowercase, stop, asciifolding, length,
snowball).

BM25 k1/b: tantivy's BM25 is fixed at k1=1.2, b=0.75 (Lucene's defaults). The
Elasticsearch mapping uses the same values so both backends rank alike; a sweep over
k1/b on the demo questions (benchmarks/bench_retrieval.py) found no setting that is
clearly better on these short passages (see README, Retrieval).
"""

from __future__ import annotations

import unicodedata
from typing import Any

ANALYZER_NAME = "wiki_en"
ANALYZER_VERSION = 2
"""Bumped whenever the analysis changes: an index built with another version is refused."""

TOKEN_PATTERN = r"[\p{L}\p{N}]+"
MAX_TOKEN_BYTES = 100
BM25_K1 = 1.2
BM25_B = 0.75
MAX_QUERY_WORDS = 128
"""Longer queries are cut to their first words (Elasticsearch caps boolean clauses)."""

SEARCH_FIELDS = ("title", "text")

STOP_WORDS = (
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is",
    "it", "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there",
    "these", "they", "this", "to", "was", "will", "with",
)  # fmt: skip
"""Lucene's classic English stop set (Elasticsearch's `_english_`), spelled out for both."""


def tantivy_analyzer() -> Any:
    """The analyzer for the embedded index (register it under ANALYZER_NAME on every open)."""
    import tantivy

    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.regex(TOKEN_PATTERN))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.custom_stopword(list(STOP_WORDS)))
        .filter(tantivy.Filter.ascii_fold())
        .filter(tantivy.Filter.remove_long(MAX_TOKEN_BYTES))
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


def es_analysis_settings() -> dict[str, Any]:
    """Index settings (analysis + similarity) that mirror `tantivy_analyzer` in Elasticsearch."""
    return {
        "analysis": {
            "tokenizer": {
                "wiki_words": {"type": "pattern", "pattern": r"[^\p{L}\p{N}]+"},
            },
            "filter": {
                # Elasticsearch counts characters, tantivy bytes: equal for ASCII tokens.
                "wiki_stop": {"type": "stop", "stopwords": list(STOP_WORDS)},
                "wiki_length": {"type": "length", "max": MAX_TOKEN_BYTES - 1},
                "wiki_stem": {"type": "snowball", "language": "English"},
            },
            "analyzer": {
                ANALYZER_NAME: {
                    "type": "custom",
                    "tokenizer": "wiki_words",
                    "filter": [
                        "lowercase",
                        "wiki_stop",
                        "asciifolding",
                        "wiki_length",
                        "wiki_stem",
                    ],
                },
            },
        },
        "similarity": {"wiki_bm25": {"type": "BM25", "k1": BM25_K1, "b": BM25_B}},
    }


def _is_word_char(c: str) -> bool:
    return unicodedata.category(c)[0] in "LN"


def query_words(query: str) -> list[str]:
    """The words of a query as the analyzer's tokenizer splits them (before filters)."""
    words: list[str] = []
    cur: list[str] = []
    for c in query:
        if _is_word_char(c):
            cur.append(c)
        elif cur:
            words.append("".join(cur))
            cur = []
    if cur:
        words.append("".join(cur))
    return words


def prepare_query(query: str) -> str:
    """Words joined by spaces, at most MAX_QUERY_WORDS of them; "" when nothing is searchable.

    Both backends search this string, so a very long query is cut the same way in both.
    """
    return " ".join(query_words(query)[:MAX_QUERY_WORDS])


MAX_K = 1000


def check_k(k: int) -> None:
    """Both backends accept 1 <= k <= MAX_K."""
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise ValueError(f"k must be an integer from 1 to {MAX_K}, not {k!r}")
