"""Question sources: the paper's JSON sets, JSONL, and reasoning-gym generators."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.grading import math_equal
from training.questions import QuestionSetError, load_questions

PAPER_SETS = {
    "hotpotqa_500_20250422.json": ("factual", 500),
    "bamboogle_125_20250507.json": ("factual", 125),
    "musique_500_20250504.json": ("factual", 500),
    "2wikimultihopqa_500_20250511.json": ("factual", 500),
    "math_500_20250414.json": ("math", 500),
    "gsm_hard_500_20250507.json": ("math", 500),
    "aime_90_20250504.json": ("math", 90),
    "olymath_200_20250511.json": ("math", 200),
    "hotpotqa_1000_20250402.json": ("factual", 1000),
    "math_1000_20250414.json": ("math", 1000),
    "math_medium_1000_20250430.json": ("math", 1000),
}


def test_every_paper_set_loads_with_the_right_task(shared_data_dir: Path) -> None:
    for name, (task, n) in PAPER_SETS.items():
        qs = load_questions(shared_data_dir / "questions" / name)
        assert len(qs) == n, name
        assert {q.task for q in qs} == {task}, name
        assert all(q.question.strip() for q in qs)
        assert len({q.id for q in qs}) == n
    gsm = load_questions(shared_data_dir / "questions" / "gsm_hard_500_20250507.json", limit=3)
    assert len(gsm) == 3 and isinstance(gsm[0].answer, float)
    hotpot = load_questions(shared_data_dir / "questions" / "hotpotqa_500_20250422.json", limit=1)
    assert hotpot[0].id == "5a85eed75542996432c5713b" and hotpot[0].meta["type"] == "hotpot"
    forced = load_questions(
        shared_data_dir / "questions" / "bamboogle_125_20250507.json", task="math", limit=2
    )
    assert {q.task for q in forced} == {"math"}


def test_jsonl_with_and_without_ids(tmp_path: Path) -> None:
    path = tmp_path / "qs.jsonl"
    rows = [
        {"question": "What is 2+2?", "answer": "4"},
        {"id": "b", "question": "Capital of France?", "answer": "Paris", "task": "factual"},
        {"question": "No gold here"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    qs = load_questions(path)
    assert [q.id for q in qs] == ["0", "b", "2"]
    assert [q.task for q in qs] == ["factual", "factual", "factual"]  # stem "qs": not math
    assert qs[2].answer is None
    assert [q.task for q in load_questions(path, task="math")] == ["math"] * 3


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"question": "a"}\nnot json\n', "not JSON"),
        ('{"q": "a"}\n', "'question'"),
        ('{"question": "a", "task": "poetry"}\n', "task must be"),
        ('{"id": 1, "question": "a"}\n{"id": 1, "question": "b"}\n', "more than once"),
    ],
)
def test_bad_jsonl_says_what_is_wrong(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(QuestionSetError, match=message):
        load_questions(path)


def test_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(QuestionSetError, match="does not exist"):
        load_questions(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text('{"examples": {"a": 1}}')
    with pytest.raises(QuestionSetError, match="paper's format"):
        load_questions(tmp_path / "x.json")
    with pytest.raises(QuestionSetError, match="cannot build"):
        load_questions("gym:no_such_dataset?size=2")
    with pytest.raises(QuestionSetError, match="unknown parameter"):
        load_questions("gym:gsm_symbolic?n=2")


def test_reasoning_gym_generator_is_deterministic_and_gradable() -> None:
    import reasoning_gym

    qs = load_questions("gym:gsm_symbolic?size=5&seed=7")
    again = load_questions("gym:gsm_symbolic?size=5&seed=7")
    other = load_questions("gym:gsm_symbolic?size=5&seed=8")
    assert [q.question for q in qs] == [q.question for q in again]
    assert [q.question for q in qs] != [q.question for q in other]
    assert [q.id for q in qs] == [f"gsm_symbolic-s7-{i}" for i in range(5)]
    assert all(q.task == "math" for q in qs)
    ds = reasoning_gym.create_dataset("gsm_symbolic", size=5, seed=7)
    for q, item in zip(qs, ds, strict=True):
        # our grader agrees with reasoning-gym's own scorer on the gold answer
        assert ds.score_answer(str(q.answer), item) == 1.0
        assert math_equal(f"\\boxed{{{q.answer}}}", q.answer)
        assert not math_equal(str(float(q.answer) + 1), q.answer)
