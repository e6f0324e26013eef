"""Ingestion: formats, validation with line numbers, resume without duplicates, count check."""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from retrieval.elastic import ElasticIndexWriter, ElasticRetriever
from retrieval.embedded import EmbeddedIndexWriter, EmbeddedRetriever
from retrieval.ingest import (
    BadLine,
    CorpusPassage,
    FileSource,
    IngestError,
    ingest,
    parse_line,
)
from retrieval.retriever import RetrievalError
from tests.helpers.noida_server import NoidaServer
from tests.retrieval.conftest import write_corpus


def rows(n: int, start: int = 1) -> list[dict[str, Any]]:
    return [
        {"id": str(i), "title": f"Article {i}", "text": f"Passage number {i} about topic{i % 7}."}
        for i in range(start, start + n)
    ]


def test_parse_accepts_both_formats():
    wiki = parse_line(
        json.dumps({"id": 12, "contents": '"A "quoted" title"\nline one\nline two'}).encode()
    )
    assert wiki == CorpusPassage("12", 'A "quoted" title', "line one\nline two")
    plain = parse_line(json.dumps({"id": "x", "title": "", "text": "body"}).encode())
    assert plain == CorpusPassage("x", "", "body")


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"{not json", "invalid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"title": "t", "text": "x"}', '"id"'),
        (b'{"id": true, "title": "t", "text": "x"}', '"id"'),
        (b'{"id": " ", "title": "t", "text": "x"}', "empty"),
        (b'{"id": "1", "contents": "no title line"}', "Title"),
        (b'{"id": "1", "contents": "Title\\ntext"}', "Title"),
        (b'{"id": "1", "title": "t"}', "needs"),
        (b'{"id": "1", "title": "t", "text": "   "}', "text is empty"),
        (b'{"id": "1", "title": 5, "text": "x"}', "strings"),
        (b'{"id": "1", "title": "t", "text": "\xff\xfe"}', "UTF-8"),
    ],
)
def test_parse_rejects_bad_lines_with_a_reason(raw: bytes, reason: str):
    with pytest.raises(BadLine, match=reason):
        parse_line(raw)


def build(corpus: Path, index_dir: Path, **kw: Any):
    writer = EmbeddedIndexWriter(index_dir)
    try:
        return ingest(FileSource(corpus), writer, progress=False, **kw)
    finally:
        writer.close()


async def ids_for(index_dir: Path, query: str, k: int = 50) -> list[str]:
    r = EmbeddedRetriever(index_dir)
    try:
        return [p.id for p in await r.search(query, k=k)]
    finally:
        await r.aclose()


async def test_gzip_and_plain_files_build_the_same_index(tmp_path: Path):
    plain = write_corpus(tmp_path / "c.jsonl", rows(50))
    gz = tmp_path / "c.jsonl.bin"  # compression is detected by content, not by name
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    a = build(plain, tmp_path / "a", batch_size=7)
    b = build(gz, tmp_path / "b", batch_size=7)
    assert a.count_ok and b.count_ok and a.indexed == b.indexed == 50
    # equal scores may come in any order (segments differ between builds): compare sets
    assert sorted(await ids_for(tmp_path / "a", "topic3 passage")) == sorted(
        await ids_for(tmp_path / "b", "topic3 passage")
    )


async def test_bad_lines_are_skipped_and_reported_with_line_numbers(tmp_path: Path):
    lines = [json.dumps(r) for r in rows(20)]
    lines[4] = "{broken"
    lines[9] = '{"id": "x"}'
    lines.insert(15, "")  # blank lines are not errors
    lines[17] = '{"id": "y", "title": "t", "text": ""}'
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    report = build(corpus, tmp_path / "i", batch_size=4)
    assert report.bad == 3
    assert [n for n, _ in report.bad_lines] == [5, 10, 18]
    assert "invalid JSON" in report.bad_lines[0][1]
    assert report.passages == report.indexed == 17
    assert report.count_ok


async def test_abort_on_bad_line_then_resume_with_skip(tmp_path: Path):
    lines = [json.dumps(r) for r in rows(30)]
    lines[21] = "garbage"
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    with pytest.raises(IngestError, match=r"c\.jsonl:22: invalid JSON"):
        build(corpus, tmp_path / "i", batch_size=5, on_bad_line="abort")
    # everything before the bad line is committed; the rerun starts at it
    report = build(corpus, tmp_path / "i", batch_size=5, on_bad_line="skip")
    assert report.resumed_after_line == 21
    assert report.added_now == 8 and report.bad == 1
    assert report.indexed == report.passages == 29


class Interrupting:
    """A real index sink that stops the process at a chosen point (simulates a crash)."""

    def __init__(self, sink: Any, *, at_batch: int, committed: bool):
        self.sink = sink
        self.index = getattr(sink, "index", None)
        self.description = sink.description
        self.default_batch_size = sink.default_batch_size
        self.adds = 0
        self.at_batch = at_batch
        self.committed = committed

    def load_state(self) -> Any:
        return self.sink.load_state()

    def reset(self) -> None:
        self.sink.reset()

    def add(self, batch: Sequence[CorpusPassage], *, replace: bool) -> None:
        self.adds += 1
        if self.adds == self.at_batch and not self.committed:
            raise KeyboardInterrupt  # the batch is not committed
        self.sink.add(batch, replace=replace)

    def save_state(self, state: dict[str, Any]) -> None:
        if self.adds == self.at_batch and self.committed:
            raise KeyboardInterrupt  # the batch is committed, its checkpoint not written
        self.sink.save_state(state)

    def count(self) -> int:
        return int(self.sink.count())

    def close(self) -> None:
        self.sink.close()


