"""The web_search tool: byte-exact protocol output, per-run cache, errors as observations."""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from retrieval.elastic import ElasticRetriever
from retrieval.embedded import EmbeddedRetriever
from retrieval.retriever import Passage
from retrieval.tool import format_documents, make_web_search
from tests.helpers.ports import free_port
from tests.retrieval.conftest import UNICODE_PASSAGES


def test_format_is_byte_exact():
    passages = [
        Passage("7", 'Zürich "Bahnhofstrasse"', "line one\n\tline two  ", 14.23749),
        Passage("8", "Emoji", "😀 👍🏽", 0.87349),
        Passage("9", "", "no title", 0.0),
    ]
    expected = (
        "\nRetrieved documents:\n"
        "\n===== Document 1, similarity: 14.237 =====\n"
        '"Zürich "Bahnhofstrasse""\nline one\n\tline two  \n'
        "\n===== Document 2, similarity: 0.873 =====\n"
        '"Emoji"\n😀 👍🏽\n'
        "\n===== Document 3, similarity: 0.000 =====\n"
        '""\nno title\n'
    )
    assert format_documents(passages) == expected


class Counting:
    """Passes through to a real retriever and counts the searches that reach it."""

    def __init__(self, inner: Any, delay_s: float = 0.0):
        self.inner = inner
        self.calls: list[str] = []
        self.delay_s = delay_s

    async def search(self, query: str, k: int = 3) -> list[Passage]:
        self.calls.append(query)
        await asyncio.sleep(self.delay_s)
        return list(await self.inner.search(query, k))

    async def search_batch(self, queries: Sequence[str], k: int = 3) -> list[list[Passage]]:
        return [await self.search(q, k) for q in queries]

    async def ping(self) -> dict[str, object]:
        return dict(await self.inner.ping())

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_real_search_output(embedded_index: Path):
    r = EmbeddedRetriever(embedded_index)
    web_search = make_web_search(r)
    out = await web_search("zurich bahnhofstrasse city")
    top = await r.search("zurich bahnhofstrasse city", k=3)
    assert out.startswith(
        "\nRetrieved documents:\n\n===== Document 1, similarity: "
        f"{top[0].score:.3f} =====\n"
        '"Zürich "Bahnhofstrasse""\n' + UNICODE_PASSAGES[3]["text"] + "\n\n===== Document 2, "
    )
    assert out.count("\n===== Document ") == 3  # top-3 by default
    assert "===== Document 3, similarity: " in out and "Document 4" not in out
    k5 = await make_web_search(r, k=5)("history")
    assert k5.count("\n===== Document ") == 5
    await r.aclose()


async def test_cache_per_run(embedded_index: Path):
    inner = EmbeddedRetriever(embedded_index)
    counting = Counting(inner, delay_s=0.05)
    run1 = make_web_search(counting)
    a = await run1("deepest lake")
    b = await run1("deepest lake")
    assert a == b and counting.calls == ["deepest lake"]
    # concurrent identical calls (SAG candidates) share one search
    outs = await asyncio.gather(*(run1("Mona Lisa") for _ in range(5)))
    assert len(set(outs)) == 1 and counting.calls.count("Mona Lisa") == 1
    # a new run starts with an empty cache
    run2 = make_web_search(counting)
    assert await run2("deepest lake") == a
    assert counting.calls.count("deepest lake") == 2
    await inner.aclose()


async def test_errors_are_observations_and_not_cached(tmp_path: Path, embedded_index: Path):
    index_dir = tmp_path / "later"
    web_search = make_web_search(EmbeddedRetriever(index_dir))
    out = await web_search("Mona Lisa")
    assert out.startswith("Error: web_search failed: no search index at")
    assert "distillery index build" in out
    # the index appears: the same run's next call searches again, it does not replay the error
    shutil.copytree(embedded_index, index_dir)
    assert (await web_search("Mona Lisa")).startswith("\nRetrieved documents:\n")


async def test_unreachable_cluster_is_an_observation():
    r = ElasticRetriever(f"http://127.0.0.1:{free_port()}", "wiki", timeout_s=1, retries=0)
    out = await make_web_search(r)("Eiffel Tower")
    assert out.startswith("Error: web_search failed: Elasticsearch at")
    assert "unreachable" in out
    await r.aclose()


async def test_timeout_is_an_observation():
    with socket.socket() as srv:  # accepts, never answers
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        r = ElasticRetriever(
            f"http://127.0.0.1:{srv.getsockname()[1]}", "wiki", timeout_s=30, retries=0
        )
        out = await make_web_search(r, timeout_s=0.3)("Eiffel Tower")
        assert out == (
            "Error: web_search failed: the search took longer than 0.3 s; "
            "retry, or use a shorter query"
        )
        await r.aclose()


@pytest.mark.parametrize(
    "args, kwargs, expect",
    [
        ((), {}, "exactly one argument"),
        (("a", "b"), {}, "exactly one argument"),
        ((), {"q": "x"}, "exactly one argument"),
        ((42,), {}, "as a string, got int"),
        ((["a"],), {}, "as a string, got list"),
        (("",), {}, "empty"),
        (("?!...",), {}, "empty"),
    ],
)
async def test_bad_calls_get_usage_help(
    args: tuple[Any, ...], kwargs: dict[str, Any], expect: str, embedded_index: Path
):
    out = await make_web_search(EmbeddedRetriever(embedded_index))(*args, **kwargs)
    assert out.startswith("Error: ") and expect in out
    assert 'web_search("' in out


async def test_keyword_query_and_no_results(embedded_index: Path):
    web_search = make_web_search(EmbeddedRetriever(embedded_index))
    assert (await web_search(query="Mona Lisa")).startswith("\nRetrieved documents:\n\n=====")
    out = await web_search("qwzxv plokmn")
    assert out == (
        "\nRetrieved documents:\n\nNo documents matched the query 'qwzxv plokmn'. "
        "Try fewer, different or more general keywords.\n"
    )
