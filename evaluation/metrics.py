"""The paper's metrics, from records (one per question) to per-set and overall numbers.

`question_row(record, ...)` reduces one record (the `distillery generate` record, or the
gateway client's equivalent) to the numbers the reports need; `aggregate(rows)` turns a
list of rows into a set's metrics. Definitions:

- accuracy (the paper's metric): math = `training.grading` (boxed extraction, numeric
  tolerance 1e-4, symbolic equality); factual = the LLM judge's verdict when a judge is
  configured, else normalized exact match. A failed run or a failed judge call counts as
  wrong (a rerun judges again: verdicts are cached).
- em, f1: SQuAD-normalized exact match and token F1 of the extracted answer, factual sets.
- judge_accuracy: verdicts over the questions the judge decided (n_judged).
- per-step rates, over action steps (the final-answer call is not an action): a step is
  `valid` when a candidate was kept, else its outcome is candidate 0's (the one shown to
  the model): `parse_error` or `execution_error`. Candidate-level rates count every sampled
  candidate the same way.
- max_steps_rate: runs that used every step without calling final_answer.
- steps_mean: action steps per run; tokens: prompt and completion tokens per question.
- latency p50/p95: per-question wall time, percentiles with linear interpolation between
  closest ranks (numpy's default).
- retrieval_recall, over covered questions (gold passages in the index): the share whose
  run saw at least one gold passage in a `web_search` result of a kept candidate (what
  entered the transcript), `retrieval_recall_all` the share that saw all of them. A gold
  passage is found by its exact `"Title"\\ntext` (as web_search prints it) or, without the
  corpus, by its title line.
- searches_mean: `web_search` calls per run (kept candidates); search_rate: the share of
  runs that searched at all. answer_seen_rate, over factual questions with a gold answer:
  the share whose gold answer (or an accepted alias), SQuAD-normalized, occurs on word
  boundaries in one of the run's `web_search` results (training.grounding.occurs): the
  evidence was in front of the model, whatever it answered.
- average_accuracy: the paper's "Avg.", the unweighted mean of the sets' accuracies.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from evaluation.datasets import GoldPassages
from training.grading import extract_answer, grade_factual, normalize_text
from training.grounding import occurs

__all__ = [
    "QuestionRow",
    "aggregate",
    "outcome_of",
    "percentile",
    "question_row",
    "retrieved_gold",
    "summarize",
]

OUTCOMES = ("valid", "parse_error", "execution_error")


@dataclass
class QuestionRow:
    id: str
    set: str
    domain: str
    status: str
    finish_reason: str
    """answer | max_steps | error | timeout (cot runs: answer or error)."""
    correct: bool
    prediction: str
    gold: str
    em: float | None = None
    f1: float | None = None
    judge: bool | None = None
    judge_error: str | None = None
    grade_method: str | None = None
    steps: int = 0
    valid_steps: int = 0
    parse_error_steps: int = 0
    execution_error_steps: int = 0
    candidates: int = 0
    parse_error_candidates: int = 0
    execution_error_candidates: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    covered: bool = False
    gold_seen: int | None = None
    """Gold passages seen in web_search results (None: the question has no gold passages)."""
    gold_total: int = 0
    searches: int = 0
    """web_search calls of the kept candidates."""
    answer_seen: bool | None = None
    """Factual: a gold answer form occurs in a web_search result (None: not factual)."""
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation; None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def outcome_of(step: Mapping[str, Any]) -> str:
    """valid | parse_error | execution_error for one step dict of a trajectory."""
    if step.get("chosen") is not None:
        return "valid"
    cands = step.get("candidates") or []
    if not cands:
        return "execution_error"
    return _candidate_outcome(cands[0])


def _candidate_outcome(c: Mapping[str, Any]) -> str:
    if c.get("parse_error"):
        return "parse_error"
    ex = c.get("execution")
    if c.get("valid") or (ex is not None and ex.get("error") is None and ex.get("ok", True)):
        return "valid"
    return "execution_error"


def _kept(step: Mapping[str, Any]) -> Mapping[str, Any] | None:
    cands = step.get("candidates") or []
    if not cands:
        return None
    chosen = step.get("chosen")
    if chosen is None:
        return cands[0]
    for c in cands:
        if c.get("index") == chosen:
            return c
    return cands[chosen] if 0 <= chosen < len(cands) else cands[0]


def _search_calls(trajectory: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """The web_search calls of the kept candidates of every step."""
    out: list[Mapping[str, Any]] = []
    for step in (trajectory or {}).get("steps") or []:
        kept = _kept(step)
        ex = (kept or {}).get("execution") or {}
        out += [c for c in ex.get("tool_calls") or [] if c.get("name") == "web_search"]
    return out


def search_results(trajectory: Mapping[str, Any] | None) -> list[str]:
    """web_search results of the kept candidates of every step."""
    return [c["result"] for c in _search_calls(trajectory) if isinstance(c.get("result"), str)]


def answer_seen(trajectory: Mapping[str, Any] | None, golds: Sequence[str]) -> bool:
    """Whether a gold answer form occurs in one of the run's web_search results."""
    forms = [f for f in (normalize_text(g) for g in golds) if f]
    return any(occurs(f, r) for r in search_results(trajectory) for f in forms)


