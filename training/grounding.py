"""Grounding and leak checks on agent trajectories (build-data options).

Both look at the kept turn of each action step, in order, and at what the steps observed:

- `grounding_drop` (factual records): a trajectory is grounded when one of its answer forms
  (the final answer and the gold answers, SQuAD-normalized: an accepted alias is a gold
  answer of the list) occurs, on word boundaries, in the observation of a step that called
  `web_search` before the step that called `final_answer` (that step's own observation
  comes after the call). A yes/no answer cannot occur in a passage: it is grounded when the
  run observed at least one search before answering. Reasons: `no_search` (no search
  observation before the answer), `ungrounded` (searched, but the answer was never shown).
- `leak_drop` (hinted records): the hint must not show. A run whose thoughts or code mention
  the hint or "the expected answer" it gives (`hint_mentioned`), or name an answer form
  before any observation showed it (`answer_before_evidence`: e.g. `web_search("Animorphs")`
  for a question whose answer is Animorphs, which teaches a student to guess) is dropped.
  Answer forms that occur in the question itself (comparisons: "Which is older, A or B?")
  are not leaks; yes/no answers are only checked for hint mentions.

None means the record passes. Both are pure functions of the record and its trajectory.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator
from typing import Any

from agent.trajectory import Step, Trajectory
from training.grading import extract_answer, normalize_text

WEB_SEARCH = "web_search"  # the tool's name: part of the protocol
YES_NO = frozenset({"yes", "no"})
_HINT = re.compile(r"\bhints?\b|\bexpected answer\b", re.IGNORECASE)
_CALLS_SEARCH = re.compile(rf"\b{WEB_SEARCH}\s*\(")


def answer_forms(rec: dict[str, Any], traj: Trajectory) -> list[str]:
    """The normalized, non-empty answer forms of a record: its final answer and its gold
    answer(s) (a list of golds = accepted aliases)."""
    gold = rec.get("gold")
    golds = gold if isinstance(gold, list) else [gold] if gold is not None else []
    forms = [normalize_text(extract_answer(traj.answer)), *(normalize_text(str(g)) for g in golds)]
    return list(dict.fromkeys(f for f in forms if f))


_PUNCT = re.compile(rf"[{re.escape(string.punctuation)}]")


def occurs(form: str, text: str) -> bool:
    """Whether the normalized `form` occurs in `text` on word boundaries. `text` is normalized
    twice, punctuation dropped ("O'Brien" -> "obrien", as answers are) and punctuation as a
    space (code: `web_search("Animorphs")` names "animorphs")."""
    if not form:
        return False
    padded = f" {form} "
    return (
        padded in f" {normalize_text(text)} "
        or padded in f" {normalize_text(_PUNCT.sub(' ', text))} "
    )


def _actions(traj: Trajectory) -> list[Step]:
    return [s for s in traj.steps if s.kind == "action"]


def evidence_steps(traj: Trajectory) -> Iterator[Step]:
    """The action steps whose observations the model read before answering: all of them,
    but the step that called final_answer when the run ended that way."""
    actions = _actions(traj)
    if traj.finish_reason == "answer" and actions:
        actions = actions[:-1]
    yield from actions


def _searched(step: Step) -> bool:
    return bool(_CALLS_SEARCH.search(step.kept.code or ""))


def grounding_drop(rec: dict[str, Any], traj: Trajectory) -> str | None:
    """None when the factual answer is backed by a web_search observation (module docstring),
    else why not; a math record always passes."""
    if rec.get("task") != "factual":
        return None
    seen = [s.observation for s in evidence_steps(traj) if _searched(s)]
    if not seen:
        return "no_search"
    forms = answer_forms(rec, traj)
    if not forms or any(f in YES_NO for f in forms):
        return None
    if any(occurs(f, obs) for f in forms for obs in seen):
        return None
    return "ungrounded"


def leak_drop(rec: dict[str, Any], traj: Trajectory) -> str | None:
    """None when a hinted run's turns do not give the hint away (module docstring); an
    unhinted record always passes."""
    if not rec.get("hint"):
        return None
    actions = _actions(traj)
    if any(_HINT.search(s.kept.text or "") for s in actions):
        return "hint_mentioned"
    question = str(rec.get("question") or "")
    forms = [f for f in answer_forms(rec, traj) if f not in YES_NO and not occurs(f, question)]
    for step in actions:
        if any(occurs(f, step.kept.text or "") for f in forms):
            return "answer_before_evidence"
        if any(occurs(f, step.observation or "") for f in forms):
            return None  # shown: from here on the run may name it
    return None
