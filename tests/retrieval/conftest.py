"""Retrieval fixtures: a small real-text corpus, both backends built from it, a real ES-API server.

The fixture corpus is ~300 passages of the demo corpus (real Wikipedia text: every gold
article of the demo questions plus a deterministic sample) and a few hand-written
passages with unicode, quotes, tabs and newlines. It stays small because the ES-API
test server (noida-db) scans every document per query.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.noida_server import NoidaServer, noida_server

REPO = Path(__file__).resolve().parents[2]
QUESTIONS_FILE = REPO / "benchmarks" / "data" / "retrieval_demo_questions.jsonl"

UNICODE_PASSAGES: list[dict[str, Any]] = [
    {
        "id": "u1",
        "title": "Café de Flore",
        "text": "The Café de Flore is a coffeehouse in Paris, famous for writers such as "
        "Simone de Beauvoir and Jean-Paul Sartre. ☕ 🍵",
    },
    {
        "id": "u2",
        "title": "東京タワー",
        "text": "東京タワーは東京都港区にある電波塔である。 Tokyo Tower is a communications "
        "and observation tower in Minato, Tokyo.",
    },
    {
        "id": "u3",
        "title": "Ἀθῆναι",
        "text": "Ἀθῆναι is the ancient Greek name of Athens; modern Greek writes Αθήνα.",
    },
    {
        "id": "u4",
        "title": 'Zürich "Bahnhofstrasse"',
        "text": "Bahnhofstraße in Zürich is one of the most expensive shopping streets.\n"
        "A second line\twith a tab and trailing spaces  ",
    },
    {
        "id": "u5",
        "title": "Emoji",
        "text": "Emoji such as 😀 and 👍🏽 are pictographs; a zero width joiner builds 👩\u200d💻.",
    },
    {
        "id": "u6",
        "title": "Crème brûlée",
        "text": "Cre\u0300me bru\u0302le\u0301e written with combining accents is a custard "
        "dessert with a caramelised sugar top.",
    },
]


def load_questions() -> list[dict[str, Any]]:
    return [json.loads(line) for line in QUESTIONS_FILE.read_text().splitlines() if line.strip()]


def fixture_rows() -> list[dict[str, Any]]:
    from retrieval.demo_corpus import demo_passages

    rows = demo_passages()
    gold = {t for q in load_questions() for t in q["gold_titles"]}
    keep = [r for r in rows if r["title"] in gold]
    rest = [r for r in rows if r["title"] not in gold]
    keep += random.Random(7).sample(rest, 300 - len(keep))
    keep.sort(key=lambda r: int(r["id"]))
    return keep + UNICODE_PASSAGES


def write_corpus(path: Path, rows: list[dict[str, Any]], *, wiki18: bool = True) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            obj = (
                {"id": r["id"], "contents": f'"{r["title"]}"\n{r["text"]}'}
                if wiki18
                else {"id": r["id"], "title": r["title"], "text": r["text"]}
            )
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="session")
def corpus_rows() -> list[dict[str, Any]]:
    return fixture_rows()


@pytest.fixture(scope="session")
def corpus_file(
    tmp_path_factory: pytest.TempPathFactory, corpus_rows: list[dict[str, Any]]
) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "fixture.jsonl", corpus_rows)


@pytest.fixture(scope="session")
def embedded_index(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> Path:
    from retrieval.embedded import EmbeddedIndexWriter
    from retrieval.ingest import FileSource, ingest

    d = tmp_path_factory.mktemp("embedded") / "index"
    writer = EmbeddedIndexWriter(d)
    try:
        report = ingest(FileSource(corpus_file), writer, progress=False)
    finally:
        writer.close()
    assert report.count_ok, report.summary()
    return d


@pytest.fixture(scope="session")
def es_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NoidaServer]:
    with noida_server(tmp_path_factory.mktemp("noida")) as server:
        yield server


@pytest.fixture(scope="session")
def es_index(es_server: NoidaServer, corpus_file: Path) -> str:
    from retrieval.elastic import ElasticIndexWriter
    from retrieval.ingest import FileSource, ingest

    writer = ElasticIndexWriter(es_server.url, "fixture")
    try:
        report = ingest(FileSource(corpus_file), writer, progress=False, batch_size=100)
    finally:
        writer.close()
    assert report.count_ok, report.summary()
    return "fixture"


# --------------------------------------------------------------------------- dense


DENSE_TITLES = (
    "Mona Lisa",
    "Eiffel Tower",
    "Photosynthesis",
    "Great Wall of China",
    "Albert Einstein",
    "Amazon River",
)


def dense_rows() -> list[dict[str, Any]]:
    """A small corpus for dense tests (every passage is embedded, ~0.15 CPU-s each): the
    fixture passages of a few well-known articles, 30 others, and the unicode passages."""
    rows = fixture_rows()
    named = [r for r in rows if r["title"] in DENSE_TITLES]
    others = [r for r in rows if r["title"] not in DENSE_TITLES and not r["id"].startswith("u")]
    return named + others[:30] + UNICODE_PASSAGES


@pytest.fixture(scope="session")
def embed_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder the bundled embedding model is prepared into (once per session)."""
    from retrieval.embedding import prepare_embedder

    cache = tmp_path_factory.mktemp("cache")
    prepare_embedder(cache)
    return cache


@pytest.fixture(scope="session")
def embedder(embed_cache: Path) -> Any:
    from retrieval.embedding import shared_embedder

    return shared_embedder(embed_cache)


@pytest.fixture(scope="session")
def dense_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("dense-corpus") / "dense.jsonl", dense_rows())


def build_dense_index(corpus: Path, index_dir: Path, embedder: Any, batch: int = 16) -> Path:
    from retrieval.dense import DenseIndexWriter
    from retrieval.embedded import EmbeddedIndexWriter
    from retrieval.ingest import FileSource, ingest

    for sink in (EmbeddedIndexWriter(index_dir), DenseIndexWriter(index_dir, embedder)):
        try:
            report = ingest(FileSource(corpus), sink, progress=False, batch_size=batch)
        finally:
            sink.close()
        assert report.count_ok, report.summary()
    return index_dir


@pytest.fixture(scope="session")
def dense_index(
    tmp_path_factory: pytest.TempPathFactory, dense_corpus: Path, embedder: Any
) -> Path:
    return build_dense_index(dense_corpus, tmp_path_factory.mktemp("dense") / "index", embedder)