def retrieved_gold(trajectory: Mapping[str, Any] | None, gold: GoldPassages) -> int:
    """How many of the gold passages appear in the run's web_search results."""
    results = search_results(trajectory)
    if not results:
        return 0
    blob = "\n".join(results)
    if gold.contents:
        return sum(c in blob for c in gold.contents)
    return sum(f'"{t}"\n' in blob for t in gold.titles)


def _text(x: Any) -> str:
    if x is None:
        return ""
    return x if isinstance(x, str) else str(x)


def question_row(
    rec: Mapping[str, Any],
    *,
    set_name: str,
    domain: str,
    gold: GoldPassages | None = None,
    judgment: Mapping[str, Any] | None = None,
    use_judge: bool = False,
) -> QuestionRow:
    """One record -> its numbers (see the module docstring)."""
    traj = rec.get("trajectory") or None
    status = str(rec.get("status") or "error")
    if traj is not None:
        finish = str(traj.get("finish_reason") or "error")
    else:
        finish = "answer" if status == "ok" else "error"
    if status != "ok" and finish == "answer":
        finish = "error"
    prediction = rec.get("prediction")
    gold_answer = rec.get("gold")
    row = QuestionRow(
        id=str(rec["id"]),
        set=set_name,
        domain=domain,
        status=status,
        finish_reason=finish,
        correct=False,
        prediction=_text(prediction),
        gold=" | ".join(map(str, gold_answer))
        if isinstance(gold_answer, list)
        else _text(gold_answer),
        error=rec.get("error"),
    )
    grade = rec.get("grade") or {}
    row.grade_method = grade.get("method")
    if domain == "factual":
        if gold_answer is not None:
            golds = gold_answer if isinstance(gold_answer, list) else [str(gold_answer)]
            g = grade_factual(prediction if status == "ok" else None, [str(x) for x in golds])
            row.em, row.f1 = float(g.em or 0.0), float(g.f1 or 0.0)
            row.answer_seen = answer_seen(traj, [str(x) for x in golds])
        if judgment is not None:
            v = judgment.get("verdict")
            row.judge = bool(v) if v is not None else None
            row.judge_error = judgment.get("error")
        if use_judge:
            row.correct = status == "ok" and row.judge is True
        else:
            row.correct = status == "ok" and row.em == 1.0
    else:
        row.correct = status == "ok" and rec.get("correct") is True
    if traj is not None:
        row.searches = len(_search_calls(traj))
        for step in traj.get("steps") or []:
            if step.get("kind", "action") != "action":
                continue
            row.steps += 1
            outcome = outcome_of(step)
            if outcome == "valid":
                row.valid_steps += 1
            elif outcome == "parse_error":
                row.parse_error_steps += 1
            else:
                row.execution_error_steps += 1
            for c in step.get("candidates") or []:
                row.candidates += 1
                co = _candidate_outcome(c)
                row.parse_error_candidates += co == "parse_error"
                row.execution_error_candidates += co == "execution_error"
    usage = rec.get("usage") or {}
    row.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    row.completion_tokens = int(usage.get("completion_tokens") or 0)
    row.latency_s = float(rec.get("elapsed_s") or 0.0)
    if gold is not None:
        row.covered = True
        row.gold_total = len(gold.passage_ids)
        row.gold_seen = retrieved_gold(traj, gold)
    return row


