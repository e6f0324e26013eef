"""The retriever interface: search one query or a batch, top-k passages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


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
