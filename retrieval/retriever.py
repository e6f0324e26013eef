"""The retriever interface: search one query or a batch, top-k passages, in a search mode.

Modes: `bm25` (lexical), `dense` (cosine similarity of e5 embeddings) and `hybrid`
(reciprocal rank fusion of both). A passage's `score` is the mode's own: the BM25 score,
the cosine, or the fused RRF score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

SearchMode = Literal["bm25", "dense", "hybrid"]
SEARCH_MODES: tuple[SearchMode, ...] = ("bm25", "dense", "hybrid")


def check_mode(mode: str) -> SearchMode:
    """`mode` if it is a search mode, else a ValueError that lists them."""
    for m in SEARCH_MODES:
        if mode == m:
            return m
    raise ValueError(f"search mode must be one of {', '.join(SEARCH_MODES)}, not {mode!r}")


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    text: str
    score: float


class RetrievalError(Exception):
    """Search failed (backend unreachable, index missing, timeout); the message says what to do."""


class Retriever(Protocol):
    async def search(self, query: str, k: int = 3) -> list[Passage]: ...

    async def search_batch(self, queries: Sequence[str], k: int = 3) -> list[list[Passage]]: ...

    async def ping(self) -> dict[str, object]:
        """Health details (backend, index, document count); raises RetrievalError when unusable."""
        ...

    async def aclose(self) -> None: ...
