"""Both backends on the same fixture corpus: rankings, batches, unicode, odd queries, failures.

Elasticsearch runs as a real ES-API server (noida-db) through the real client. Scores
differ slightly between engines (length quantisation), so rankings are compared and
only near-ties (< 1% apart) may swap.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from retrieval.elastic import ElasticRetriever
from retrieval.embedded import EmbeddedRetriever
from retrieval.retriever import Passage, RetrievalError
from tests.helpers.noida_server import NoidaServer
from tests.helpers.ports import free_port
from tests.retrieval.conftest import UNICODE_PASSAGES, load_questions

EXTRA_QUERIES = [
    "cafe de flore sartre",  # folded accents match "Café"
    "CAFÉ DE FLORE",
    "東京タワー",
    "Ἀθῆναι Athens",
    "zurich bahnhofstrasse shopping",
    "creme brulee custard",
    "emoji pictographs",
    "the history of the Roman Empire",  # stop words around the content words
    "painting Leonardo portrait Renaissance",
]


@pytest.fixture
async def embedded(embedded_index: Path) -> AsyncIterator[EmbeddedRetriever]:
    r = EmbeddedRetriever(embedded_index)
    yield r
    await r.aclose()


@pytest.fixture
async def elastic(es_server: NoidaServer, es_index: str) -> AsyncIterator[ElasticRetriever]:
    r = ElasticRetriever(es_server.url, es_index, timeout_s=10.0)
    yield r
    await r.aclose()


@pytest.fixture(params=["embedded", "elastic"])
async def retriever(
    request: pytest.FixtureRequest, embedded_index: Path, es_server: NoidaServer, es_index: str
) -> AsyncIterator[Any]:
    r: Any = (
        EmbeddedRetriever(embedded_index)
        if request.param == "embedded"
        else ElasticRetriever(es_server.url, es_index)
    )
    yield r
    await r.aclose()


def assert_same_ranking(a: list[Passage], b: list[Passage], *, query: str, tol: float = 0.01):
    assert len(a) == len(b), query
    if not a:
        return
    top_a, top_b = a[0].score, b[0].score
    for i, (pa, pb) in enumerate(zip(a, b, strict=True)):
        if pa.id == pb.id:
            continue
        # a swap is only acceptable between near-tied passages
        other_a = {p.id: p.score / top_a for p in a}
        other_b = {p.id: p.score / top_b for p in b}
        near = abs(pa.score / top_a - pb.score / top_b) <= tol
        assert near, f"{query!r}: rank {i + 1}: {pa.id} ({pa.title}) vs {pb.id} ({pb.title})"
        for pid in (pa.id, pb.id):
            if pid in other_a and pid in other_b:
                assert abs(other_a[pid] - other_b[pid]) <= tol, (query, pid)


async def test_same_rankings_on_both_backends(
    embedded: EmbeddedRetriever, elastic: ElasticRetriever
):
    queries = [q["question"] for q in load_questions()] + EXTRA_QUERIES
    got_e = await embedded.search_batch(queries, k=5)
    got_s = await elastic.search_batch(queries, k=5)
    exact = 0
    for q, a, b in zip(queries, got_e, got_s, strict=True):
        assert a, f"no result for {q!r}"
        assert_same_ranking(a, b, query=q)
        exact += [p.id for p in a] == [p.id for p in b]
    assert exact >= 0.9 * len(queries)  # swaps are rare near-ties, not the rule


async def test_batch_equals_single_searches(embedded: EmbeddedRetriever, elastic: ElasticRetriever):
    queries = ["Mona Lisa painter", "", "deepest lake in the world", "!!!"]
    for r in (embedded, elastic):
        batch = await r.search_batch(queries, k=3)
        single = [await r.search(q, k=3) for q in queries]
        assert [[p.id for p in ps] for ps in batch] == [[p.id for p in ps] for ps in single]
        assert batch[1] == [] and batch[3] == []


async def test_unicode_text_round_trips_byte_exact(retriever: Any):
    r = retriever
    for row, query in [
        (UNICODE_PASSAGES[0], "cafe de flore sartre"),
        (UNICODE_PASSAGES[1], "東京タワー"),
        (UNICODE_PASSAGES[2], "Ἀθῆναι"),
        (UNICODE_PASSAGES[3], "zurich bahnhofstrasse"),
        (UNICODE_PASSAGES[4], "emoji pictographs"),
    ]:
        hits = await r.search(query, k=3)
        assert hits and hits[0].id == row["id"], (query, [h.title for h in hits])
        assert hits[0].title == row["title"]
        assert hits[0].text == row["text"]  # tabs, newlines, trailing spaces, emoji kept


async def test_empty_queries_return_nothing(retriever: Any):
    for query in ["", "   ", "?!.,;:()[]{}\"'", "\n\t", "The of AND a in"]:  # last: stop words
        assert await retriever.search(query, k=3) == []


async def test_very_long_query(embedded: EmbeddedRetriever, elastic: ElasticRetriever):
    # 5000 words: cut to the first 128 words the same way by both backends
    query = "Which mountain is the highest in Africa? " + "volcano Tanzania " * 2500
    a = await embedded.search(query, k=3)
    b = await elastic.search(query, k=3)
    assert a and a[0].title == "Mount Kilimanjaro"
    assert_same_ranking(a, b, query="long")


async def test_k_is_validated_and_respected(retriever: Any):
    r = retriever
    for k in (1, 3, 7):
        assert len(await r.search("history of the empire", k=k)) == k
    for bad in (0, -1, 1001):
        with pytest.raises(ValueError):
            await r.search("x", k=bad)


async def test_ping_reports_documents(
    embedded: EmbeddedRetriever, elastic: ElasticRetriever, corpus_rows: list[dict[str, Any]]
):
    e = await embedded.ping()
    s = await elastic.ping()
    assert e["backend"] == "embedded" and e["documents"] == len(corpus_rows)
    assert s["backend"] == "elasticsearch" and s["documents"] == len(corpus_rows)
    assert str(s["server_version"]).startswith("8.")


async def test_concurrent_embedded_searches_match_sequential(embedded: EmbeddedRetriever):
    queries = [q["question"] for q in load_questions()][:20]
    sequential = [await embedded.search(q, k=3) for q in queries]
    concurrent = await asyncio.gather(*(embedded.search(q, k=3) for q in queries))
    assert list(concurrent) == sequential


async def test_missing_embedded_index(tmp_path: Path):
    r = EmbeddedRetriever(tmp_path / "nothing-here")
    for call in (r.search("x"), r.search_batch(["x"]), r.ping()):
        with pytest.raises(RetrievalError, match="distillery index build"):
            await call


async def test_missing_elastic_index(es_server: NoidaServer):
    r = ElasticRetriever(es_server.url, "no-such-index")
    try:
        for call in (r.search("x"), r.search_batch(["x", "y"]), r.ping()):
            with pytest.raises(RetrievalError, match="does not exist.*distillery index build"):
                await call
    finally:
        await r.aclose()


async def test_unreachable_cluster_fails_fast_with_advice():
    port = free_port()  # nothing listens there
    r = ElasticRetriever(f"http://user:secret@127.0.0.1:{port}", "wiki", timeout_s=2, retries=1)
    try:
        start = time.monotonic()
        with pytest.raises(RetrievalError, match="unreachable.*DISTILLERY_ES_URL") as ei:
            await r.search("anything")
        assert time.monotonic() - start < 5
        assert "secret" not in str(ei.value)  # credentials never reach messages
        with pytest.raises(RetrievalError, match="unreachable"):
            await r.ping()
    finally:
        await r.aclose()


async def test_hanging_cluster_times_out():
    # a real socket that accepts connections and never answers
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        port = srv.getsockname()[1]
        r = ElasticRetriever(f"http://127.0.0.1:{port}", "wiki", timeout_s=0.5, retries=0)
        try:
            start = time.monotonic()
            with pytest.raises(RetrievalError, match="timed out"):
                await r.search("anything")
            assert time.monotonic() - start < 3
        finally:
            await r.aclose()
