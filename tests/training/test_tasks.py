"""Tasks are records (grader + tools): the plain graders, a question file naming or defining
its task per question or per file, and the refusals that say what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.grading import grade
from training.questions import QuestionSetError, load_questions
from training.tasks import TASKS, TaskError, get_task, task_from_json


@pytest.mark.parametrize(
    ("grader", "pred", "gold", "correct"),
    [
        ("exact", "The Kettle.", "kettle", True),
        ("exact", "kettle pot", "kettle", False),
        ("exact", "Lyon", ["Paris", "lyon"], True),
        ("numeric", "1,234.5", 1234.5, True),
        ("numeric", "$12.00", "12", True),
        ("numeric", "about 42 units", 42, True),
        ("numeric", "between 41 and 42", 42, False),
        ("numeric", 5342.300000001, 5342.3, True),
        ("numeric", "12.5", 12, False),
        ("f1", "the red brick house", "red house", True),
        ("f1", "a green door", "red house", False),
        ("contains", "It is Paris, France", "paris", True),
        ("contains", "Parisian", "Paris", False),
    ],
)
def test_plain_graders(grader: str, pred: object, gold: object, correct: bool) -> None:
    g = grade(grader, pred, gold)
    assert g.correct is correct and g.method == grader


def test_the_paper_graders_keep_their_names_and_unknown_ones_are_refused() -> None:
    assert grade("math", "\\boxed{\\frac{1}{2}}", "0.5").correct
    assert grade("factual", "the Eiffel Tower", "Eiffel Tower").method == "em"
    with pytest.raises(ValueError, match="unknown grader 'poetry'"):
        grade("poetry", "a", "a")


def test_registered_tasks() -> None:
    assert TASKS["math"].tools == () and TASKS["math"].grader == "math"
    assert TASKS["factual"].tools is None and TASKS["factual"].grader == "factual"
    assert get_task("shop").tools == ("tables", "query")
    with pytest.raises(TaskError, match="registered tasks are math, factual, shop"):
        get_task("poetry")


def test_a_task_defined_inline_inherits_from_a_registered_one() -> None:
    spec = task_from_json({"name": "shop", "grader": "exact"}, TASKS)
    assert spec.grader == "exact" and spec.tools == ("tables", "query")
    own = task_from_json({"name": "tickets", "grader": "contains", "tools": ["search"]}, TASKS)
    assert own.tools == ("search",) and own.grader == "contains"
    for bad, message in [
        ({"name": "tickets"}, "needs a 'grader'"),
        ({"name": "t", "grader": "nope"}, "unknown grader 'nope'"),
        ({"name": "t", "grader": "exact", "tool": []}, "unknown field"),
        ({"name": "t", "grader": "exact", "tools": "search"}, "list of tool names"),
        (3, "a name or an object"),
    ]:
        with pytest.raises(TaskError, match=message):
            task_from_json(bad, TASKS)


def test_question_files_name_their_tasks_per_question_and_per_file(tmp_path: Path) -> None:
    lines = tmp_path / "q.jsonl"
    lines.write_text("\n".join(json.dumps(x) for x in [
        {"id": "a", "question": "q", "task": "shop"},
        {"id": "b", "question": "q", "task": {"name": "tickets", "grader": "f1", "tools": []}},
        {"id": "c", "question": "What is 2 + 2?", "dataset_name": "gsm8k"},
    ]))  # fmt: skip
    a, b, c = load_questions(lines)
    assert (a.task, a.task_spec, a.spec.grader) == ("shop", None, "numeric")
    assert b.task == "tickets" and b.spec.grader == "f1" and b.spec.tools == ()
    assert c.task == "math" and c.spec is TASKS["math"]
    paper = tmp_path / "set.json"
    paper.write_text(json.dumps({"metadata": {"task": {"name": "faq", "grader": "contains"}},
                                 "examples": [{"id": 1, "question": "q", "answer": "x"},
                                              {"id": 2, "question": "q", "task": "factual"}]}))
    one, two = load_questions(paper)
    assert one.spec.grader == "contains" and one.task == "faq"
    assert two.spec is TASKS["factual"]
    # --task wins over every question's own
    assert {q.task for q in load_questions(lines, task="factual")} == {"factual"}
    with pytest.raises(QuestionSetError, match="unknown task 'poetry'"):
        load_questions(lines, task="poetry")
    lines.write_text(json.dumps({"question": "q", "task": {"name": "x", "grader": "nope"}}))
    with pytest.raises(QuestionSetError, match=r"q.jsonl:1: task 'x': unknown grader"):
        load_questions(lines)
