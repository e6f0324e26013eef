"""Recall floor of each search mode on a slice of the mini-Wikipedia, and the CLI.

The slice is read from the shared data folder (Settings.data_dir, DISTILLERY_DATA_DIR;
never copied into the repository): passages 2631-2780 of `wiki/passages.jsonl.gz`, which
hold every gold passage (and the HotpotQA distractor paragraphs) of 17 covered HotpotQA
questions. Each question is the query; a hit is a gold passage among the top k. The
floors sit below what was measured (docs/retrieval.md), so only a real regression (a
broken embedding, fusion or lookup) fails. Skipped when the data folder is absent.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from distillery.cli import main
from distillery.settings import Settings
from retrieval.embedded import EmbeddedRetriever
from tests.retrieval.conftest import build_dense_index, write_corpus

FIRST, LAST = 2631, 2780
# Share of the 34 gold passages in the top 3, as measured on this slice: bm25 0.706,
# dense 0.882, hybrid 0.824 (top 10: 1.0 for each).
FLOORS = {"bm25": 0.6, "dense": 0.75, "hybrid": 0.7}

pytestmark = pytest.mark.slow  # embeds 150 passages (~25 CPU-s)


def _slice(data_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    wiki = data_dir / "wiki"
    if not (wiki / "passages.jsonl.gz").is_file() or not (wiki / "gold.jsonl").is_file():
        pytest.skip(f"no mini-Wikipedia under {wiki} (set DISTILLERY_DATA_DIR)")
    rows = []
    with gzip.open(wiki / "passages.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            obj = json.loads(line)
            if FIRST <= int(obj["id"]) <= LAST:
                title, _, text = obj["contents"].partition("\n")
                rows.append({"id": obj["id"], "title": title[1:-1], "text": text})
    gold = [json.loads(x) for x in (wiki / "gold.jsonl").read_text().splitlines() if x.strip()]
    wanted = [
        g
        for g in gold
        if g["question_file"].startswith("hotpotqa_500")
        and all(FIRST <= int(p) <= LAST for p in g["passage_ids"])
    ]
    questions = json.loads((data_dir / "questions" / wanted[0]["question_file"]).read_text())
    text = {q["id"]: q["question"] for q in questions["examples"]}
    return rows, [
        {"question": text[g["question_id"]], "gold": set(g["passage_ids"])} for g in wanted
    ]


@pytest.fixture(scope="module")
def wiki_slice(
    tmp_path_factory: pytest.TempPathFactory, embedder: Any
) -> tuple[Path, list[dict[str, Any]]]:
    rows, questions = _slice(Settings().data_dir)  # type: ignore[call-arg]
    assert len(rows) == LAST - FIRST + 1 and len(questions) >= 15
    tmp = tmp_path_factory.mktemp("wiki-slice")
    index = build_dense_index(write_corpus(tmp / "slice.jsonl", rows), tmp / "index", embedder, 64)
    return index, questions


@pytest.mark.parametrize("mode", ["bm25", "dense", "hybrid"])
async def test_recall_floor(
    mode: str, wiki_slice: tuple[Path, list[dict[str, Any]]], embedder: Any
):
    index, questions = wiki_slice
    r = EmbeddedRetriever(index, mode=mode, embedder=lambda: embedder)  # type: ignore[arg-type]
    for k, floor in ((3, FLOORS[mode]), (10, 0.95)):
        results = await r.search_batch([q["question"] for q in questions], k=k)
        found = sum(
            len(q["gold"] & {p.id for p in hits})
            for q, hits in zip(questions, results, strict=True)
        )
        recall = found / sum(len(q["gold"]) for q in questions)
        assert recall >= floor, f"{mode} recall@{k} {recall:.3f} < {floor}"
    await r.aclose()


def test_cli_build_dense_and_search_modes(
    tmp_path: Path, embed_cache: Path, capsys: pytest.CaptureFixture[str]
):
    rows = [
        {"id": "1", "title": "Mona Lisa", "text": "A portrait by Leonardo da Vinci in the Louvre."},
        {"id": "2", "title": "Eiffel Tower", "text": "A wrought-iron lattice tower in Paris."},
        {"id": "3", "title": "Photosynthesis", "text": "Plants turn light into chemical energy."},
    ]
    corpus = write_corpus(tmp_path / "c.jsonl", rows)
    idx = tmp_path / "idx"
    common = ["--index-dir", str(idx), "--cache-dir", str(embed_cache)]
    build = ["index", "build", "--corpus", str(corpus), "--no-progress", *common]
    assert main([*build, "--dense"]) == 0
    out = capsys.readouterr().out
    assert "embedded index" in out and "dense vectors" in out and "3 passages indexed" in out

    search = ["index", "search", "how do plants make energy from sunlight", "-k", "1", *common]
    assert main([*search, "--search-mode", "dense"]) == 0
    out, err = capsys.readouterr()
    assert "search mode: dense" in err
    assert '"Photosynthesis"' in out and "similarity: 0." in out
    assert main([*search, "--search-mode", "hybrid", "--json"]) == 0
    hit = json.loads(capsys.readouterr().out.splitlines()[0])
    assert hit["mode"] == "hybrid" and hit["title"] == "Photosynthesis"
    with pytest.raises(SystemExit) as bad:  # not a mode: argparse's usage error
        main([*search, "--search-mode", "fuzzy"])
    assert bad.value.code == 2 and "invalid choice: 'fuzzy'" in capsys.readouterr().err

    # the BM25-only index of another folder: dense search says how to build the vectors
    assert main(["index", "build", "--corpus", str(corpus), "--no-progress",
                 "--index-dir", str(tmp_path / "bm25")]) == 0  # fmt: skip
    capsys.readouterr()
    args = ["index", "search", "plants", "--search-mode", "dense", "--cache-dir", str(embed_cache)]
    assert main([*args, "--index-dir", str(tmp_path / "bm25")]) == 1
    assert "index build --dense" in capsys.readouterr().err