def make_sink(kind: str, tmp_path: Path, es_server: NoidaServer | None) -> Any:
    if kind == "embedded":
        return EmbeddedIndexWriter(tmp_path / "idx")
    assert es_server is not None
    return ElasticIndexWriter(es_server.url, f"resume-{tmp_path.name.lower()[-20:]}")


@pytest.mark.parametrize("kind", ["embedded", "es"])
@pytest.mark.parametrize("committed", [False, True])
async def test_resume_after_interruption_has_no_duplicates(
    kind: str, committed: bool, tmp_path: Path, request: pytest.FixtureRequest
):
    es = request.getfixturevalue("es_server") if kind == "es" else None
    corpus = write_corpus(tmp_path / "c.jsonl", rows(57))
    sink = Interrupting(make_sink(kind, tmp_path, es), at_batch=3, committed=committed)
    with pytest.raises(KeyboardInterrupt):
        ingest(FileSource(corpus), sink, batch_size=10, progress=False, log=lambda _m: None)
    sink.close()
    state = make_sink(kind, tmp_path, es).load_state()
    assert state is not None and not state["complete"]
    assert state["lines_done"] == 20  # batch 3 (lines 21-30) is not checkpointed

    sink2 = make_sink(kind, tmp_path, es)
    try:
        report = ingest(FileSource(corpus), sink2, batch_size=10, progress=False)
    finally:
        sink2.close()
    assert report.resumed_after_line == state["lines_done"]
    assert report.indexed == report.passages == 57  # nothing indexed twice
    assert report.count_ok
    if kind == "embedded":  # every id once: "topic3" passages are ids 3, 10, 17, ...
        got = await ids_for(tmp_path / "idx", "topic3")
        assert sorted(got, key=int) == [str(i) for i in range(3, 58, 7)]
    else:
        assert es is not None
        r = ElasticRetriever(es.url, sink2.index)
        try:
            got = [p.id for p in await r.search("topic3", k=50)]
        finally:
            await r.aclose()
        assert sorted(got, key=int) == [str(i) for i in range(3, 58, 7)]


def test_finished_index_is_verified_not_rebuilt(tmp_path: Path):
    corpus = write_corpus(tmp_path / "c.jsonl", rows(12))
    first = build(corpus, tmp_path / "i")
    again = build(corpus, tmp_path / "i")
    assert first.added_now == 12
    assert again.already_complete and again.added_now == 0 and again.count_ok


def test_another_corpus_needs_rebuild(tmp_path: Path):
    a = write_corpus(tmp_path / "a.jsonl", rows(12))
    b = write_corpus(tmp_path / "b.jsonl", rows(5, start=100))
    build(a, tmp_path / "i")
    with pytest.raises(IngestError, match="another corpus.*--rebuild"):
        build(b, tmp_path / "i")
    report = build(b, tmp_path / "i", rebuild=True)
    assert report.indexed == 5 and report.count_ok


def test_duplicate_ids_fail_the_es_count_check(es_server: NoidaServer, tmp_path: Path):
    data = rows(10) + rows(2, start=3)  # ids 3 and 4 twice
    corpus = write_corpus(tmp_path / "dup.jsonl", data)
    sink = ElasticIndexWriter(es_server.url, "dups")
    try:
        report = ingest(FileSource(corpus), sink, progress=False)
    finally:
        sink.close()
    assert report.passages == 12 and report.indexed == 10 and not report.count_ok


def test_reset_refuses_a_folder_that_is_not_an_index(tmp_path: Path):
    (tmp_path / "precious.txt").write_text("keep me")
    corpus = write_corpus(tmp_path / "c.jsonl", rows(3))
    with pytest.raises(RetrievalError, match="refusing"):
        build(corpus, tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


async def test_unfinished_index_is_not_served(tmp_path: Path):
    corpus = write_corpus(tmp_path / "c.jsonl", rows(30))
    sink = Interrupting(EmbeddedIndexWriter(tmp_path / "i"), at_batch=2, committed=False)
    with pytest.raises(KeyboardInterrupt):
        ingest(FileSource(corpus), sink, batch_size=10, progress=False, log=lambda _m: None)
    sink.close()
    r = EmbeddedRetriever(tmp_path / "i")
    with pytest.raises(RetrievalError, match="unfinished.*resume"):
        await r.search("passage")


def test_missing_corpus_file(tmp_path: Path):
    with pytest.raises(IngestError, match="not found"):
        FileSource(tmp_path / "nope.jsonl")


def test_truncated_gzip_is_reported(tmp_path: Path):
    data = gzip.compress("\n".join(json.dumps(r) for r in rows(2000)).encode())
    corpus = tmp_path / "cut.jsonl.gz"
    corpus.write_bytes(data[: len(data) // 2])
    with pytest.raises(IngestError, match="cannot read past line"):
        build(corpus, tmp_path / "i")