def _rate(num: float, den: float) -> float | None:
    return round(num / den, 4) if den else None


def _mean(xs: Sequence[float]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None


def aggregate(rows: Sequence[QuestionRow], *, use_judge: bool = False) -> dict[str, Any]:
    """A set's (or the pool's) metrics; see the module docstring."""
    n = len(rows)
    steps = sum(r.steps for r in rows)
    cands = sum(r.candidates for r in rows)
    factual = [r for r in rows if r.domain == "factual"]
    judged = [r for r in factual if r.judge is not None]
    covered = [r for r in rows if r.covered]
    seen = [r for r in factual if r.answer_seen is not None]
    lat = [r.latency_s for r in rows]
    p50, p95 = percentile(lat, 50), percentile(lat, 95)
    return {
        "n": n,
        "correct": sum(r.correct for r in rows),
        "accuracy": _rate(sum(r.correct for r in rows), n),
        "em": _mean([r.em for r in factual if r.em is not None]),
        "f1": _mean([r.f1 for r in factual if r.f1 is not None]),
        "judge_accuracy": _rate(sum(bool(r.judge) for r in judged), len(judged)),
        "n_judged": len(judged),
        "judge_errors": sum(r.judge_error is not None for r in factual) if use_judge else 0,
        "errors": sum(r.status != "ok" for r in rows),
        "error_rate": _rate(sum(r.status != "ok" for r in rows), n),
        "steps": steps,
        "valid_step_rate": _rate(sum(r.valid_steps for r in rows), steps),
        "parse_error_rate": _rate(sum(r.parse_error_steps for r in rows), steps),
        "execution_error_rate": _rate(sum(r.execution_error_steps for r in rows), steps),
        "candidate_parse_error_rate": _rate(sum(r.parse_error_candidates for r in rows), cands),
        "candidate_execution_error_rate": _rate(
            sum(r.execution_error_candidates for r in rows), cands
        ),
        "max_steps_rate": _rate(sum(r.finish_reason == "max_steps" for r in rows), n),
        "finish_reasons": dict(sorted(Counter(r.finish_reason for r in rows).items())),
        "steps_mean": _mean([float(r.steps) for r in rows]),
        "prompt_tokens_mean": _mean([float(r.prompt_tokens) for r in rows]),
        "completion_tokens_mean": _mean([float(r.completion_tokens) for r in rows]),
        "tokens_mean": _mean([float(r.prompt_tokens + r.completion_tokens) for r in rows]),
        "latency_p50_s": round(p50, 4) if p50 is not None else None,
        "latency_p95_s": round(p95, 4) if p95 is not None else None,
        "searches_mean": _mean([float(r.searches) for r in rows]),
        "search_rate": _rate(sum(r.searches > 0 for r in rows), n),
        "answer_seen_rate": _rate(sum(bool(r.answer_seen) for r in seen), len(seen)),
        "covered": len(covered),
        "retrieval_recall": _rate(sum((r.gold_seen or 0) > 0 for r in covered), len(covered)),
        "retrieval_recall_all": _rate(
            sum(r.gold_total > 0 and (r.gold_seen or 0) >= r.gold_total for r in covered),
            len(covered),
        ),
    }


def summarize(
    rows_by_set: Mapping[str, Sequence[QuestionRow]],
    *,
    use_judge: bool = False,
    order: Iterable[str] | None = None,
) -> dict[str, Any]:
    """{"sets": {NAME: metrics}, "average_accuracy", "overall": pooled metrics}."""
    names = list(order) if order is not None else list(rows_by_set)
    sets = {name: aggregate(rows_by_set.get(name, []), use_judge=use_judge) for name in names}
    accs = [m["correct"] / m["n"] for m in sets.values() if m["n"]]
    pooled = [r for name in names for r in rows_by_set.get(name, [])]
    return {
        "sets": sets,
        "average_accuracy": round(sum(accs) / len(accs), 4) if accs else None,
        "overall": aggregate(pooled, use_judge=use_judge),
    }


def answer_text(prediction: Any) -> str:
    """The compared part of a prediction (boxed content / text after 'the answer is')."""
    return extract_answer(prediction)
