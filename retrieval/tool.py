"""The `web_search(query: str) -> str` tool the agent's code calls (protocol in DESIGN.md).

Output (top-k passages, similarity = the backend's relevance score with 3 decimals):

    \\nRetrieved documents:\\n
    \\n===== Document 1, similarity: 14.237 =====\\n"Title"\\ntext\\n
    \\n===== Document 2, similarity: 12.010 =====\\n"Title"\\ntext\\n

Title and text are the stored passage strings, byte for byte. The layout (header, the
document block, where numbering starts, the score's decimals, the no-results text) is a
`SearchLayout`; the default above is this project's protocol, and a protocol profile
(agent/protocol.py, docs/protocol.md) passes another one to `make_web_search`. Retrieval
imports nothing from agent: the layout arrives as plain values. A search that matches
nothing, an unusable query and every retrieval failure (timeout, backend down, index
missing) come back as a short text the model can act on; the tool never raises.

`make_web_search` makes a new tool per agent run: it holds that run's cache, so a query
repeated in the run (SAG candidates often repeat it) hits the backend once, and
concurrent identical calls share one search. Failures are not cached.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from retrieval.analysis import prepare_query
from retrieval.retriever import Passage, RetrievalError, Retriever

ToolFn = Callable[..., Awaitable[str]]
"""A host-side tool (the same shape as `sandbox.results.ToolFn`; retrieval needs no import)."""

HEADER = "\nRetrieved documents:\n"
MAX_QUERY_CHARS = 2000

DOCUMENT = '\n===== Document {{number}}, similarity: {{score}} =====\n"{{title}}"\n{{text}}\n'
NO_RESULTS = (
    "{{header}}\nNo documents matched the query {{query}}. "
    "Try fewer, different or more general keywords.\n"
)
DOCUMENT_FIELDS = ("number", "score", "title", "text")
NO_RESULTS_FIELDS = ("header", "query")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def fill(template: str, values: Mapping[str, str]) -> str:
    """`template` with each `{{name}}` in `values` replaced in one pass (a value is never
    scanned again, so passage text containing `{{title}}` stays as it is)."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def _braced(names: Sequence[str]) -> str:
    return ", ".join("{{" + n + "}}" for n in names)


@dataclass(frozen=True)
class SearchLayout:
    """How web_search prints its results (the model reads and learns this text)."""

    header: str = HEADER
    """Printed first, before the documents (and before the no-results text)."""
    document: str = DOCUMENT
    """One block per passage; placeholders {{number}}, {{score}}, {{title}}, {{text}}."""
    number_start: int = 1
    """The number of the first (best) document."""
    score_decimals: int = 3
    """Decimals of the printed relevance score."""
    no_results: str = NO_RESULTS
    """Printed when nothing matched; placeholders {{header}} and {{query}} (the query's repr)."""

    def __post_init__(self) -> None:
        problems = []
        for name, text, allowed in (
            ("document", self.document, DOCUMENT_FIELDS),
            ("no_results", self.no_results, NO_RESULTS_FIELDS),
        ):
            unknown = sorted(set(_PLACEHOLDER.findall(text)) - set(allowed))
            if unknown:
                problems.append(
                    f"{name} uses unknown placeholder(s) {_braced(unknown)}"
                    f" (allowed: {_braced(allowed)})"
                )
        if not 0 <= self.score_decimals <= 10:
            problems.append(f"score_decimals must be 0..10, not {self.score_decimals}")
        if self.number_start < 0:
            problems.append(f"number_start must be >= 0, not {self.number_start}")
        if problems:
            raise ValueError("invalid web_search layout: " + "; ".join(problems))

    def format_documents(self, passages: Sequence[Passage]) -> str:
        parts = [self.header]
        for i, p in enumerate(passages, start=self.number_start):
            values = {
                "number": str(i),
                "score": f"{p.score:.{self.score_decimals}f}",
                "title": p.title,
                "text": p.text,
            }
            parts.append(fill(self.document, values))
        return "".join(parts)

    def format_no_results(self, query: str) -> str:
        return fill(self.no_results, {"header": self.header, "query": repr(query)})


DEFAULT_LAYOUT = SearchLayout()


def format_documents(passages: Sequence[Passage], layout: SearchLayout = DEFAULT_LAYOUT) -> str:
    """The protocol's observation text for `passages` (in rank order)."""
    return layout.format_documents(passages)


def no_results(query: str, layout: SearchLayout = DEFAULT_LAYOUT) -> str:
    return layout.format_no_results(query)


def make_web_search(
    retriever: Retriever,
    k: int = 3,
    timeout_s: float = 10.0,
    layout: SearchLayout = DEFAULT_LAYOUT,
) -> ToolFn:
    """A fresh `web_search` tool for one agent run (holds that run's result cache), printing
    its results in `layout`."""
    if k < 1:
        raise ValueError("k must be >= 1")
    if timeout_s <= 0:
        raise ValueError("timeout_s must be > 0")
    cache: dict[str, asyncio.Future[str]] = {}

    async def run_search(query: str) -> str:
        try:
            passages = await asyncio.wait_for(retriever.search(query, k), timeout_s)
        except TimeoutError:
            raise RetrievalError(
                f"the search took longer than {timeout_s:g} s; retry, or use a shorter query"
            ) from None
        return layout.format_documents(passages) if passages else layout.format_no_results(query)

    async def web_search(*args: Any, **kwargs: Any) -> str:
        """Search Wikipedia; returns the top passages as text. web_search(query: str) -> str"""
        if len(args) + len(kwargs) != 1 or (kwargs and "query" not in kwargs):
            return (
                "Error: web_search takes exactly one argument, the query string: "
                'web_search("Eiffel Tower height")'
            )
        query = args[0] if args else kwargs["query"]
        if not isinstance(query, str):
            return (
                f"Error: web_search expects the query as a string, got {type(query).__name__}; "
                'call it like web_search("Eiffel Tower height")'
            )
        query = query.strip()[:MAX_QUERY_CHARS]
        if not prepare_query(query):
            return (
                "Error: the search query is empty (it has no letters or digits); "
                'pass keywords, e.g. web_search("Eiffel Tower height")'
            )
        fut = cache.get(query)
        if fut is None:
            fut = asyncio.ensure_future(run_search(query))
            # mark a failure as seen even when every caller was cancelled meanwhile
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            cache[query] = fut
        try:
            return await asyncio.shield(fut)
        except RetrievalError as e:
            cache.pop(query, None)
            return f"Error: web_search failed: {e}"
        except asyncio.CancelledError:
            if not fut.done():  # our caller was cancelled, the shared search goes on
                raise
            cache.pop(query, None)
            return "Error: web_search was cancelled; retry the search"
        except Exception as e:  # a bug or an unexpected backend failure: still not fatal
            cache.pop(query, None)
            return f"Error: web_search failed unexpectedly ({type(e).__name__}: {e}); retry later"

    web_search.__name__ = "web_search"
    signature = inspect.Signature(
        [inspect.Parameter("query", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str)],
        return_annotation=str,
    )
    web_search.__signature__ = signature  # type: ignore[attr-defined]  # shows (query: str)
    return web_search
