"""Hand-written evaluation records and run folders (the numbers tests recompute by hand)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def cand(
    index: int,
    *,
    code: str | None = "x = 1",
    parse_error: str | None = None,
    error: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    final: Any = None,
    stdout: str = "",
) -> dict[str, Any]:
    execution = None
    if parse_error is None:
        execution = {
            "stdout": stdout,
            "value_repr": None,
            "error": error,
            "error_kind": "exception" if error else None,
            "is_final": final is not None,
            "final_answer": final,
            "duration_s": 0.01,
            "tool_calls": tool_calls or [],
            "state_lost": False,
            "ok": error is None,
        }
    return {
        "index": index,
        "text": f"Thought: t{index}\nCode:\n```py\n{code}\n```<end_code>",
        "thought": f"t{index}",
        "code": None if parse_error else code,
        "parse_error": parse_error,
        "execution": execution,
        "finish_reason": "stop",
        "valid": parse_error is None and error is None,
    }


def step(
    number: int, candidates: list[dict[str, Any]], chosen: int | None, kind: str = "action"
) -> dict[str, Any]:
    return {
        "number": number,
        "request": {"messages": [{"role": "user", "content": "..."}], "params": {}},
        "candidates": candidates,
        "chosen": chosen,
        "observation": f"Observation {number}",
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        "model_s": 0.1,
        "exec_s": 0.01,
        "total_s": 0.11,
        "kind": kind,
    }


def record(
    qid: str,
    set_name: str,
    *,
    task: str,
    gold: Any,
    prediction: Any,
    correct: bool | None,
    steps: list[dict[str, Any]],
    finish: str = "answer",
    status: str = "ok",
    prompt_tokens: int = 100,
    completion_tokens: int = 10,
    elapsed_s: float = 1.0,
) -> dict[str, Any]:
    return {
        "id": f"{set_name}/{qid}",
        "question": f"question {qid}?",
        "gold": gold,
        "task": task,
        "source": set_name,
        "mode": "agent",
        "ftp": False,
        "status": status,
        "prediction": prediction,
        "correct": correct,
        "grade": {"correct": correct, "method": "exact"} if correct is not None else None,
        "trajectory": {
            "id": qid,
            "question": f"question {qid}?",
            "model": "m",
            "answer": prediction,
            "finish_reason": finish,
            "steps": steps,
            "messages": [],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
        },
        "cot": None,
        "tools": [],
        "teacher": "m",
        "error": None if status == "ok" else "boom",
        "error_type": None if status == "ok" else "ModelUnavailable",
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
        "created_at": 0.0,
        "elapsed_s": elapsed_s,
    }


GOLD_CONTENT = '"Eiffel Tower"\nThe Eiffel Tower is in Paris.'


def search_call(result: str) -> dict[str, Any]:
    return {
        "name": "web_search",
        "args": ["eiffel"],
        "kwargs": {},
        "result": result,
        "error": None,
        "duration_s": 0.0,
        "cached": False,
    }


def fixture_records() -> list[dict[str, Any]]:
    """Set `m` (math, 4 questions) and set `f` (factual, 3 questions); see test_metrics."""
    fin = cand(0, code="final_answer(4)", final=4)
    return [
        # m/1: two steps: a parse error (no valid candidate), then the answer. correct
        record("1", "m", task="math", gold="4", prediction=4, correct=True, steps=[
            step(1, [cand(0, parse_error="no code"), cand(1, parse_error="no code")], None),
            step(2, [fin], 0),
        ], prompt_tokens=100, completion_tokens=20, elapsed_s=1.0),
        # m/2: one step, the answer, wrong
        record("2", "m", task="math", gold="5", prediction=4, correct=False, steps=[
            step(1, [fin], 0),
        ], prompt_tokens=200, completion_tokens=40, elapsed_s=2.0),
        # m/3: execution error, valid step, then max steps (final-answer call), correct
        record("3", "m", task="math", gold="7", prediction=7, correct=True, steps=[
            step(1, [cand(0, error="ZeroDivisionError"), cand(1, parse_error="x")], None),
            step(2, [cand(0), cand(1, error="NameError")], 0),
            step(3, [cand(0, code=None)], 0, kind="final_answer_call"),
        ], finish="max_steps", prompt_tokens=300, completion_tokens=60, elapsed_s=3.0),
        # m/4: the model failed: an error record, counts wrong
        record("4", "m", task="math", gold="9", prediction=None, correct=None, steps=[],
               finish="error", status="error", prompt_tokens=0, completion_tokens=0,
               elapsed_s=4.0),
        # f/a: "the Eiffel Tower" vs gold "Eiffel Tower": EM 1; saw the gold passage
        record("a", "f", task="factual", gold="Eiffel Tower", prediction="the Eiffel Tower",
               correct=True, steps=[
                   step(1, [cand(0, code="print(web_search('eiffel'))", tool_calls=[
                       search_call("\nRetrieved documents:\n\n===== Document 1, similarity: "
                                   f"1.000 =====\n{GOLD_CONTENT}\n")])], 0),
                   step(2, [cand(0, code="final_answer('the Eiffel Tower')",
                                 final="the Eiffel Tower")], 0),
               ], prompt_tokens=50, completion_tokens=5, elapsed_s=0.5),
        # f/b: "Paris France" vs "Paris": EM 0, F1 2/3; searched, but not the gold passage
        record("b", "f", task="factual", gold="Paris", prediction="Paris France",
               correct=False, steps=[
                   step(1, [cand(0, code="final_answer('Paris France')", final="Paris France",
                                 tool_calls=[search_call('"Louvre"\nA museum.')])], 0),
               ], prompt_tokens=50, completion_tokens=5, elapsed_s=0.5),
        # f/c: gold list, prediction an alias not in it: EM 0, F1 0 (a judge could accept it)
        record("c", "f", task="factual", gold=["United States", "USA"], prediction="America",
               correct=False, steps=[
                   step(1, [cand(0, code="final_answer('America')", final="America")], 0),
               ], prompt_tokens=50, completion_tokens=5, elapsed_s=0.5),
    ]


def write_run(
    out: Path,
    records: list[dict[str, Any]],
    *,
    name: str = "fixture",
    judge: dict[str, Any] | None = None,
    gold: dict[str, Any] | None = None,
    sets: list[dict[str, Any]] | None = None,
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    if sets is None:
        sets = [
            {"name": "m", "label": "M", "domain": "math", "file": "m.jsonl", "sha256": "1",
             "n": 4, "total": 4, "covered": 0, "covered_total": 0},
            {"name": "f", "label": "F", "domain": "factual", "file": "f.jsonl", "sha256": "2",
             "n": 3, "total": 3, "covered": 2, "covered_total": 2},
        ]
    config = {"version": 1, "name": name, "mode": "agent", "model": {"kind": "url", "name": "m"},
              "agent": {"samples": 2}, "judge": judge, "sets": sets}
    (out / "config.json").write_text(json.dumps(config))
    with (out / "records.jsonl").open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    if gold is None:
        gold = {
            "f/a": {"passage_ids": ["1"], "titles": ["Eiffel Tower"], "contents": [GOLD_CONTENT]},
            "f/b": {"passage_ids": ["2"], "titles": ["Paris"], "contents": ['"Paris"\nCapital.']},
        }
    (out / "gold.json").write_text(json.dumps(gold))
    return out
