"""Answer checking: math equivalence (boxed, numeric tolerance, fractions, percentages,
sequences, sympy under a timeout) and factual EM / F1 / LLM judge."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agent.openai_client import OpenAIChatClient
from training import grading
from training.grading import (
    exact_match,
    extract_answer,
    extract_boxed,
    grade,
    grade_factual,
    grade_math,
    grade_with_judge,
    judge_answer,
    math_equal,
    normalize_text,
    symbolic_equal,
    token_f1,
)


@pytest.mark.parametrize(
    ("text", "boxed"),
    [
        ("so \\boxed{42}.", "42"),
        ("\\boxed{\\frac{1}{2}} then \\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),  # the last one
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\fbox{7}", "7"),
        ("$\\boxed 5$", "5"),
        ("no box here", None),
        ("\\boxed{unbalanced", None),
    ],
)
def test_extract_boxed(text: str, boxed: str | None) -> None:
    assert extract_boxed(text) == boxed


def test_extract_answer_prefers_boxed_then_answer_is() -> None:
    assert extract_answer("Step 1...\nThe answer is 12.") == "12"
    assert extract_answer("x\nso the final answer is \\boxed{9}") == "9"
    assert extract_answer(13.0) == "13"
    assert extract_answer(0.25) == "0.25"
    assert extract_answer(None) == ""


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ("The answer is \\boxed{\\frac{1}{2}}", "0.5", True),
        ("0.50004", "\\frac12", True),  # within 1e-4 relative
        ("0.5002", "\\frac12", False),  # outside it
        ("1/3", "\\dfrac{1}{3}", True),
        ("-\\frac{3}{4}", "-0.75", True),
        ("50%", "0.5", True),
        ("50", "50\\%", True),
        ("25\\%", "0.5", False),
        ("1,000,000", "1000000", True),
        (13138980, "13138980.0", True),
        (13138980.0, 13138981.0, True),  # relative 7.6e-8
        (100, 101, False),
        ("x = 5", "5", True),
        ("10 \\text{ cm}", "10", True),
        ("30^\\circ", "30", True),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\pi/2)", True),
        ("(3, 1.5708)", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
        ("(6,31,-1)", "(6,31,1)", False),
        ("[8,\\infty)", "(8,\\infty)", False),  # closed vs open endpoint
        ("(-\\infty,-8]\\cup[8,\\infty)", "(-\\infty, -8] \\cup [8, \\infty)", True),
        ("1, 2", "2,1", True),  # answer lists are unordered
        (
            "\\begin{pmatrix} 1 \\\\ -2 \\end{pmatrix}",
            "\\begin{pmatrix}1\\\\-2\\end{pmatrix}",
            True,
        ),
        (
            "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}",
            "\\begin{pmatrix}1\\\\-2\\end{pmatrix}",
            False,
        ),
        ("2\\sqrt{2}", "\\sqrt{8}", True),  # sympy
        ("\\frac{\\sqrt{21}}{5}", "\\sqrt{0.84}", True),
        ("x^2+2x+1", "(x+1)^2", True),
        ("x^2+2x+2", "(x+1)^2", False),
        ("2.6458", "\\sqrt{7}", True),  # numeric value of a symbolic gold
        ("", "5", False),
        ("None", "5", False),
    ],
)
def test_math_equal(pred: object, gold: object, expected: bool) -> None:
    assert math_equal(pred, gold) is expected


def test_grade_reports_the_method() -> None:
    assert grade_math("\\boxed{7}", "7").method == "exact"
    assert grade_math("7.0", "7").method == "numeric"
    assert grade_math("(1,2)", "(1, 2.0)").method == "sequence"
    assert grade_math("2\\sqrt{2}", "\\sqrt{8}").method == "symbolic"
    assert grade("math", "1", None).correct is False
    with pytest.raises(ValueError, match="math"):
        grade("poetry", "a", "b")  # type: ignore[arg-type]


def test_every_paper_math_answer_matches_itself_and_its_boxed_form(shared_data_dir: Path) -> None:
    """Self-consistency over the real answer formats of MATH500 and GSM-Hard."""
    qdir = shared_data_dir / "questions"
    for name in ("math_500_20250414.json", "gsm_hard_500_20250507.json"):
        examples = json.loads((qdir / name).read_text())["examples"]
        for ex in examples:
            gold = ex["answer"]
            boxed = f"So the result is \\boxed{{{gold}}}."
            assert math_equal(boxed, gold, timeout_s=10), (name, gold)


def test_symbolic_check_is_bounded_by_its_timeout() -> None:
    assert symbolic_equal("\\sqrt{8}", "2\\sqrt{2}")  # the worker is up
    # sympy evaluates 10^6! eagerly: ~30 s of big-integer work on this machine class
    slow_a, slow_b = "1000000!", "1000000!+1"
    t0 = time.monotonic()
    assert symbolic_equal(slow_a, slow_b, timeout_s=0.3) is False
    assert time.monotonic() - t0 < 8  # killed at the timeout, not after sympy finishes
    # the killed worker is replaced on the next call
    assert symbolic_equal("\\frac{2}{4}", "\\frac{1}{2}")
    assert grading._WORKER._proc is not None and grading._WORKER._proc.poll() is None


def test_factual_normalization_em_and_f1() -> None:
    assert normalize_text("The  Eiffel-Tower!") == "eiffeltower"
    assert exact_match("the Eiffel Tower", "Eiffel Tower") == 1.0
    assert exact_match("Paris, France", ["Lyon", "paris france"]) == 1.0
    assert exact_match("Paris", "Lyon") == 0.0
    assert token_f1("Paris, France", "Paris") == pytest.approx(2 / 3)
    assert token_f1("yes", "no") == 0.0
    assert token_f1("no", "no") == 1.0
    g = grade_factual("\\boxed{James Madison}", "james madison")
    assert g.correct and g.em == 1.0 and g.f1 == 1.0 and g.method == "em"
    g = grade_factual("President Madison", "James Madison")
    assert not g.correct and g.f1 == pytest.approx(0.5)
    # final_answer(True) to a yes/no question (the 1.5B teacher does this)
    assert grade_factual(True, "yes").correct and grade_factual(False, "no").correct
    assert not grade_factual(True, "no").correct
    assert grade("factual", False, "no").correct


async def test_llm_judge_through_an_openai_compatible_endpoint(scripted_server) -> None:  # type: ignore[no-untyped-def]
    judge = OpenAIChatClient(scripted_server.url, scripted_server.model, retries=0)
    try:
        scripted_server.script("Yes.", "no", "yes")
        assert await judge_answer("Who?", "J. Madison", "James Madison", judge) is True
        body = scripted_server.chat_requests[0]
        prompt = body["messages"][0]["content"]
        assert "J. Madison" in prompt and "James Madison" in prompt and "Who?" in prompt
        assert body["temperature"] == 0.0
        assert await judge_answer("Who?", "Monroe", ["James Madison"], judge) is False
        # exact match needs no judge call; a miss asks the judge
        g = await grade_with_judge("factual", "Who?", "james madison", "James Madison", judge)
        assert g.correct and g.method == "em" and len(scripted_server.chat_requests) == 2
        g = await grade_with_judge("factual", "Who?", "Madison", "James Madison", judge)
        assert g.correct and g.method == "judge" and g.f1 == pytest.approx(2 / 3)
        # math never goes to the judge
        g = await grade_with_judge("math", "Q", "3", "4", judge)
        assert not g.correct and len(scripted_server.chat_requests) == 3
    finally:
        await judge.aclose()


@pytest.mark.parametrize("attack", [
    "__import__('os').system('touch {marker}')",
    "().__class__.__base__.__subclasses__()",
    "exec(chr(112)+chr(114))",
    "open(1).write(2)",
    "print(1)",
    "exit()",
])  # fmt: skip
def test_model_written_answers_are_never_run_by_the_symbolic_check(
    attack: str, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    text = attack.format(marker=marker)
    assert symbolic_equal(text, "1") is False
    assert symbolic_equal(f"\\frac{{{text}}}{{2}}", "1") is False
    assert not marker.exists()
    # and the worker still answers the next comparison (nothing corrupted its replies)
    assert symbolic_equal("\\frac{2}{4}", "\\frac{1}{2}")
    assert symbolic_equal("x^2 + 2x", "x*(x+2)")


def test_the_plain_parser_sees_only_mathematics() -> None:
    from training.sympy_worker import plain_math

    for ok in ("2*sqrt(2)", "x^2 + 2x", "frac(1)(2)", "3.5 % 2", "pi/4", "sin(x)**2"):
        assert plain_math(ok), ok
    for bad in ("__import__", "a.b", "x; y", "'s'", "lambda x: x", "eval(1)", "os"):
        assert not plain_math(bad), bad
