"""Dense and hybrid search through Elasticsearch, against a real ES-API server (noida-db).

The index is built by the real writer with the bundled embedding model: the mapping's
`dense_vector` field, `knn` queries and the `rrf` retriever, compared with the embedded
backend on the same corpus. Elasticsearch quantises indexed vectors (int8 HNSW), so
scores are compared with a tolerance and rankings only where they are not near-ties.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from retrieval.elastic import VECTOR_FIELD, ElasticIndexWriter, ElasticRetriever, search_body
from retrieval.embedded import EmbeddedRetriever
from retrieval.embedding import DIM, MODEL_DIGEST, MODEL_NAME
from retrieval.ingest import FileSource, ingest
from retrieval.retriever import RetrievalError
from tests.helpers.noida_server import NoidaServer
from tests.retrieval.test_dense import PARAPHRASES

INDEX = "dense-fixture"


def _factory(embedder: Any) -> Any:
    return lambda: embedder


@pytest.fixture(scope="module")
def es_dense_index(es_server: NoidaServer, dense_corpus: Path, embedder: Any) -> str:
    writer = ElasticIndexWriter(es_server.url, INDEX, embedder=embedder)
    try:
        report = ingest(FileSource(dense_corpus), writer, progress=False, batch_size=16)
    finally:
        writer.close()
    assert report.count_ok, report.summary()
    return INDEX


@pytest.fixture
async def es_retrievers(
    es_server: NoidaServer, es_dense_index: str, embedder: Any
) -> AsyncIterator[dict[str, ElasticRetriever]]:
    rs = {
        mode: ElasticRetriever(
            es_server.url, es_dense_index, mode=mode, embedder=_factory(embedder)
        )
        for mode in ("dense", "hybrid")
    }
    yield rs
    for r in rs.values():
        await r.aclose()


def test_mapping_has_dense_vector_and_model(es_server: NoidaServer, es_dense_index: str):
    from elasticsearch import Elasticsearch

    es = Elasticsearch(es_server.url)
    mapping = es.indices.get_mapping(index=es_dense_index)[es_dense_index]["mappings"]
    field = mapping["properties"][VECTOR_FIELD]
    assert (field["type"], field["dims"], field["similarity"]) == ("dense_vector", DIM, "cosine")
    meta = mapping["_meta"]["distillery"]
    assert (meta["model"], meta["digest"], meta["complete"]) == (MODEL_NAME, MODEL_DIGEST, True)
    # vectors are stored with each passage
    doc = es.get(index=es_dense_index, id="u1")["_source"]
    assert len(doc[VECTOR_FIELD]) == DIM and doc["title"] == "Café de Flore"
    es.close()


async def test_knn_matches_the_embedded_backend(
    es_retrievers: dict[str, ElasticRetriever], dense_index: Path, embedder: Any
):
    local = EmbeddedRetriever(dense_index, mode="dense", embedder=_factory(embedder))
    for query, title in PARAPHRASES.items():
        got = await es_retrievers["dense"].search(query, k=3)
        want = await local.search(query, k=3)
        assert got[0].title == title == want[0].title
        # the printed score is the cosine (Elasticsearch's (1 + cos) / 2 converted back)
        for g in got:
            w = next((p for p in want if p.id == g.id), None)
            if w is not None:
                assert g.score == pytest.approx(w.score, abs=0.02)
    batch = await es_retrievers["dense"].search_batch(list(PARAPHRASES), k=1)
    assert [b[0].title for b in batch] == list(PARAPHRASES.values())
    await local.aclose()


async def test_rrf_hybrid(
    es_retrievers: dict[str, ElasticRetriever], dense_index: Path, embedder: Any
):
    local = EmbeddedRetriever(dense_index, mode="hybrid", embedder=_factory(embedder))
    for query in ("Leonardo portrait painting", "iron tower Paris", "penicillin discovery"):
        got = await es_retrievers["hybrid"].search(query, k=3)
        want = await local.search(query, k=3)
        assert got[0].id == want[0].id, query
        assert got[0].score == pytest.approx(want[0].score, abs=1e-3)
    batch = await es_retrievers["hybrid"].search_batch(["Leonardo portrait painting", ""], k=2)
    assert batch[0][0].title == "Mona Lisa" and batch[1] == []
    await local.aclose()


def test_search_bodies():
    vec = [0.5] * DIM
    dense = search_body("mona lisa", 3, "dense", vec)
    assert dense["knn"]["k"] == 3 and dense["knn"]["num_candidates"] >= 3 and "query" not in dense
    hybrid = search_body("mona lisa", 3, "hybrid", vec)["retriever"]["rrf"]
    assert [next(iter(r)) for r in hybrid["retrievers"]] == ["standard", "knn"]
    assert hybrid["rank_constant"] == 60 and hybrid["rank_window_size"] >= 3
    with pytest.raises(ValueError, match="query vector"):
        search_body("x", 3, "dense", None)


async def test_another_model_is_refused(es_server: NoidaServer, es_dense_index: str, embedder: Any):
    from elasticsearch import Elasticsearch

    es = Elasticsearch(es_server.url)
    es.indices.create(
        index="other-model",
        mappings={
            "_meta": {"distillery": {"model": "bge-small-en-v1.5", "digest": "0" * 64, "dim": DIM}}
        },
    )
    es.close()
    r = ElasticRetriever(es_server.url, "other-model", mode="dense", embedder=_factory(embedder))
    with pytest.raises(RetrievalError) as e:
        await r.search("Mona Lisa", 3)
    msg = str(e.value)
    assert "bge-small-en-v1.5" in msg and MODEL_NAME in msg
    assert "index build --backend es --dense --rebuild --index other-model" in msg
    await r.aclose()


async def test_bm25_only_index_in_dense_mode_is_refused(
    es_server: NoidaServer, es_index: str, embedder: Any
):
    r = ElasticRetriever(es_server.url, es_index, mode="hybrid", embedder=_factory(embedder))
    with pytest.raises(RetrievalError, match="holds no dense vectors.*--dense --rebuild"):
        await r.search("Mona Lisa", 3)
    with pytest.raises(RetrievalError, match="holds no dense vectors"):
        await r.ping()  # readiness fails too, before any search
    await r.aclose()


async def test_ping_reports_mode_and_model(es_retrievers: dict[str, ElasticRetriever]):
    info = await es_retrievers["hybrid"].ping()
    assert info["search_mode"] == "hybrid" and info["embedding_model"] == MODEL_NAME


def test_dense_build_into_a_bm25_index_is_refused(
    es_server: NoidaServer, es_index: str, corpus_file: Path, embedder: Any
):
    writer = ElasticIndexWriter(es_server.url, es_index, embedder=embedder)
    try:
        with pytest.raises(RetrievalError, match="no dense vectors"):
            ingest(FileSource(corpus_file), writer, progress=False)
    finally:
        writer.close()
    bm25_writer = ElasticIndexWriter(es_server.url, INDEX)  # without --dense
    try:
        with pytest.raises(RetrievalError, match="holds dense vectors: pass --dense"):
            ingest(FileSource(corpus_file), bm25_writer, progress=False)
    finally:
        bm25_writer.close()


def test_cli_builds_and_searches_a_dense_es_index(
    es_server: NoidaServer, embed_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    from distillery.cli import main
    from tests.retrieval.conftest import write_corpus

    rows = [
        {"id": "1", "title": "Mona Lisa", "text": "A portrait by Leonardo da Vinci in the Louvre."},
        {"id": "2", "title": "Photosynthesis", "text": "Plants turn light into chemical energy."},
    ]
    corpus = write_corpus(tmp_path / "c.jsonl", rows)
    es = ["--backend", "es", "--es-url", es_server.url, "--index", "cli-dense"]
    common = [*es, "--cache-dir", str(embed_cache)]
    build = ["index", "build", "--corpus", str(corpus), "--no-progress", *common]
    assert main([*build, "--dense"]) == 0
    assert "2 passages indexed" in capsys.readouterr().out
    query = "how do plants make energy from sunlight"
    assert main(["index", "search", query, "-k", "1", "--search-mode", "dense", *common]) == 0
    out, err = capsys.readouterr()
    assert "search mode: dense (es index cli-dense)" in err and '"Photosynthesis"' in out
    assert main(["index", "build", "--corpus", str(corpus), "--no-progress", *common]) == 1
    assert "holds dense vectors: pass --dense" in capsys.readouterr().err
