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


def test_a_subset_written_elsewhere_keeps_its_gold_passages(
    data_dir: Path, tmp_path: Path
) -> None:
    """A question file of HotpotQA questions under another name (the study's held-out half)
    finds each question's gold passages by its id; math questions never borrow them."""
    import json

    (hotpot,) = resolve_sets(["hotpotqa"], data_dir, only_covered=True, limit=4)
    rows = [{"id": q.meta["qid"], "question": q.question, "answer": q.answer, "task": "factual"}
            for q in hotpot.questions]  # fmt: skip
    rows.append({"id": "not-a-hotpot-id", "question": "Who?", "answer": "x", "task": "factual"})
    rows.append({"id": hotpot.questions[0].meta["qid"], "question": "1+1", "answer": "2",
                 "task": "math"})  # fmt: skip
    factual, math = tmp_path / "held_out.jsonl", tmp_path / "sums.jsonl"
    factual.write_text("".join(json.dumps(r) + "\n" for r in rows[:-1]))
    math.write_text(json.dumps(rows[-1]) + "\n")
    sub, sums = resolve_sets([str(factual), str(math)], data_dir)
    assert len(sub.gold) == 4 and sub.covered_total == 4
    for q in hotpot.questions:
        g = sub.gold[f"held_out/{q.meta['qid']}"]
        assert g.passage_ids == hotpot.gold[q.id].passage_ids and g.contents
    assert sums.gold == {}


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
