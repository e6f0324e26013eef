"""The paper's eight sets from the shared data folder, coverage, and bad question sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluation.datasets import PAPER_SETS, DatasetError, file_sha256, resolve_sets


@pytest.fixture
def data_dir(shared_data_dir: Path) -> Path:
    if not (shared_data_dir / "questions" / "math_500_20250414.json").is_file():
        pytest.skip(f"the shared question sets are not at {shared_data_dir}")
    return shared_data_dir


def test_paper_means_the_eight_test_sets_with_their_domains(data_dir: Path) -> None:
    sets = resolve_sets(["paper"], data_dir)
    assert [s.name for s in sets] == [
        "math500", "gsm_hard", "aime", "olymmath", "hotpotqa", "bamboogle", "musique", "2wiki",
    ]
    assert [s.domain for s in sets] == ["math"] * 4 + ["factual"] * 4
    assert [len(s.questions) for s in sets] == [500, 500, 90, 200, 500, 125, 500, 500]
    hotpot = sets[4]
    assert hotpot.sha256 == file_sha256(data_dir / "questions" / PAPER_SETS["hotpotqa"].file)
    assert hotpot.questions[0].id.startswith("hotpotqa/")
    assert hotpot.questions[0].meta["qid"] == hotpot.questions[0].id.split("/", 1)[1]
    # the mini-Wikipedia has gold passages for 400 of the 500 HotpotQA test questions
    assert (hotpot.covered_total, len(hotpot.gold)) == (400, 400)
    assert all(len(g.contents) == len(g.passage_ids) for g in hotpot.gold.values())
    assert [s.covered_total for s in sets[5:]] == [0, 0, 0]


def test_only_covered_and_limit(data_dir: Path) -> None:
    (hotpot, gsm) = resolve_sets(["hotpotqa", "gsm_hard"], data_dir, only_covered=True, limit=5)
    assert len(hotpot.questions) == 5 and all(q.id in hotpot.gold for q in hotpot.questions)
    assert len(gsm.questions) == 5  # coverage is about Wikipedia: math sets are not filtered
    assert hotpot.describe()["covered"] == 5 and hotpot.describe()["total"] == 500
    with pytest.raises(DatasetError, match="no question of 'bamboogle' has gold passages"):
        resolve_sets(["bamboogle"], data_dir, only_covered=True)


def test_unknown_names_and_bad_files_say_what_to_do(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown question set 'hotpot'.*math500"):
        resolve_sets(["hotpot"], data_dir)
    bad = tmp_path / "qs.jsonl"
    bad.write_text('{"question": "1+1?", "answer": "2"}\n{"question": oops}\n')
    with pytest.raises(DatasetError, match=r"qs.jsonl:2: not JSON"):
        resolve_sets([str(bad)], data_dir)
    with pytest.raises(DatasetError, match="does not exist: point --data-dir"):
        resolve_sets(["math500"], tmp_path)
    with pytest.raises(DatasetError, match="given twice"):
        resolve_sets(["aime", "aime_90_20250504"], data_dir)


def test_a_question_file_keeps_its_domain(tmp_path: Path) -> None:
    f = tmp_path / "trivia.jsonl"
    f.write_text('{"id": "q1", "question": "Capital of France?", "answer": "Paris", '
                 '"task": "factual"}\n')
    (s,) = resolve_sets([str(f)], tmp_path)
    assert (s.name, s.domain, s.questions[0].id) == ("trivia", "factual", "trivia/q1")
